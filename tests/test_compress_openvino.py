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
from edgevlp.compress._openvino import OpenVINOBackend  # noqa: E402
from edgevlp.spec import PreprocessSpec  # noqa: E402

REPO = Path(__file__).resolve().parent.parent


def _recipe(tmp_path: Path) -> Path:
    """The shipped recipe with a small calibration set (a tiny model needs no more)."""
    text = (REPO / "recipes/int8-openvino.toml").read_text()
    assert 'backend = "openvino"' in text and 'method = "auto"' in text
    path = tmp_path / "r.toml"
    # max_rel_diff: as the onnxruntime PTQ test, what the exporter's end-to-end INT8 parity allows (tiny
    # random models compound each graph's error more than real ones; static INT8 of their decoders
    # exceeds it, so weight-only is what is left there)
    text = text.replace("size = 32", "size = 6")
    path.write_text(text.replace("max_layers = 16", "max_rel_diff = 0.1\nmax_layers = 64"))
    return path


@pytest.mark.parametrize("arch", ["BlipForConditionalGeneration", "OwlViTForObjectDetection"])
def test_openvino_recipe_compress_export_run(arch, tiny_model_dir, tmp_path, photos_bgr, capsys) -> None:
    out = tmp_path / "compressed"
    assert main(["compress", str(tiny_model_dir(arch)), "--recipe", str(_recipe(tmp_path)), "-o", str(out),
                 "--eval-n", "0"]) == 0
    assert f"next: edgevlp export {out} -o BUNDLE --target openvino" in capsys.readouterr().out
    record = json.loads((out / "compression.json").read_text())
    assert record["precision"] == "int8" and set(record["openvino_graphs"]) == set(record["schemes"])
    for role, file in record["openvino_graphs"].items():
        scheme = record["schemes"][role]
        assert scheme in ("ptq_static", "weight_only"), (role, scheme)
        assert OpenVINOBackend.integer_ops(out / file), (role, scheme)  # FakeQuantize or int8 weights
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


def test_static_int8_quantile_ranges_on_real_photos(tiny_model_dir, tmp_path, photos_bgr) -> None:
    """NNCF static INT8 (percentile -> NNCF's quantile estimator) of a vision encoder: FakeQuantize in the
    IR, and on real photos its output follows FP32 (the runner compares at f32, not the CPU's bf16)."""
    from edgevlp.compress.recipe import load_recipe
    from edgevlp.export import export_model
    from edgevlp.runtime.preprocess import preprocess

    manifest = export_model(tiny_model_dir("BlipForConditionalGeneration"), tmp_path / "fp32", target="cpu",
                            progress=False)
    src = tmp_path / "fp32" / manifest.graphs["vision_encoder"].file
    spec = PreprocessSpec.from_dict(manifest.preprocess)
    feeds = [{"pixel_values": preprocess(f, spec)[0]} for f in photos_bgr.values()]
    cfg = next(s for s in load_recipe(REPO / "recipes/int8-openvino.toml").stages if hasattr(s, "calibration"))
    backend = OpenVINOBackend()
    backend.calibrate("vision_encoder", src, cfg, feeds)
    dst = tmp_path / "v.int8.xml"
    details = backend.quantize("vision_encoder", src, dst, cfg, "ptq_static", set(), None, tmp_path)
    assert "FakeQuantize" in OpenVINOBackend.integer_ops(dst) and details["calibration"] == "percentile"
    fp32, int8 = backend.runner(src), backend.runner(dst)
    outs = [fp32(f)[0].ravel() for f in feeds]
    assert float(outs[0] @ outs[1] / np.linalg.norm(outs[0]) / np.linalg.norm(outs[1])) < 0.999
    for feed, a in zip(feeds, outs):
        b = int8(feed)[0].ravel()
        assert float(a @ b / np.linalg.norm(a) / np.linalg.norm(b)) >= 0.99


def test_openvino_and_nncf_telemetry_are_off_around_our_calls() -> None:
    """Inside the block the converter and NNCF use their own telemetry stubs (nothing is sent, nothing
    forks to resolve the analytics host offline); outside it, the packages are as they were."""
    import sys

    import openvino.tools.ovc.convert_impl as convert_impl
    import openvino.tools.ovc.telemetry_stub as stub
    from nncf.telemetry import wrapper

    from edgevlp._telemetry import openvino_telemetry_off

    before_tm, before_impl = convert_impl.tm, getattr(wrapper.telemetry, "_impl", None)
    assert before_tm is sys.modules.get("openvino_telemetry", stub)
    with openvino_telemetry_off(nncf=True):
        assert convert_impl.tm is stub and sys.modules["openvino.tools.ovc.telemetry_utils"].tm is stub
        if before_impl is not None:
            assert wrapper.telemetry._impl is not before_impl
    assert convert_impl.tm is before_tm and getattr(wrapper.telemetry, "_impl", None) is before_impl
