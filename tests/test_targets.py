"""The targets table (edgevlp/targets.py) is the one place target names live; every reader agrees with it."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from edgevlp._lazy import import_object
from edgevlp.bundle import manifest_schema
from edgevlp.errors import InputError
from edgevlp.export.profiles import check_profile_target, load_profile, profiles_dir
from edgevlp.runtime.backends import BACKENDS, TARGET_PREFERENCES
from edgevlp.targets import PRECISIONS, TARGETS, Target, devices, get_target, host_targets

ROWS = list(TARGETS.values())


def _export_parser_action(dest: str):
    from edgevlp.cli import build_parser

    sub = next(a for a in build_parser()._actions if a.dest == "verb")
    return next(a for a in sub.choices["export"]._actions if a.dest == dest)


def test_the_shipped_table() -> None:
    assert list(TARGETS) == ["cpu", "openvino", "jetson", "laptop-gpu"]
    assert {t.name: t.backends for t in ROWS} == {
        "cpu": ("onnxruntime",), "openvino": ("openvino",), "jetson": ("tensorrt", "onnxruntime"),
        "laptop-gpu": ("tensorrt", "onnxruntime")}
    assert {t.name: (t.profile, t.precision) for t in ROWS} == {
        "cpu": ("cpu", "fp32"), "openvino": ("cpu", "fp32"), "jetson": ("jetson-orin-nano", "fp16"),
        "laptop-gpu": ("laptop-gpu", "fp16")}


def test_cli_choices_come_from_the_table() -> None:
    from edgevlp.serve.leaves import LEAVES
    from edgevlp.targets import REPOSITORY_TARGETS

    assert _export_parser_action("target").choices == [*TARGETS, *REPOSITORY_TARGETS]
    assert _export_parser_action("leaf").choices == list(LEAVES)
    assert tuple(_export_parser_action("precision").choices) == PRECISIONS


def test_runtime_backend_order_comes_from_the_table() -> None:
    assert TARGET_PREFERENCES == {t.name: t.backends for t in ROWS}
    assert all(b in BACKENDS for t in ROWS for b in t.backends)


def test_exporter_writers_come_from_the_table() -> None:
    from edgevlp.export.exporter import WRITERS

    assert WRITERS == {t.name: t.writer for t in ROWS}
    for t in ROWS:
        assert callable(import_object(t.writer)), t.writer


def test_bench_exports_per_backend_to_the_cpu_targets() -> None:
    from edgevlp.bench.runner import _TARGET

    assert _TARGET == host_targets() == {"onnxruntime": "cpu", "openvino": "openvino"}


def test_schema_enums_are_filled_from_the_table_not_typed_in_the_file() -> None:
    schema = manifest_schema()
    assert schema["properties"]["target"]["enum"] == list(TARGETS)
    assert schema["properties"]["precision"]["enum"] == list(PRECISIONS)
    graph = schema["properties"]["graphs"]["additionalProperties"]["properties"]
    formats = {f for t in ROWS for f in t.formats}
    assert set(graph["format"]["enum"]) == formats == {"onnx", "openvino", "tensorrt"}
    raw = json.loads((Path(__file__).parents[1] / "edgevlp" / "bundle.schema.json").read_text())
    assert "enum" not in raw["properties"]["target"] and "enum" not in raw["properties"]["precision"]


@pytest.mark.parametrize("target", list(TARGETS))
def test_default_profile_fits_its_target(target: str) -> None:
    row = get_target(target)
    profile = load_profile(row.profile)
    assert profile.target == row.device
    assert profile.precision == row.precision  # the shipped profiles leave precision to the table
    check_profile_target(profile, target)


def test_every_shipped_profile_is_for_a_known_device() -> None:
    for path in profiles_dir().glob("*.toml"):
        assert load_profile(path).target in devices(), path


def test_profile_of_another_device_is_refused() -> None:
    with pytest.raises(InputError, match="pick a profile for openvino .e.g. cpu"):
        check_profile_target(load_profile("jetson-orin-nano"), "openvino")


def test_profile_precision_overrides_the_default(tmp_path) -> None:
    text = (profiles_dir() / "cpu.toml").read_text()
    text = text.replace('name = "cpu"', 'name = "cpu-int8"\nprecision = "int8"')
    (tmp_path / "cpu-int8.toml").write_text(text)
    assert load_profile(tmp_path / "cpu-int8.toml").precision == "int8"


def test_unknown_target_lists_the_table() -> None:
    with pytest.raises(InputError, match="unknown target 'mars'; choose one of cpu, openvino, jetson, "
                                         "laptop-gpu"):
        get_target("mars")


def test_bad_rows_are_refused() -> None:
    with pytest.raises(ValueError, match="precision"):
        Target("x", "m:f", "cpu", ("onnx",), "int2", ("onnxruntime",), "cpu")
    with pytest.raises(ValueError, match="precision"):  # int4 graphs come from `edgevlp compress` only
        Target("x", "m:f", "cpu", ("onnx",), "int4", ("onnxruntime",), "cpu")
    with pytest.raises(ValueError, match="module:function"):
        Target("x", "m.f", "cpu", ("onnx",), "fp32", ("onnxruntime",), "cpu")


def test_a_new_target_is_one_row() -> None:
    """A row added to the table (here at run time, in a fresh interpreter) reaches every reader."""
    code = """
import json
from edgevlp.targets import TARGETS, Target
TARGETS["triton"] = Target("triton", "edgevlp.export.onnx_target:write", "cpu", ("onnx",), "fp32",
                           ("onnxruntime",), "cpu")
from edgevlp.cli import build_parser
from edgevlp.runtime.backends import TARGET_PREFERENCES
from edgevlp.bundle import manifest_schema
from edgevlp.export.exporter import WRITERS
from edgevlp.export.profiles import check_profile_target, load_profile
sub = next(a for a in build_parser()._actions if a.dest == "verb")
choices = next(a for a in sub.choices["export"]._actions if a.dest == "target").choices
check_profile_target(load_profile("cpu"), "triton")
print(json.dumps([choices, TARGET_PREFERENCES["triton"], manifest_schema()["properties"]["target"]["enum"],
                  WRITERS["triton"]]))
"""
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert res.returncode == 0, res.stderr
    choices, backends, enum, writer = json.loads(res.stdout.strip().splitlines()[-1])
    assert "triton" in choices and "triton" in enum
    assert backends == ["onnxruntime"] and writer == "edgevlp.export.onnx_target:write"


def test_targets_module_is_light() -> None:
    code = ("import sys, edgevlp.targets\n"
            "print(sorted(m for m in ('numpy', 'torch', 'onnx') if m in sys.modules))")
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert res.stdout.strip() == "[]"
