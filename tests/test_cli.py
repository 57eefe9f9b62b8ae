"""The CLI: help for every verb, exit codes, one-line errors, no torch for --help, correct counts."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from edgevlp.cli import VERBS, main

ENV = {**os.environ, "HF_HUB_OFFLINE": "1"}


def _edgevlp(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "edgevlp", *args], capture_output=True, text=True,
                          env=ENV, timeout=300)


@pytest.mark.parametrize("verb", [v.name for v in VERBS])
def test_each_verb_help(verb, capsys) -> None:
    with pytest.raises(SystemExit) as info:
        main([verb, "--help"])
    assert info.value.code == 0
    out = capsys.readouterr().out
    assert "examples:" in out and f"edgevlp {verb}" in out


def test_top_level_help_and_version() -> None:
    res = _edgevlp("--help")
    assert res.returncode == 0 and "compress" in res.stdout and "zoo" in res.stdout
    res = _edgevlp("--version")
    assert res.returncode == 0 and res.stdout.startswith("edgevlp ")


def test_help_does_not_import_torch() -> None:
    code = ("import sys\nfrom edgevlp.cli import main\ntry:\n    main(['--help'])\n"
            "except SystemExit:\n    pass\n"
            "for verb in ('info', 'export', 'compress'):\n"
            "    try:\n        main([verb, '--help'])\n    except SystemExit:\n        pass\n"
            "print('LOADED', sorted(m for m in ('torch', 'transformers', 'onnx') if m in sys.modules))")
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=ENV)
    assert res.returncode == 0, res.stderr
    assert "LOADED []" in res.stdout


def test_usage_errors_exit_2() -> None:
    assert _edgevlp().returncode == 2
    res = _edgevlp("frobnicate")
    assert res.returncode == 2 and "invalid choice" in res.stderr
    res = _edgevlp("export", "x", "-o", "y", "--target", "mars")
    assert res.returncode == 2 and "mars" in res.stderr


def _assert_one_line_error(res: subprocess.CompletedProcess[str], needle: str) -> None:
    assert res.returncode == 1, (res.returncode, res.stderr)
    assert "Traceback" not in res.stderr
    lines = [line for line in res.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, res.stderr
    assert needle in lines[0]


def test_info_errors(tmp_path) -> None:
    _assert_one_line_error(_edgevlp("info", str(tmp_path / "missing")), "no such model directory")
    _assert_one_line_error(_edgevlp("info", str(tmp_path)), "no config.json")
    unknown = tmp_path / "unknown"
    unknown.mkdir()
    (unknown / "config.json").write_text(json.dumps({"architectures": ["GPT2LMHeadModel"]}))
    res = _edgevlp("info", str(unknown))
    _assert_one_line_error(res, "GPT2LMHeadModel")
    assert "BlipForConditionalGeneration" in res.stderr
    corrupt = tmp_path / "corrupt"
    corrupt.mkdir()
    (corrupt / "config.json").write_text('{"architectures": ["BlipForConditionalGeneration"')
    _assert_one_line_error(_edgevlp("info", str(corrupt)), "not valid JSON")


def test_debug_shows_traceback(tmp_path) -> None:
    res = _edgevlp("--debug", "info", str(tmp_path))
    assert res.returncode == 1 and "Traceback" in res.stderr


def test_compress_needs_a_recipe() -> None:
    res = _edgevlp("compress", "demo-blip", "-o", "out")
    assert res.returncode == 2 and "--recipe" in res.stderr and "Traceback" not in res.stderr


@pytest.mark.parametrize("arch", ["BlipForConditionalGeneration", "OwlViTForObjectDetection",
                                  "Owlv2ForObjectDetection", "VisionEncoderDecoderModel"])
def test_info_counts_match_torch(arch, tiny_model_dir, capsys) -> None:
    from edgevlp.models import load_model

    model_dir = tiny_model_dir(arch)
    assert main(["info", str(model_dir), "--json"]) == 0
    summary = json.loads(capsys.readouterr().out)
    model = load_model(model_dir).model
    assert summary["parameters"] == sum(p.numel() for p in model.parameters())
    assert sum(p["parameters"] for p in summary["parts"]) == summary["parameters"]
    assert summary["architecture"] == arch
    assert main(["info", str(model_dir)]) == 0
    text = capsys.readouterr().out
    assert f"{summary['parameters']:,}" in text and "tokenizer" in text
