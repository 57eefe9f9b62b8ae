"""Exporter: every family x target cpu/openvino/jetson on tiny re-initialised models."""

from __future__ import annotations

import json
import os
import shlex
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch

from edgevlp.bundle import manifest_schema, read_manifest
from edgevlp.errors import BundleError, InputError
from edgevlp.models import adapter_class, known_architectures, load_model

#: captioners and detectors: the vqa families' bundles are checked in tests/test_smolvlm.py
ARCHS = [a for a in known_architectures() if adapter_class(a).task != "vqa"]
TARGETS = ["cpu", "openvino", "jetson"]
ENV = {**os.environ, "HF_HUB_OFFLINE": "1"}
SCHEMA = manifest_schema()  # bundle.schema.json with the enums of edgevlp.targets


@pytest.mark.parametrize("target", TARGETS)
@pytest.mark.parametrize("arch", ARCHS)
def test_bundle_is_valid_and_equal_to_source(exported, arch, target) -> None:
    import jsonschema

    path = exported(arch, target)
    raw = json.loads((path / "manifest.json").read_text())
    jsonschema.validate(raw, SCHEMA)
    manifest = read_manifest(path)
    assert manifest.verified and manifest.parity["passed"]
    assert manifest.architecture == arch and manifest.target == target
    for name, out in manifest.parity["outputs"].items():
        assert out["ok"] and out["max_abs_diff"] <= out["allowed"], name
        assert out["max_abs_source"] > 0.1, f"{name}: source output is ~0, parity would be vacuous"
    if manifest.task == "caption":
        assert set(manifest.graphs) == {"vision_encoder", "cross_kv", "text_decoder"}
        assert manifest.parity["greedy_tokens_identical"] is True
        ids = np.asarray(manifest.parity["source_token_ids"])
        assert ids.shape[1] >= 2 and not (ids[0] == ids[1]).all(), "both photos gave the same caption"
        assert manifest.generation["decoder_start_token_id"] is not None
    else:
        assert set(manifest.graphs) == {"image_encoder", "text_encoder"}
        assert len(manifest.parity["prompt_sets"]) == 2
    for graph in manifest.graphs.values():
        if graph.format == "onnx":
            onnx.checker.check_model(str(path / graph.file), full_check=True)
        else:
            assert graph.format == "openvino" and (path / graph.extra_files[0]).is_file()
    assert all(len(meta["sha256"]) == 64 for meta in manifest.files.values())
    assert "tokenizer.json" in manifest.files


@pytest.mark.parametrize("arch", ARCHS)
def test_runtime_opens_every_target_without_flags(exported, arch) -> None:
    from edgevlp.export.parity import parity_photos, parity_pixels
    from edgevlp.runtime import Captioner, Detector, load
    from edgevlp.spec import PreprocessSpec

    adapter = load_model(_model_dir(exported, arch))
    for target in TARGETS:
        model = load(exported(arch, target))
        pixels = parity_pixels(PreprocessSpec.from_dict(model.manifest.preprocess), parity_photos())
        if isinstance(model, Captioner):
            first = pixels[:1]
            ids = model.generate(first, max_new_tokens=12)
            ref = adapter.generate(torch.from_numpy(first), max_new_tokens=12).numpy()
            np.testing.assert_array_equal(ids, ref)
        else:
            assert isinstance(model, Detector)
            prompts = ["yellow star", "a person", "green hexagon", "sky"]  # not the parity prompts
            model.set_prompts(prompts)
            got = model.logits(pixels[:1])
            ref = adapter.forward(torch.from_numpy(pixels[:1]), prompts=prompts)["logits"].numpy()
            np.testing.assert_allclose(got, ref, atol=1e-3, rtol=1e-3)
            assert np.ptp(ref) > 0.1


def _model_dir(exported, arch):  # the same tiny model the bundles came from
    return Path(read_manifest(exported(arch, "cpu")).source["model"])


def _edgevlp(*args: str, **kw) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "edgevlp", *args], capture_output=True, text=True,
                          env=ENV, timeout=600, **kw)


def test_tampered_or_missing_file_is_named(exported, tmp_path) -> None:
    import shutil

    bundle = tmp_path / "b"
    shutil.copytree(exported("BlipForConditionalGeneration", "cpu"), bundle)
    res = _edgevlp("info", str(bundle))
    assert res.returncode == 0 and "verified" in res.stdout
    graph = bundle / "text_decoder.onnx"
    data = bytearray(graph.read_bytes())
    data[len(data) // 2] ^= 0xFF
    graph.write_bytes(bytes(data))
    res = _edgevlp("info", str(bundle))
    assert res.returncode == 1 and "text_decoder.onnx" in res.stderr and "Traceback" not in res.stderr
    graph.unlink()
    res = _edgevlp("info", str(bundle))
    assert res.returncode == 1 and "missing text_decoder.onnx" in res.stderr
    with pytest.raises(BundleError, match="text_decoder.onnx"):
        from edgevlp.runtime import load

        load(bundle)


def test_foreign_and_future_bundles_are_refused(exported, tmp_path) -> None:
    import shutil

    from edgevlp.runtime import load

    bundle = tmp_path / "b"
    shutil.copytree(exported("OwlViTForObjectDetection", "cpu"), bundle)
    manifest = json.loads((bundle / "manifest.json").read_text())
    (bundle / "manifest.json").write_text(json.dumps({**manifest, "format_version": 99}))
    with pytest.raises(BundleError, match="version 99"):
        load(bundle)
    (bundle / "manifest.json").write_text(json.dumps({**manifest, "format": "something-else"}))
    with pytest.raises(BundleError, match="not an edgevlp bundle"):
        load(bundle)
    with pytest.raises(BundleError, match="no such bundle"):
        load(tmp_path / "nope")


def test_existing_output_is_refused_then_forced(tiny_model_dir, tmp_path) -> None:
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("user data")
    model = str(tiny_model_dir("OwlViTForObjectDetection"))
    res = _edgevlp("export", model, "-o", str(out), "--target", "cpu")
    assert res.returncode == 1 and "--force" in res.stderr and "Traceback" not in res.stderr
    assert (out / "keep.txt").read_text() == "user data"
    res = _edgevlp("export", model, "-o", str(out), "--target", "cpu", "--force")
    assert res.returncode == 0, res.stderr
    assert not (out / "keep.txt").exists() and read_manifest(out).verified
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")], "temp dirs left behind"


def test_usage_errors(tiny_model_dir, tmp_path) -> None:
    model = str(tiny_model_dir("BlipForConditionalGeneration"))
    res = _edgevlp("export", model, "-o", str(tmp_path / "a"), "--target", "tpu")
    assert res.returncode == 2 and "tpu" in res.stderr
    res = _edgevlp("export", model, "-o", str(tmp_path / "a"), "--target", "cpu", "--precision", "int2")
    assert res.returncode == 2 and "int2" in res.stderr
    # int4 is a precision only `edgevlp compress` outputs hold: one clear line, no traceback
    res = _edgevlp("export", model, "-o", str(tmp_path / "a"), "--target", "cpu", "--precision", "int4")
    assert res.returncode == 1 and "edgevlp compress" in res.stderr and "Traceback" not in res.stderr
    res = _edgevlp("export", model, "-o", str(tmp_path / "a"), "--target", "cpu", "--precision", "fp16")
    assert res.returncode == 1 and "fp16" in res.stderr and "Traceback" not in res.stderr
    res = _edgevlp("export", model, "-o", str(tmp_path / "a"), "--target", "cpu", "--profile", "mars")
    assert res.returncode == 1 and "jetson-orin-nano" in res.stderr
    assert not (tmp_path / "a").exists()


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGKILL])
def test_killed_export_leaves_no_bundle(tiny_model_dir, tmp_path, sig) -> None:
    out = tmp_path / "bundle"
    proc = subprocess.Popen([sys.executable, "-m", "edgevlp", "export",
                             str(tiny_model_dir("BlipForConditionalGeneration")), "-o", str(out),
                             "--target", "cpu"], env=ENV, stderr=subprocess.PIPE, text=True)
    # Wait until tracing has started (a temp dir exists beside the output), then kill.
    deadline = time.time() + 120
    while time.time() < deadline and not any(p.name.startswith(".bundle.tmp") for p in tmp_path.iterdir()):
        time.sleep(0.05)
    time.sleep(1.0)
    assert proc.poll() is None, "export finished before it could be killed"
    proc.send_signal(sig)
    proc.wait(timeout=60)
    assert proc.returncode != 0
    assert not out.exists()
    if sig == signal.SIGTERM:  # unwinds: the temp dir is removed too, and no traceback
        assert not list(tmp_path.iterdir())
        assert "Traceback" not in proc.stderr.read()


def test_jetson_script_matches_graphs(exported) -> None:
    path = exported("BlipForConditionalGeneration", "jetson")
    script = path / "build_engines.sh"
    assert subprocess.run(["bash", "-n", str(script)]).returncode == 0
    manifest = read_manifest(path)
    commands = [shlex.split(line) for line in script.read_text().splitlines() if line.startswith('"$TRTEXEC"')]
    assert len(commands) == len(manifest.graphs)
    for cmd in commands:
        args = dict(a.split("=", 1) for a in cmd[1:] if "=" in a)
        graph = next(g for g in manifest.graphs.values() if g.file == args["--onnx"])
        assert "--fp16" in cmd and args["--saveEngine"].startswith("engines/")
        model = onnx.load(str(path / graph.file))
        onnx_inputs = {i.name: [d.dim_value or d.dim_param for d in i.type.tensor_type.shape.dim]
                       for i in model.graph.input}
        dynamic = [n for n, dims in onnx_inputs.items() if any(isinstance(d, str) for d in dims)]
        if not dynamic:
            assert "--minShapes" not in args
            continue
        shapes = {}
        for flag in ("--minShapes", "--optShapes", "--maxShapes"):
            for item in args[flag].split(","):
                name, dims = item.rsplit(":", 1)
                shapes.setdefault(name, []).append([int(d) for d in dims.split("x")])
        assert set(shapes) == set(onnx_inputs)
        for name, (lo, opt, hi) in shapes.items():
            dims = onnx_inputs[name]
            assert len(lo) == len(dims)
            for d, a, b, c in zip(dims, lo, opt, hi):
                assert a <= b <= c
                if isinstance(d, int) and d > 0:
                    assert a == b == c == d, (name, dims, lo)
        if graph.role == "cross_kv":  # image length fixed by the vision graph: one shape
            enc = shapes["encoder_hidden_states"]
            image_tokens = manifest.graphs["vision_encoder"].outputs[0].shape[1]
            assert enc[0] == enc[1] == enc[2] and enc[0][:2] == [1, image_tokens]
            continue
        past = shapes["past_key_values.0.key"]
        assert past[0][2] == 0 and past[2][2] >= 20  # first step (empty cache) .. max_new_tokens
        cross = shapes["cross_attention.0.key"]
        assert cross[0] == cross[2] and cross[0][2] == manifest.graphs["vision_encoder"].outputs[0].shape[1]
        assert onnx_inputs["input_ids"][0] == 1  # orin-nano profile: static batch 1
    assert manifest.export["tensorrt"]["engines_built_in_process"] is False  # no TensorRT here


def test_fp16_overflow_is_found(tmp_path) -> None:
    from onnx import TensorProto, helper

    from edgevlp.export.tensorrt_target import fp16_risks

    big = helper.make_tensor("w", TensorProto.FLOAT, [4, 4], (np.eye(4) * 1e5).ravel().tolist())
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "w"], ["h"], name="scale_up"),
         helper.make_node("Tanh", ["h"], ["y"], name="squash")],
        "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4])], [big])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    onnx.save(model, str(tmp_path / "m.onnx"))
    risks = fp16_risks(tmp_path / "m.onnx", {"x": np.ones((1, 4), np.float32)})
    assert [r["node"] for r in risks] == ["MatMul:scale_up"] and risks[0]["max_abs"] == pytest.approx(1e5)
    assert fp16_risks(tmp_path / "m.onnx", {"x": np.full((1, 4), 1e-3, np.float32)}) == []


def test_parity_failure_names_the_output(tiny_model_dir, tmp_path, monkeypatch) -> None:
    from edgevlp.errors import ExportError
    from edgevlp.export import export_model
    from edgevlp.export import parity

    original = parity._Diffs.add

    def corrupt(self, name, got, ref):  # simulate an exporter bug: logits off by 1
        return original(self, name, np.asarray(got) + (1.0 if name == "logits" else 0.0), ref)

    monkeypatch.setattr(parity._Diffs, "add", corrupt)
    with pytest.raises(ExportError, match="'logits'.*max \\|exported - source\\| = 1"):
        export_model(tiny_model_dir("OwlViTForObjectDetection"), tmp_path / "b", progress=False)
    assert not (tmp_path / "b").exists()
    manifest = export_model(tiny_model_dir("OwlViTForObjectDetection"), tmp_path / "b", progress=False,
                            skip_parity=True)
    assert manifest.verified is False and read_manifest(tmp_path / "b").parity == {"skipped": True}


def test_quantised_input_stays_qdq(exported, tiny_model_dir, tmp_path) -> None:
    """`edgevlp compress` output (compression.json + QDQ ONNX) keeps its quantisation through export."""
    import shutil

    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, quantize_static

    from edgevlp.export import export_model
    from edgevlp.export.parity import parity_photos, parity_pixels
    from edgevlp.spec import PreprocessSpec

    src = exported("BlipForConditionalGeneration", "cpu")
    spec = PreprocessSpec.from_dict(read_manifest(src).preprocess)
    pixels = parity_pixels(spec, parity_photos())

    class Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self.items = iter([{"pixel_values": pixels[i:i + 1]} for i in range(2)])

        def get_next(self):  # type: ignore[no-untyped-def]
            return next(self.items, None)

    comp = tmp_path / "compressed"
    shutil.copytree(tiny_model_dir("BlipForConditionalGeneration"), comp / "model")
    quantize_static(str(src / "vision_encoder.onnx"), str(comp / "vision_encoder.qdq.onnx"), Reader(),
                    quant_format=QuantFormat.QDQ)
    (comp / "compression.json").write_text(json.dumps({
        "format": "edgevlp-compressed", "format_version": 1,
        "base_model": "model", "graphs": {"vision_encoder": "vision_encoder.qdq.onnx"},
        "recipe": {"name": "test-int8", "stages": [{"quant": {"method": "ptq_static"}}]}}))
    manifest = export_model(comp, tmp_path / "bundle", target="cpu", precision="int8", progress=False)
    ops = {n.op_type for n in onnx.load(str(tmp_path / "bundle" / "vision_encoder.onnx")).graph.node}
    assert {"QuantizeLinear", "DequantizeLinear"} <= ops
    assert manifest.compression == {"name": "test-int8", "stages": [{"quant": {"method": "ptq_static"}}]}
    assert manifest.export["graphs"]["vision_encoder"]["exporter"].startswith("edgevlp compress")
    assert manifest.verified and "encoder_hidden_states" in manifest.parity["outputs"]
    # An unquantised model has no calibrated scales for TensorRT INT8: refused with the fix.
    with pytest.raises(InputError, match="calibrated"):
        export_model(tiny_model_dir("BlipForConditionalGeneration"), tmp_path / "j", target="jetson",
                     precision="int8", progress=False)
    assert not (tmp_path / "j").exists()


def test_quantised_openvino_ir_is_kept(exported, tiny_model_dir, tmp_path) -> None:
    """OpenVINO INT8 IR written by `edgevlp compress` is copied, not re-converted from FP32."""
    import shutil

    import nncf
    import openvino as ov

    from edgevlp.export import export_model

    src = exported("OwlViTForObjectDetection", "openvino")
    comp = tmp_path / "compressed"
    shutil.copytree(tiny_model_dir("OwlViTForObjectDetection"), comp / "model")
    ir = ov.Core().read_model(str(src / "image_encoder.xml"))
    ov.save_model(nncf.compress_weights(ir, mode=nncf.CompressWeightsMode.INT8_ASYM),
                  str(comp / "image_encoder.int8.xml"), compress_to_fp16=False)
    (comp / "compression.json").write_text(json.dumps({
        "format": "edgevlp-compressed", "format_version": 1,
        "base_model": "model", "graphs": {}, "openvino_graphs": {"image_encoder": "image_encoder.int8.xml"},
        "recipe": {"name": "ov-weight-only"}}))
    manifest = export_model(comp, tmp_path / "bundle", target="openvino", precision="int8", progress=False)
    graph = manifest.graphs["image_encoder"]
    assert graph.format == "openvino" and graph.file == "image_encoder.xml"
    assert (tmp_path / "bundle" / "image_encoder.bin").read_bytes() == (comp / "image_encoder.int8.bin").read_bytes()
    assert manifest.export["graphs"]["image_encoder"]["exporter"] == "edgevlp compress (OpenVINO IR)"
    assert "quantization" not in manifest.export  # no second, weight-only pass on top
    assert manifest.verified and manifest.parity["outputs"]["logits"]["ok"]
