"""``edgevlp bench``: accuracy x latency per backend and precision, against the references users would
pick instead (transformers PyTorch eager FP32; optimum's ORTModel where it supports the model).

Example:
    >>> from edgevlp.bench import run_bench
    >>> report = run_bench(["demo-blip"], data="shapes:val", n=50, output="out/bench")   # doctest: +SKIP
"""

from __future__ import annotations

from edgevlp.bench.rows import BenchRow
from edgevlp.bench.runner import run_bench

__all__ = ["BenchRow", "run_bench"]
