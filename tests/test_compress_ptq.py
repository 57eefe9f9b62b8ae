"""PTQ on tiny models: INT8 graphs stay close to FP32 on real photos, hold integer ops, run in
onnxruntime, export as an int8 bundle the runtime loads; the fallback keeps a broken layer in FP32."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch

from edgevlp.cli import main
from edgevlp.compress import CalibrationConfig, FallbackConfig, QuantConfig, QuantScheme, Recipe

INT_OPS = {"QuantizeLinear", "DequantizeLinear", "MatMulInteger", "DynamicQuantizeLinear", "MatMulNBits",
           "QLinearMatMul", "ConvInteger"}

RECIPE = """name = "tiny-int8"
version = 1

[[stages]]
[stages.quant]
method = "ptq_static"
backend = "onnxruntime"

[stages.quant.calibration]
method = "{method}"
size = 6
source = "shapes:train"

[stages.quant.fallback]
min_cosine = 0.99
max_rel_diff = 0.1                # what the exporter's int8 parity allows (rtol 0.1)
max_layers = 64
"""


def _ops(path: Path) -> set[str]:
    return {n.op_type for n in onnx.load(str(path)).graph.node}


@pytest.mark.parametrize("arch, method", [("BlipForConditionalGeneration", "percentile"),
                                          ("OwlViTForObjectDetection", "percentile")])
def test_compress_export_run(arch, method, tiny_model_dir, tmp_path, photos_bgr, capsys) -> None:
    recipe = tmp_path / "r.toml"
    recipe.write_text(RECIPE.format(method=method))
    out = tmp_path / "compressed"
    assert main(["compress", str(tiny_model_dir(arch)), "--recipe", str(recipe), "-o", str(out), "--eval-n", "4"]) == 0
    summary = capsys.readouterr().out
    assert "cosine" in summary and "latency" in summary
    comp = json.loads((out / "compression.json").read_text())
    assert comp["format"] == "edgevlp-compressed" and comp["format_version"] == 1
    assert comp["base_model"] == "model" and (out / "model" / "config.json").is_file()
    assert comp["recipe"]["name"] == "tiny-int8" and (out / "recipe.toml").read_text() == recipe.read_text()
    report = json.loads((out / "report.json").read_text())
    graphs = report["stages"][0]["graphs"]
    assert set(comp["graphs"]) == set(graphs)
    for role, g in graphs.items():
        assert INT_OPS & _ops(out / comp["graphs"][role]), role
        # held-out frames + real photos, run by onnxruntime, against the FP32 graph
        assert g["min_cosine"] >= 0.99, (role, g["outputs"], g["fallback"])
        # whole files shrink; the initializer byte count alone need not (QDQ turns some constants of the
        # FP32 graph into initializers, and the fallback keeps a tiny graph's layers in FP32)
        assert g["bytes_int8"] < g["bytes_fp32"]
    # Re-running into the same directory needs --force.
    assert main(["compress", str(tiny_model_dir(arch)), "--recipe", str(recipe), "-o", str(out), "--eval-n", "0"]) == 1
    bundle = tmp_path / "bundle"
    assert main(["export", str(out), "-o", str(bundle), "--target", "cpu", "--precision", "int8"]) == 0
    manifest = json.loads((bundle / "manifest.json").read_text())
    assert manifest["compression"]["name"] == "tiny-int8" and manifest["verified"]
    for role in graphs:
        assert {"QuantizeLinear", "DequantizeLinear"} <= _ops(bundle / manifest["graphs"][role]["file"])
    from edgevlp.runtime import load

    model = load(bundle)
    frame = photos_bgr["astronaut"]
    if arch.startswith("Blip"):
        assert isinstance(model.caption(frame).text, str)
    else:
        model.set_prompts(["a photo of a person", "red circle"])
        assert model.detect(frame) is not None


@pytest.mark.parametrize("method, ops", [("ptq_dynamic", {"MatMulInteger", "DynamicQuantizeLinear"}),
                                         ("weight_only", {"MatMulNBits"})])
def test_dynamic_and_weight_only(method, ops, tmp_path) -> None:
    from edgevlp.compress.pipeline import compress_model
    from edgevlp.models import tiny_adapter

    weights = QuantScheme(symmetric=True, per_channel=method != "weight_only")
    recipe = Recipe(name="t", stages=(QuantConfig(method=method, calibration=CalibrationConfig(size=2),
                                                  weights=weights, include=("vision_encoder",)),))
    report = compress_model(tiny_adapter("BlipForConditionalGeneration"), recipe, tmp_path / "o", progress=False)
    graphs = report["stages"][0]["graphs"]
    assert not graphs["text_decoder"]["quantized"]  # not selected by include: left FP32 for export
    vision = graphs["vision_encoder"]
    assert ops <= _ops(tmp_path / "o" / vision["file"]) and vision["min_cosine"] > 0.97
    comp = json.loads((tmp_path / "o" / "compression.json").read_text())
    assert comp["graphs"] == {"vision_encoder": vision["file"]}


def test_fallback_keeps_the_broken_layer_in_fp32(tmp_path) -> None:
    """One MLP's hidden channel scaled by 1e4 (and its fc2 input by 1e-4): FP32 barely changes, but the
    activation range explodes, so per-tensor INT8 zeroes every other channel of that MLP."""
    from edgevlp.compress.pipeline import compress_model
    from edgevlp.models import tiny_adapter

    adapter = tiny_adapter("BlipForConditionalGeneration")
    mlp = adapter.model.vision_model.encoder.layers[1].mlp
    with torch.no_grad():
        mlp.fc1.weight[5] *= 1e4
        mlp.fc1.bias[5] *= 1e4
        mlp.fc2.weight[:, 5] *= 1e-4
    fallback = FallbackConfig(min_cosine=0.99)
    recipe = Recipe(name="t", stages=(QuantConfig(calibration=CalibrationConfig(size=8), fallback=fallback,
                                                  include=("vision_encoder",)),))
    report = compress_model(adapter, recipe, tmp_path / "o", progress=False)
    fb = report["stages"][0]["graphs"]["vision_encoder"]["fallback"]
    assert fb["score_all_int8"] < 0.99, fb
    broken = "model.vision_model.encoder.layers.1.mlp"
    # the broken MLP is the group whose FP32 fallback helps most, and it is kept (a random tiny model
    # may need a second group for 0.99, depending on the onnxruntime version's rounding)
    assert fb["sensitivity"][0]["group"] == broken, fb["sensitivity"][:3]
    kept = [k["group"] for k in fb["kept_fp32"]]
    assert broken in kept and len(kept) <= 2, fb
    assert fb["met"] and fb["score_final"] >= 0.99
    assert report["stages"][0]["graphs"]["vision_encoder"]["min_cosine"] >= 0.99
