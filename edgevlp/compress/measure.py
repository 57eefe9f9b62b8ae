"""Output agreement (cosine, max |diff|) and latency of a graph pair on the same feeds."""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from typing import Any

import numpy as np

__all__ = ["run_all", "compare", "min_cosine", "latency_ms"]

Runner = Callable[[dict[str, np.ndarray]], list[np.ndarray]]


def run_all(run: Runner, feeds: list[dict[str, np.ndarray]]) -> list[list[np.ndarray]]:
    """Outputs of ``run`` for every feed."""
    return [list(run(f)) for f in feeds]


def compare(ref: list[list[np.ndarray]], got: list[list[np.ndarray]], names: list[str]) -> dict[str, Any]:
    """Per float output: cosine similarity of all feeds' values flattened together, and max |diff|.

    Example:
        >>> a = [[np.array([1.0, 2.0])]]
        >>> compare(a, [[np.array([1.0, 2.5])]], ["y"])["y"]["max_abs_diff"]
        0.5
    """
    out: dict[str, Any] = {}
    for i, name in enumerate(names):
        r = np.concatenate([np.asarray(o[i], np.float64).ravel() for o in ref])
        g = np.concatenate([np.asarray(o[i], np.float64).ravel() for o in got])
        if not np.issubdtype(np.asarray(ref[0][i]).dtype, np.floating) or r.size == 0:
            continue
        denom = float(np.linalg.norm(r) * np.linalg.norm(g))
        cos = float(r @ g / denom) if denom > 0 else float(np.array_equal(r, g))
        out[name] = {"cosine": round(cos, 6), "max_abs_diff": float(np.abs(r - g).max()),
                     "max_abs_fp32": float(np.abs(r).max())}
    return out


def min_cosine(comparison: dict[str, Any]) -> float:
    """The worst cosine over a :func:`compare` result (1.0 when it holds no float output)."""
    return min((v["cosine"] for v in comparison.values()), default=1.0)


def latency_ms(run: Runner, feed: dict[str, np.ndarray], repeats: int = 10, warmup: int = 2,
               budget_s: float | None = None) -> float:
    """Median wall time of ``run(feed)`` in milliseconds; with ``budget_s``, fewer repeats (at least 3)
    once the timed runs have taken that long (a ViT-B graph takes ~1 s a run on one core)."""
    for _ in range(warmup):
        run(feed)
    times: list[float] = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        run(feed)
        times.append((time.perf_counter() - t0) * 1e3)
        if budget_s is not None and len(times) >= 3 and sum(times) / 1e3 >= budget_s:
            break
    return statistics.median(times)
