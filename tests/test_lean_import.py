"""The deployable half never imports torch or transformers (checked in a fresh interpreter)."""

from __future__ import annotations

import subprocess
import sys

import pytest

HEAVY = ("torch", "transformers", "onnx", "optimum", "nncf")


@pytest.mark.parametrize("module", ["edgevlp", "edgevlp.runtime", "edgevlp.errors", "edgevlp.spec",
                                    "edgevlp.cli", "edgevlp.models", "edgevlp.app",
                                    "edgevlp.serve", "edgevlp.bench.serve"])
def test_import_is_lean(module: str) -> None:
    code = (f"import sys, {module}\n"
            f"print(sorted(m for m in {HEAVY!r} if m in sys.modules))")
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert res.stdout.strip() == "[]", f"{module} pulled in {res.stdout.strip()}"
