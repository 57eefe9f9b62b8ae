"""INT8 for OpenVINO (NNCF) on tiny models: the shipped recipe quantises every graph (static or
weight-only, whichever is faster within the tolerance), `edgevlp export --target openvino` takes the IR
as it is, and the runtime's INT8 caption / detections follow the FP32 ones on real photos."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("nncf")
pytest.importorskip("openvino")

from edgevlp.cli import main  # noqa: E402

REPO = Path(__file__).resolve().parent.parent


def _recipe(tmp_path: Path) -> Path:
    """The shipped recipe with a small calibration set (a tiny model needs no more)."""
    text = (REPO / "recipes/int8-openvino.toml").read_text()
    assert 'backend = "openvino"' in text and 'method = "auto"' in text
    path = tmp_path / "r.toml"
    # max_rel_diff: as the onnxruntime PTQ test, what the exporter's end-to-end INT8 parity allows (tiny
    # random models compound each graph's error more than real ones)
    text = text.replace("size = 32", "size = 6")
    path.write_text(text.replace("max_layers = 16", "max_rel_diff = 0.1\nmax_layers = 64"))
    return path


def _ir_ops(xml: Path) -> set[str]:
    import openvino as ov

    return {op.get_type_name() for op in ov.Core().read_model(str(xml)).get_ops()}


@pytest.mark.parametrize("arch", ["BlipForConditionalGeneration", "OwlViTForObjectDetection"])
def test_openvino_recipe_compress_export_run(arch, tiny_model_dir, tmp_path, photos_bgr) -> None:
    out = tmp_path / "compressed"
    assert main(["compress", str(tiny_model_dir(arch)), "--recipe", str(_recipe(tmp_path)), "-o", str(out),
                 "--eval-n", "0"]) == 0
    record = json.loads((out / "compression.json").read_text())
    assert record["precision"] == "int8" and set(record["openvino_graphs"]) == set(record["schemes"])
    for role, file in record["openvino_graphs"].items():
        ops = _ir_ops(out / file)
        scheme = record["schemes"][role]
        assert scheme in ("ptq_static", "weight_only"), (role, scheme)
        # static: FakeQuantize on activations; weight-only: int8 weight constants decompressed by Convert
        assert ("FakeQuantize" in ops) if scheme == "ptq_static" else ("Convert" in ops), (role, scheme, ops)
        assert record["parity"]["measured"][role] >= 0.99, role
    # Only the openvino target reads IR; another is refused with the fix.
    assert main(["export", str(out), "-o", str(tmp_path / "cpu"), "--target", "cpu"]) == 1
    bundle = tmp_path / "bundle"
    assert main(["export", str(out), "-o", str(bundle), "--target", "openvino"]) == 0
    manifest = json.loads((bundle / "manifest.json").read_text())
    assert manifest["precision"] == "int8" and manifest["verified"] and manifest["parity"]["passed"]
    fp32 = tmp_path / "fp32"
    assert main(["export", str(tiny_model_dir(arch)), "-o", str(fp32), "--target", "openvino"]) == 0

    from edgevlp.runtime import load

    int8, ref = load(bundle), load(fp32)

    def cosine(a: np.ndarray, b: np.ndarray) -> float:
        a, b = a.ravel().astype(np.float64), b.ravel().astype(np.float64)
        return float(a @ b / np.linalg.norm(a) / np.linalg.norm(b))

    frames = [photos_bgr["astronaut"], photos_bgr["coffee"]]
    if arch.startswith("Blip"):
        run = lambda model, f: model.encode(model.preprocess(f))  # noqa: E731
        assert isinstance(int8.caption(frames[0]).text, str)
    else:
        for model in (int8, ref):
            model.set_prompts(["a photo of a person", "a cup of coffee"])
        run = lambda model, f: model.logits(model.preprocess(f))  # noqa: E731
        assert int8.detect(frames[0]) is not None
    fp32_out = [run(ref, f) for f in frames]
    assert cosine(*fp32_out) < 0.999  # the output depends on the input
    for f, expected in zip(frames, fp32_out):
        assert cosine(run(int8, f), expected) >= 0.98
