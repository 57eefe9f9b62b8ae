"""Activation ranges of one ONNX graph in one pass over its calibration feeds.

Every fallback candidate and every INT8 scheme of a graph reuses the ranges collected here, so a graph
is calibrated once, whatever the search does afterwards.

The statistics are computed inside the graph by onnxruntime (C++), not in numpy: the graph is
augmented, for every tensor to calibrate, with ``ReduceMin`` / ``ReduceMax`` (``minmax``) or two
``TopK`` nodes (``percentile``), and the augmented graph returns those few numbers instead of the
tensors themselves (a tensor whose extremes are inf, an additive attention mask, is reported as
non-finite) (a ViT-B at 384 px has ~200 M activation values per image in its MatMul inputs alone;
copying them out and histogramming them in numpy is what made onnxruntime's own percentile
calibrator take ~8 s per image here).

Percentile semantics follow onnxruntime's asymmetric percentile calibrator: ``percentile = 99.999``
cuts ``(100 - 99.999) / 2`` % off each tail of the values of all feeds together. Per feed the graph
returns the ``4 x`` share of that tail (``TopK`` with ``k = ceil(4 * frac * n)``); the range is the
``round(frac * N)``-th largest (smallest) of the union, exact unless one feed holds more than four times
its share of the whole tail (``k`` is fixed per tensor from its size on the first and last feed, in a
probe run that returns only sizes). ``entropy`` needs histograms: it stays onnxruntime's calibrator,
restricted to the same tensors.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

__all__ = ["Ranges", "activation_tensors", "collect_ranges", "TAIL_OVERSAMPLE"]

Feeds = list[dict[str, np.ndarray]]
#: per feed, TopK keeps this many times the feed's share of the tail (see the module docstring).
TAIL_OVERSAMPLE = 4
_FLOAT = TensorProto.FLOAT


@dataclass
class Ranges:
    """Per-tensor ``(lowest, highest)`` of one graph, and the tensors holding inf/NaN on some feed."""

    method: str
    low: dict[str, float]
    high: dict[str, float]
    nonfinite: frozenset[str] = frozenset()
    samples: int = 0
    seconds: float = 0.0
    notes: dict[str, Any] = field(default_factory=dict)

    def finite(self) -> dict[str, tuple[float, float]]:
        """The usable ranges (tensors with inf/NaN left out: they stay FP32)."""
        return {k: (self.low[k], self.high[k]) for k in self.low if k not in self.nonfinite}


def activation_tensors(model: onnx.ModelProto, op_types: Iterable[str]) -> list[str]:
    """Float activation tensors read by the nodes of ``op_types`` (initializers and constants left out),
    in graph order: what static INT8 of those nodes needs ranges for.

    Example:
        >>> g = helper.make_graph([helper.make_node("MatMul", ["x", "w"], ["y"], name="mm")], "g",
        ...     [helper.make_tensor_value_info("x", _FLOAT, [1, 2])], [helper.make_tensor_value_info("y", _FLOAT, [1, 2])],
        ...     [numpy_helper.from_array(np.eye(2, dtype=np.float32), "w")])
        >>> activation_tensors(helper.make_model(g), ["MatMul"])
        ['x']
    """
    wanted = set(op_types)
    constant = {i.name for i in model.graph.initializer}
    constant |= {o for n in model.graph.node if n.op_type == "Constant" for o in n.output}
    inferred = onnx.shape_inference.infer_shapes(model)
    infos = [*inferred.graph.value_info, *model.graph.input, *model.graph.output]
    floats = {v.name for v in infos if v.type.tensor_type.elem_type == _FLOAT}
    out: dict[str, None] = {}
    for node in model.graph.node:
        if node.op_type in wanted:
            for name in node.input:
                if name and name not in constant and name in floats:
                    out.setdefault(name)
    return list(out)


def _probe_sizes(model: onnx.ModelProto, tensors: list[str], feeds: Feeds, opts: Any) -> dict[str, int]:
    """The largest element count of each tensor on ``feeds`` (a graph returning only ``Size`` of each)."""
    import onnxruntime as ort

    probe = onnx.ModelProto()
    probe.CopyFrom(model)
    del probe.graph.output[:]
    for i, t in enumerate(tensors):
        probe.graph.node.append(helper.make_node("Size", [t], [f"cal{i}.size"]))
        probe.graph.output.append(helper.make_tensor_value_info(f"cal{i}.size", TensorProto.INT64, None))
    sess = ort.InferenceSession(probe.SerializeToString(), opts, providers=["CPUExecutionProvider"])
    wanted = {i.name for i in sess.get_inputs()}
    sizes = dict.fromkeys(tensors, 0)
    for feed in feeds:
        for t, n in zip(tensors, sess.run(None, {k: v for k, v in feed.items() if k in wanted})):
            sizes[t] = max(sizes[t], int(n))
    return sizes


def _augment(model: onnx.ModelProto, tensors: list[str], method: str, frac: float,
             sizes: dict[str, int] | None = None) -> onnx.ModelProto:
    """``model`` returning, per tensor, its count + 1 and its extremes (``minmax``) or its tails (TopK).

    TopK's ``k`` is a constant per tensor, ``ceil(4 * frac * n)`` for the largest size ``n`` the tensor
    had on the first and last feed (``sizes``), capped at the run-time size: a few nodes per tensor (a
    decoder step calibrates ~170 small tensors, where per-node overhead is what costs); where ``k`` is 1,
    ``ReduceMin`` / ``ReduceMax``.
    """
    sizes = sizes or {}
    aug = onnx.ModelProto()
    aug.CopyFrom(model)
    g = aug.graph
    del g.output[:]
    const = {"cal.flat": np.array([-1], np.int64), "cal.zero": np.zeros(1, np.float32)}
    g.initializer.extend(numpy_helper.from_array(v, k) for k, v in const.items())
    for i, t in enumerate(tensors):
        p = f"cal{i}."
        # One appended 0 keeps every reduction defined on empty tensors (an empty KV cache); ranges
        # always contain 0 anyway (onnxruntime widens them to it).
        nodes = [helper.make_node("Reshape", [t, "cal.flat"], [p + "r"]),
                 helper.make_node("Concat", [p + "r", "cal.zero"], [p + "f"], axis=0),
                 helper.make_node("Size", [p + "f"], [p + "n"])]
        k = max(1, math.ceil(TAIL_OVERSAMPLE * frac * sizes.get(t, 1))) if method == "percentile" else 1
        if k == 1:
            nodes += [helper.make_node("ReduceMin", [p + "f"], [p + "lo"], keepdims=0),
                      helper.make_node("ReduceMax", [p + "f"], [p + "hi"], keepdims=0)]
        else:
            g.initializer.append(numpy_helper.from_array(np.array(k, np.int64), p + "kmax"))
            nodes += [helper.make_node("Min", [p + "n", p + "kmax"], [p + "k0"]),
                      helper.make_node("Reshape", [p + "k0", "cal.one"], [p + "k"]),
                      helper.make_node("TopK", [p + "f", p + "k"], [p + "hi", p + "hi_i"], largest=1, sorted=0),
                      helper.make_node("TopK", [p + "f", p + "k"], [p + "lo", p + "lo_i"], largest=0, sorted=0)]
        g.node.extend(nodes)
        g.output.extend(helper.make_tensor_value_info(o, TensorProto.INT64 if o.endswith(".n") else _FLOAT, None)
                        for o in (p + "n", p + "lo", p + "hi"))
    if any(n.op_type == "TopK" for n in g.node[len(model.graph.node):]):
        g.initializer.append(numpy_helper.from_array(np.array([1], np.int64), "cal.one"))
    return aug


def collect_ranges(src: Path, feeds: Feeds, tensors: list[str], *, method: str = "minmax",
                   percentile: float = 99.999, threads: int = 0,
                   progress: Callable[[int], None] | None = None) -> Ranges:
    """Ranges of ``tensors`` of the graph ``src`` over ``feeds``, in one pass (one run per feed).

    ``method``: ``minmax`` or ``percentile``; ``progress(i)`` is called after feed ``i``.

    Example:
        >>> import tempfile
        >>> g = helper.make_graph([helper.make_node("Relu", ["x"], ["y"])], "g",
        ...     [helper.make_tensor_value_info("x", _FLOAT, [None])], [helper.make_tensor_value_info("y", _FLOAT, [None])])
        >>> path = Path(tempfile.mkdtemp()) / "g.onnx"
        >>> onnx.save(helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)]), path)
        >>> r = collect_ranges(path, [{"x": np.array([-2.0, 3.0], np.float32)}], ["y"])
        >>> r.low["y"], r.high["y"]
        (0.0, 3.0)
    """
    import onnxruntime as ort

    if method not in ("minmax", "percentile"):
        raise ValueError(f"collect_ranges: method {method!r} is not minmax or percentile")
    if not feeds:
        raise ValueError(f"no calibration samples for {src.name}")
    t0 = time.perf_counter()
    frac = (100.0 - percentile) / 200.0
    model = onnx.load(str(src))
    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    if threads:
        opts.intra_op_num_threads = threads
    sizes = _probe_sizes(model, tensors, [feeds[0], feeds[-1]], opts) if method == "percentile" else None
    aug = _augment(model, tensors, method, frac, sizes)
    sess = ort.InferenceSession(aug.SerializeToString(), opts, providers=["CPUExecutionProvider"])
    del aug
    names = [o.name for o in sess.get_outputs()]
    wanted = {i.name for i in sess.get_inputs()}
    if progress is not None:
        progress(0)  # set up: the steps start
    count = dict.fromkeys(tensors, 0)
    bad: set[str] = set()
    low_parts: dict[str, list[np.ndarray]] = {t: [] for t in tensors}
    high_parts: dict[str, list[np.ndarray]] = {t: [] for t in tensors}
    for i, feed in enumerate(feeds):
        out = dict(zip(names, sess.run(None, {k: v for k, v in feed.items() if k in wanted})))
        for j, t in enumerate(tensors):
            p = f"cal{j}."
            n = int(out[p + "n"]) - 1  # the appended 0
            if n == 0:
                continue
            lo, hi = np.atleast_1d(out[p + "lo"]), np.atleast_1d(out[p + "hi"])
            if not (np.isfinite(lo).all() and np.isfinite(hi).all()):
                bad.add(t)
            count[t] += n
            low_parts[t].append(lo)
            high_parts[t].append(hi)
        if progress is not None:
            progress(i + 1)
    low: dict[str, float] = {}
    high: dict[str, float] = {}
    for t in tensors:
        if not count[t]:
            continue
        lo, hi = np.concatenate(low_parts[t]), np.concatenate(high_parts[t])
        if method == "minmax":
            low[t], high[t] = float(lo.min()), float(hi.max())
        else:
            k = min(max(1, round(frac * count[t])), lo.size)
            low[t] = float(np.partition(lo, k - 1)[k - 1])
            high[t] = float(np.partition(hi, hi.size - k)[hi.size - k])
        low[t], high[t] = min(low[t], high[t]), max(low[t], high[t])
    return Ranges(method=method, low=low, high=high, nonfinite=frozenset(bad), samples=len(feeds),
                  seconds=time.perf_counter() - t0,
                  notes={"tensors": len(tensors), "how": "one onnxruntime pass, statistics computed in-graph"})
