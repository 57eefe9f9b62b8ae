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

REPO = Path(__file__).resolve().parent.parent
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
    assert comp["format"] == "edgevlp-compressed" and comp["format_version"] == 2
    assert comp["precision"] == "int8" and comp["parity"]["min_cosine"] == 0.99 and comp["parity"]["max_rel_diff"] == 0.1
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
    # No --precision: the compression record's (int8) and its tolerance (min_cosine / max_rel_diff).
    bundle = tmp_path / "bundle"
    assert main(["export", str(out), "-o", str(bundle), "--target", "cpu"]) == 0
    manifest = json.loads((bundle / "manifest.json").read_text())
    assert manifest["compression"]["name"] == "tiny-int8" and manifest["verified"]
    assert manifest["precision"] == "int8" and manifest["export"]["precision_from"] == "compression.json"
    assert manifest["parity"]["passed"] and manifest["parity"]["tolerance"]["or_min_cosine"] == 0.99
    assert manifest["parity"]["tolerance"]["rtol"] == 0.1
    # A precision that contradicts the record is refused, saying what and how to fix it.
    assert main(["export", str(out), "-o", str(tmp_path / "fp16"), "--target", "openvino", "--precision", "fp16"]) == 1
    err = capsys.readouterr().err
    assert "--precision fp16 contradicts" in err and "drop --precision" in err and not (tmp_path / "fp16").exists()
    for role in graphs:
        assert {"QuantizeLinear", "DequantizeLinear"} <= _ops(bundle / manifest["graphs"][role]["file"])
    from edgevlp.runtime import load

    model = load(bundle)
    frame = photos_bgr["astronaut"]
    if arch.startswith("Blip"):
        assert isinstance(model.caption(frame).text, str)
        # The `edgevlp export --help` example, as written (Orin Nano profile: static batch 1, FP16 default).
        jetson = tmp_path / "blip-orin"
        assert main(["export", str(out), "-o", str(jetson), "--target", "jetson", "--profile",
                     str(REPO / "export/targets/jetson-orin-nano.toml")]) == 0
        orin = json.loads((jetson / "manifest.json").read_text())
        assert orin["precision"] == "int8" and orin["verified"]
        assert "--int8" in (jetson / "build_engines.sh").read_text()
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


def test_fallback_keeps_the_broken_layer_in_fp32(tmp_path, monkeypatch) -> None:
    """One MLP's hidden channel scaled by 1e4 (and its fc2 input by 1e-4): FP32 barely changes, but the
    activation range explodes, so per-tensor INT8 zeroes every other channel of that MLP. The search
    calibrates the graph once and quantises it once: every candidate reuses the ranges and is derived
    from the all-INT8 graph."""
    import onnxruntime.quantization as ortq

    import edgevlp.compress._ort as ort_backend
    from edgevlp.compress.pipeline import compress_model
    from edgevlp.models import tiny_adapter

    calls = {"calibration passes": 0, "quantize_static": 0}

    def spy(name, fn):
        def wrapped(*args, **kwargs):
            calls[name] += 1
            return fn(*args, **kwargs)
        return wrapped

    monkeypatch.setattr(ort_backend, "collect_ranges", spy("calibration passes", ort_backend.collect_ranges))
    monkeypatch.setattr(ortq, "quantize_static", spy("quantize_static", ortq.quantize_static))

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
    assert fb["evaluations"] >= 2 and calls == {"calibration passes": 1, "quantize_static": 1}, (fb, calls)
    assert report["stages"][0]["graphs"]["vision_encoder"]["calibration"]["passes"] == 1


def test_auto_scheme_and_calibration_sources(tiny_model_dir, tmp_path) -> None:
    """``method = "auto"`` keeps, per graph, the fastest scheme within the tolerance; a model not trained
    on shapes calibrates on real photos by default, ``--calib DIR`` on the user's folder, the demo zoo on
    shapes:train."""
    import cv2

    from edgevlp.compress._photos import resolve_source, trained_on_shapes
    from edgevlp.compress.calib import real_photos
    from edgevlp.compress.pipeline import compress_model
    from edgevlp.models.registry import ZOO_DIR

    model = tiny_model_dir("BlipForConditionalGeneration")
    assert trained_on_shapes(ZOO_DIR / "demo-blip") and not trained_on_shapes(model)
    assert resolve_source("auto", shapes_model=True) == "shapes:train"
    recipe = Recipe(name="t", stages=(QuantConfig(method="auto", calibration=CalibrationConfig(size=4),
                                                  fallback=FallbackConfig(min_cosine=0.9), include=("vision_encoder",)),))
    report = compress_model(model, recipe, tmp_path / "a", progress=False)["stages"][0]
    assert report["calibration"]["source"] == "photos" and report["calibration"]["source_asked"] == "auto"
    g = report["graphs"]["vision_encoder"]
    assert set(g["schemes"]) == {"ptq_static", "ptq_dynamic", "weight_only"} and g["calibration"]["passes"] == 1
    within = [s for s, t in g["schemes"].items() if t["within_tolerance"]]
    # the fastest within the tolerance (latencies are recorded to 3 decimals: a tie there may pick either)
    assert g["scheme"] in within
    assert g["schemes"][g["scheme"]]["latency_ms"] == min(g["schemes"][s]["latency_ms"] for s in within)
    comp = json.loads((tmp_path / "a" / "compression.json").read_text())
    assert comp["schemes"] == {"vision_encoder": g["scheme"]} and comp["graphs"] == {"vision_encoder": g["file"]}
    folder = tmp_path / "frames"
    folder.mkdir()
    for f in real_photos():
        cv2.imwrite(str(folder / f"{f.name}.png"), f.bgr)
    dynamic = Recipe(name="d", stages=(QuantConfig(method="ptq_dynamic", calibration=CalibrationConfig(size=2),
                                                   include=("vision_encoder",)),))
    report = compress_model(model, dynamic, tmp_path / "b", calib=str(folder), progress=False)["stages"][0]
    assert report["calibration"]["source"] == str(folder) and report["calibration"]["frames"] == 2


def test_compression_record_format(tmp_path) -> None:
    """compression.json is checked before anything loads: its format, and a version this edgevlp reads."""
    from edgevlp.compress.record import export_precision, read_compression
    from edgevlp.errors import InputError

    assert read_compression(tmp_path) is None
    for record, message in (({"format": "x", "format_version": 1}, "not an `edgevlp compress` record"),
                            ({"format": "edgevlp-compressed", "format_version": 99}, "upgrade edgevlp"),
                            ({"format": "edgevlp-compressed"}, "format_version None")):
        (tmp_path / "compression.json").write_text(json.dumps(record))
        with pytest.raises(InputError, match=message):
            read_compression(tmp_path)
    v1 = {"format": "edgevlp-compressed", "format_version": 1, "graphs": {"vision_encoder": "v.onnx"},
          "recipe": {"name": "old", "stages": [{"quant": {"method": "ptq_dynamic"}}]}}
    (tmp_path / "compression.json").write_text(json.dumps(v1))
    record = read_compression(tmp_path)
    assert export_precision(record, None, "cpu", tmp_path) == "int8"  # v1: int8 when it holds graphs
    with pytest.raises(InputError, match="QDQ graphs only"):  # dynamic INT8 is no TensorRT input
        export_precision(record, None, "jetson", tmp_path)
    assert export_precision({**v1, "graphs": {}}, "fp16", "jetson", tmp_path) == "fp16"  # pruned only


def test_ranges_one_pass_match_numpy(tmp_path) -> None:
    """In-graph min/max and percentile tails equal numpy's over all feeds (sizes differing per feed, an
    empty one included); a tensor holding -inf is reported non-finite."""
    from onnx import TensorProto, helper

    from edgevlp.compress._ranges import collect_ranges

    nodes = [helper.make_node("Relu", ["x"], ["r"]), helper.make_node("Add", ["x", "m"], ["masked"]),
             helper.make_node("Concat", ["r", "masked"], ["y"], axis=0)]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n"]),
                                           helper.make_tensor_value_info("m", TensorProto.FLOAT, ["n"])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [None])])
    path = tmp_path / "g.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), path)
    rng = np.random.default_rng(0)
    feeds = [{"x": rng.standard_t(3, n).astype(np.float32), "m": np.zeros(n, np.float32)} for n in (5000, 0, 20000)]
    feeds[2]["m"][7] = -np.inf
    values = np.concatenate([f["x"] for f in feeds] + [np.zeros(3, np.float32)])  # + the appended zeros
    mm = collect_ranges(path, feeds, ["x", "masked"], method="minmax")
    assert (mm.low["x"], mm.high["x"]) == (float(values.min()), float(values.max()))
    assert mm.nonfinite == {"masked"} and mm.samples == 3
    pc = collect_ranges(path, feeds, ["x"], method="percentile", percentile=99.9)
    k = round((100 - 99.9) / 200 * (values.size - 3))
    srt = np.sort(values)
    assert (pc.low["x"], pc.high["x"]) == (float(srt[k - 1]), float(srt[-k]))


def test_derived_candidate_equals_requantised(exported, tmp_path) -> None:
    """A fallback candidate derived from the all-INT8 QDQ graph (its FP32 nodes read FP32 inputs again)
    computes what quantize_static(nodes_to_exclude=...) computes."""
    from edgevlp.compress._ort import OnnxRuntimeBackend
    from edgevlp.compress._ranges import Ranges

    src = exported("BlipForConditionalGeneration") / "vision_encoder.onnx"
    model = onnx.load(str(src))
    feeds = [{"pixel_values": np.random.default_rng(i).standard_normal((1, 3, 32, 32)).astype(np.float32)}
             for i in range(3)]
    backend = OnnxRuntimeBackend()
    cfg = QuantConfig(calibration=CalibrationConfig(method="percentile", size=3))
    ranges = backend.calibrate("vision_encoder", src, cfg, feeds)
    assert isinstance(ranges, Ranges) and ranges.samples == 3
    base, full = tmp_path / "base.onnx", tmp_path / "requantised.onnx"
    backend.quantize("vision_encoder", src, base, cfg, "ptq_static", set(), ranges, tmp_path)
    keep = {n.name for n in model.graph.node if n.op_type == "MatMul"}
    keep = set(sorted(keep)[:3])
    backend.quantize("vision_encoder", src, full, cfg, "ptq_static", keep, ranges, tmp_path)
    derived = backend.derive("ptq_static", base, src, keep)
    assert derived is not None
    ops = {n.op_type for n in onnx.load_from_string(derived).graph.node}
    assert "DequantizeLinear" in ops
    a, b = backend.runner(derived), backend.runner(full)
    for feed in feeds:
        for x, y in zip(a(feed), b(feed)):
            np.testing.assert_allclose(x, y, rtol=1e-5, atol=1e-5)
    assert len(onnx.load_from_string(derived).graph.node) == len(onnx.load(str(full)).graph.node)


def test_a_graph_the_fallback_keeps_all_fp32_is_not_called_int8(tmp_path) -> None:
    """A tolerance no INT8 layer meets (min_cosine 1.0): the fallback keeps every layer in FP32, and the
    graph is reported and recorded as FP32 (no INT8 file, not in compression.json), not as INT8."""
    from edgevlp.compress.pipeline import compress_model
    from edgevlp.models import tiny_adapter

    adapter = tiny_adapter("BlipForConditionalGeneration")
    recipe = Recipe(name="t", stages=(QuantConfig(calibration=CalibrationConfig(size=4),
                                                  fallback=FallbackConfig(min_cosine=1.0, max_layers=1000),
                                                  include=("vision_encoder",)),))
    report = compress_model(adapter, recipe, tmp_path / "o", progress=False)
    graph = report["stages"][0]["graphs"]["vision_encoder"]
    assert graph["quantized"] is False and "kept every layer in FP32" in graph["reason"], graph
    record = json.loads((tmp_path / "o" / "compression.json").read_text())
    assert "vision_encoder" not in record["graphs"] and not list((tmp_path / "o").glob("vision_encoder*"))
