"""The small defects of issue #14, each pinned by a test that failed before its fix."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import tomllib
from pathlib import Path
from unittest import mock

import numpy as np
import pytest

from edgevlp.bundle import (TENSORRT_ENGINE, GraphSpec, Manifest, TensorSpec, add_engines, build_bundle,
                            read_manifest)
from edgevlp.errors import DependencyError, InputError, ModelLoadError

REPO = Path(__file__).resolve().parents[1]
PYPROJECT = tomllib.loads((REPO / "pyproject.toml").read_text())
BLIP, OWL = "BlipForConditionalGeneration", "OwlViTForObjectDetection"


# ------------------------------------------------------------------------- tomllib on Python 3.10
def test_compress_imports_where_there_is_no_tomllib() -> None:
    """Python 3.10 has no ``tomllib``: recipes (and profiles) are read with the ``tomli`` backport."""
    code = f"""
import sys, tomllib, types
tomli = types.ModuleType("tomli")
tomli.loads, tomli.TOMLDecodeError = tomllib.loads, tomllib.TOMLDecodeError
sys.modules["tomli"], sys.modules["tomllib"] = tomli, None   # as on 3.10, tomli installed
real, sys.version_info = sys.version_info, (3, 10, 14, "final", 0)
import edgevlp.compress
sys.version_info = real
print(edgevlp.compress.load_recipe({str(REPO / "recipes" / "int8-ptq.toml")!r}).name)
"""
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert res.returncode == 0, res.stderr
    assert res.stdout.strip()


def test_tomli_is_a_dependency_below_3_11() -> None:
    deps = [d.replace(" ", "").replace('"', "'") for d in PYPROJECT["project"]["dependencies"]]
    assert any(d.startswith("tomli") and "python_version<'3.11'" in d for d in deps), deps


# ----------------------------------------------------------------------- scikit-learn for shapes:
def _extra(name: str, seen: tuple[str, ...] = ()) -> set[str]:
    """Distribution names an extra installs, following ``edgevlp[...]`` references."""
    out: set[str] = set()
    for req in PYPROJECT["project"]["optional-dependencies"][name]:
        dist = re.match(r"[A-Za-z0-9_.-]+", req).group(0)
        if dist == "edgevlp":
            for ref in re.search(r"\[(.*)\]", req).group(1).split(","):
                out |= _extra(ref.strip(), seen + (name,)) if ref.strip() not in seen else set()
        else:
            out.add(dist.lower())
    return out


@pytest.mark.parametrize("extra", ["compress", "eval"])
def test_extras_that_read_shapes_data_install_what_it_needs(extra: str) -> None:
    assert {"scikit-image", "scikit-learn"} <= _extra(extra)


def test_shapes_data_without_scikit_learn_names_the_extra(monkeypatch) -> None:
    from edgevlp.data import shapes

    shapes._photos.cache_clear()
    monkeypatch.setitem(sys.modules, "sklearn", None)
    monkeypatch.setitem(sys.modules, "sklearn.datasets", None)
    try:
        with pytest.raises(DependencyError, match=r"pip install 'edgevlp\[data\]'"):
            shapes._photos()
    finally:
        shapes._photos.cache_clear()


# ------------------------------------------------------------------- hints name real flags only
def _cli_options() -> set[str]:
    from edgevlp.cli import build_parser

    parser = build_parser()
    verbs = next(a for a in parser._actions if a.dest == "verb").choices.values()
    return {o for p in (parser, *verbs) for a in p._actions for o in a.option_strings}


def _flags(text: str) -> set[str]:
    return set(re.findall(r"(?<![\w-])--[a-z][\w-]*", text)) - {"--local-dir"}  # huggingface-cli's own


def test_uncached_hub_id_hint_names_no_flag_that_does_not_exist(monkeypatch, tmp_path) -> None:
    from edgevlp.models import load_model

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    with pytest.raises(ModelLoadError) as info:
        load_model("Salesforce/blip-image-captioning-base")
    assert _flags(str(info.value)) <= _cli_options(), str(info.value)
    assert "edgevlp info DIR" in str(info.value)


def test_zoo_list_hint_names_no_flag_that_does_not_exist(capsys) -> None:
    from edgevlp.cli import main

    assert main(["zoo"]) == 0
    out = capsys.readouterr().out
    assert "demo-blip" in out and _flags(out) <= _cli_options(), out


# ------------------------------------------------------------------- one TensorRT engine key
def _graph(role: str = "vision_encoder") -> GraphSpec:
    return GraphSpec(role=role, file=f"{role}.onnx",
                     inputs=(TensorSpec("pixel_values", "float32", (1, 3, 8, 8)),),
                     outputs=(TensorSpec("last_hidden_state", "float32", (1, 4, 8)),))


def _write_tiny_bundle(root: Path) -> Manifest:
    graph = _graph()
    (root / graph.file).write_bytes(b"onnx")
    return Manifest(task="caption", family="blip", architecture=BLIP, source={"model": "x"}, target="jetson",
                    precision="fp16", graphs={graph.role: graph}, preprocess={}, tokenizer={"file": "t.json"})


def test_in_process_engines_and_add_engines_use_one_key(tmp_path) -> None:
    from edgevlp.export import tensorrt_target
    from edgevlp.export.context import ExportContext
    from edgevlp.export.profiles import load_profile
    from edgevlp.export.progress import Progress

    trt = mock.MagicMock(__version__="10.3.0")
    trt.Builder.return_value.build_serialized_network.return_value = b"plan"
    ctx = ExportContext(root=tmp_path, graphs=[_graph()], profile=load_profile("laptop-gpu"),
                        precision="fp16", target="laptop-gpu", progress=Progress(enabled=False))
    with mock.patch.dict(sys.modules, {"tensorrt": trt}):
        assert tensorrt_target._build_in_process(ctx, {}) is True
    assert dict(ctx.graphs[0].engines) == {TENSORRT_ENGINE: "engines/vision_encoder.plan"}
    assert (tmp_path / "engines" / "vision_encoder.plan").read_bytes() == b"plan"

    bundle = tmp_path / "bundle"
    build_bundle(bundle, _write_tiny_bundle)
    (bundle / "engines").mkdir()
    (bundle / "engines" / "vision_encoder.plan").write_bytes(b"plan")
    add_engines(bundle, {"vision_encoder": "engines/vision_encoder.plan"})
    assert dict(read_manifest(bundle).graphs["vision_encoder"].engines) == dict(ctx.graphs[0].engines)


# --------------------------------------------------------------------- bad frames: InputError
BAD_FRAMES = {
    "none": (None, "got None"),
    "list": ([[[0, 0, 0]]], "got list"),
    "float": (np.zeros((32, 32, 3), np.float32), "uint8"),
    "grayscale": (np.zeros((32, 32), np.uint8), "HxWx3"),
    "four_channels": (np.zeros((32, 32, 4), np.uint8), "HxWx3"),
}


@pytest.mark.parametrize("preprocess", ["reference", "extension"])
@pytest.mark.parametrize("name", BAD_FRAMES)
def test_bad_frames_raise_input_error_saying_what_is_expected(exported, monkeypatch, name,
                                                             preprocess) -> None:
    from edgevlp.runtime import load

    monkeypatch.setenv("EDGEVLP_PREPROCESS", preprocess)
    frame, needle = BAD_FRAMES[name]
    captioner, detector = load(exported(BLIP)), load(exported(OWL))
    detector.set_prompts(["cat"])
    for call in (captioner.caption, detector.detect):
        with pytest.raises(InputError) as info:
            call(frame)
        assert needle in str(info.value) and "uint8" in str(info.value), str(info.value)


# ------------------------------------------------------------- temp dirs of killed builds
def _dead_pid() -> int:
    res = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True,
                         text=True, check=True)
    return int(res.stdout)


@pytest.mark.skipif(os.name == "nt", reason="no SIGKILL")
def test_next_build_removes_temp_dirs_of_killed_builds(tmp_path) -> None:
    # A build killed with SIGKILL (no finally runs) leaves its hidden temp dir with its data.
    code = f"""
import os, signal
from edgevlp.bundle import atomic_directory
with atomic_directory({str(tmp_path / "killed")!r}) as tmp:
    (tmp / "weights.bin").write_bytes(b"x" * 4096)
    os.kill(os.getpid(), signal.SIGKILL)
"""
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert res.returncode == -signal.SIGKILL, res.stderr
    (killed,) = [p for p in tmp_path.iterdir() if p.name.startswith(".killed.tmp-")]
    assert (killed / "weights.bin").is_file()
    dead = tmp_path / f".other.tmp-{_dead_pid()}-abc123"
    live = tmp_path / f".running.tmp-{os.getpid()}-abc123"  # a build still in progress
    unrelated = tmp_path / ".notes.tmp-draft"
    for d in (dead, live, unrelated):
        d.mkdir()

    def write(root: Path) -> Manifest:
        assert root.name.startswith(f".bundle.tmp-{os.getpid()}-")  # named with its owner
        return _write_tiny_bundle(root)

    build_bundle(tmp_path / "bundle", write)
    assert not killed.exists() and not dead.exists()
    assert live.is_dir() and unrelated.is_dir()
    assert read_manifest(tmp_path / "bundle").graphs
