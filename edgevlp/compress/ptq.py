"""The ``quant`` stage: FP32 ONNX graphs -> INT8 graphs, calibrated on real frames, with FP32 fallback.

Flow per graph: export the current model's graphs to FP32 ONNX (the exporter's own pieces), build
calibration feeds from real frames (:mod:`edgevlp.compress.calib`), quantise with the recipe's
backend (a strategy class from :data:`BACKENDS`), keep nodes matching ``exclude`` (or not matching
``include``) in FP32, run the mixed-precision fallback when the recipe asks for it, and measure the
result against FP32 on held-out frames plus real photos: per-output cosine and max |diff|, file
sizes and onnxruntime/OpenVINO latency on this machine.
"""

from __future__ import annotations

import fnmatch
import time
from pathlib import Path
from typing import Any

import numpy as np
import onnx

from edgevlp._lazy import import_object
from edgevlp.compress.calib import build_feeds, load_frames, real_photos
from edgevlp.compress.fallback import node_groups, select_fallback
from edgevlp.compress.measure import compare, latency_ms, min_cosine, run_all
from edgevlp.compress.recipe import QuantConfig
from edgevlp.compress.state import CompressState
from edgevlp.errors import InputError, NotAvailableYet

__all__ = ["BACKENDS", "apply", "selected"]

#: recipe backend -> "module:Class" (a strategy: quantize / runner / output_names / suffix).
BACKENDS: dict[str, str] = {
    "onnxruntime": "edgevlp.compress._ort:OnnxRuntimeBackend",
    "openvino": "edgevlp.compress._openvino:OpenVINOBackend",
}
LATENCY_THREADS = 1


def selected(cfg: QuantConfig, role: str, node: onnx.NodeProto) -> bool:
    """Is ``node`` of graph ``role`` to be quantised (some include pattern matches its name, op type or
    role, and no exclude pattern does)?"""
    keys = (node.name, node.op_type, role)
    hit = lambda pats: any(fnmatch.fnmatchcase(k, p) for p in pats for k in keys)  # noqa: E731
    return hit(cfg.include) and not hit(cfg.exclude)


def _size(path: Path) -> int:
    extra = path.with_suffix(".bin") if path.suffix == ".xml" else None
    return path.stat().st_size + (extra.stat().st_size if extra and extra.is_file() else 0)


def _weight_bytes(path: Path) -> int:
    if path.suffix != ".onnx":
        return 0
    from onnx import numpy_helper

    return sum(numpy_helper.to_array(t).nbytes for t in onnx.load(str(path)).graph.initializer)


def nonfinite_tensors(path: Path, feeds: list) -> set[str]:
    """Intermediate tensors of ``path`` holding inf or nan on ``feeds`` (e.g. scores + an additive
    -inf attention mask): they have no int8 range, so their producers and consumers stay FP32."""
    import onnxruntime as ort

    model = onnx.load(str(path))
    known = {o.name for o in model.graph.output}
    for node in model.graph.node:
        model.graph.output.extend(onnx.ValueInfoProto(name=o) for o in node.output if o and o not in known)
    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    sess = ort.InferenceSession(model.SerializeToString(), opts, providers=["CPUExecutionProvider"])
    names = [o.name for o in sess.get_outputs()]
    bad: set[str] = set()
    for feed in feeds:
        for name, value in zip(names, sess.run(None, feed)):
            if isinstance(value, np.ndarray) and value.dtype.kind == "f" and not np.isfinite(value).all():
                bad.add(name)
    return bad


def apply(state: CompressState, cfg: QuantConfig) -> dict[str, Any]:
    """Quantise every graph of ``state.adapter`` as ``cfg`` says; returns the stage's report."""
    if cfg.method == "qat":
        from edgevlp.compress.qat import apply as qat

        return qat(state, cfg)
    if cfg.fallback is not None and cfg.fallback.min_cosine is None:
        raise NotAvailableYet("a fallback on max_metric_drop alone is not available yet (task-metric "
                              "fallback lands with issue #8); set fallback.min_cosine")
    backend = import_object(BACKENDS[cfg.backend])()
    graphs = state.fp32_graphs()
    source = state.calib_override or cfg.calibration.source
    n = cfg.calibration.size
    n_eval = max(2, min(16, n // 4))
    size = max(64, state.adapter.preprocess_spec().height)
    t0 = time.perf_counter()
    frames = load_frames(source, n + n_eval, size=size)
    if not frames:
        raise InputError(f"calibration source {source!r} gave no frames")
    calib_frames, held = frames[:n], frames[n:]
    overlap = not held
    if overlap:  # a small folder: evaluate on the last calibration frames (reported)
        held = calib_frames[-n_eval:]
    calib = build_feeds(state.adapter, graphs, calib_frames)
    evals = build_feeds(state.adapter, graphs, held + real_photos())
    state.log(f"calibration: {len(calib_frames)} frames from {source}, held-out {len(held)} + 3 photos "
                f"({time.perf_counter() - t0:.1f}s)")
    cache = state.work / "calib"
    cache.mkdir(exist_ok=True)
    report: dict[str, Any] = {
        "method": cfg.method, "backend": cfg.backend,
        "calibration": {"source": source, "method": cfg.calibration.method, "frames": len(calib_frames),
                        "samples": {r: len(f) for r, f in calib.items()},
                        "held_out_frames": len(held), "held_out_overlaps_calibration": overlap,
                        "real_photos": ["astronaut", "coffee", "chelsea"]},
        "graphs": {},
    }
    for role, src in graphs.items():
        report["graphs"][role] = _quantize_graph(state, backend, cfg, role, src, calib[role], evals[role],
                                                 cache / f"{role}.json")
    return report


def _quantize_graph(state: CompressState, backend: Any, cfg: QuantConfig, role: str, src: Path,
                    calib: list, evals: list, cache: Path) -> dict[str, Any]:
    model = onnx.load(str(src))
    skip = {n.name for n in model.graph.node if not selected(cfg, role, n)}
    compute = [n for n in model.graph.node if n.op_type in ("MatMul", "Gemm", "Conv")]
    if compute and all(n.name in skip for n in compute):
        state.log(f"{role}: kept in FP32 (the recipe's include/exclude select none of its layers)")
        return {"quantized": False, "reason": "include/exclude patterns select none of its layers"}
    nonfinite = frozenset(nonfinite_tensors(src, calib[:2] + calib[-2:]))
    mask_nodes = {n.name for n in model.graph.node if nonfinite & {*n.input, *n.output}}
    skip |= mask_nodes
    names = backend.output_names(src)
    ref = run_all(backend.runner(src), evals)
    t0 = time.perf_counter()
    trial = state.work / f"{role}.trial{backend.suffix}"

    rel = cfg.fallback.max_rel_diff if cfg.fallback is not None else None

    def score(extra: set[str]) -> float:
        backend.quantize(role, src, trial, cfg, calib, skip | extra, cache, nonfinite)
        result = compare(ref, run_all(backend.runner(trial), evals), names)
        too_far = rel is not None and any(o["max_abs_diff"] > rel * o["max_abs_fp32"] for o in result.values())
        return min_cosine(result) - (1.0 if too_far else 0.0)  # beyond max_rel_diff: never within tolerance

    fallback = None
    if cfg.fallback is not None and cfg.fallback.min_cosine is not None:
        groups = {g: nodes for g, nodes in node_groups(model).items() if not set(nodes) <= skip}
        fallback = select_fallback(groups, score, min_score=cfg.fallback.min_cosine,
                                   max_layers=cfg.fallback.max_layers)
        kept = ", ".join(k["group"] for k in fallback.kept) or "none"
        state.log(f"{role}: fallback all-INT8 cosine {fallback.score_quantized:.4f} -> "
                    f"{fallback.score_final:.4f} (tolerance {cfg.fallback.min_cosine}), FP32: {kept}")
    dst = state.out / f"{role}{backend.suffix}"
    details = backend.quantize(role, src, dst, cfg, calib, skip | (fallback.excluded_nodes if fallback else set()),
                               cache, nonfinite)
    seconds = time.perf_counter() - t0
    quant_run = backend.runner(dst, LATENCY_THREADS)
    outputs = compare(ref, run_all(quant_run, evals), names)
    feed = evals[len(evals) // 2]
    before = latency_ms(backend.runner(src, LATENCY_THREADS), feed)
    after = latency_ms(quant_run, feed)
    qmodel = onnx.load(str(dst)) if dst.suffix == ".onnx" else None
    ops = sorted({n.op_type for n in qmodel.graph.node} & {"QuantizeLinear", "DequantizeLinear", "MatMulInteger",
                 "ConvInteger", "DynamicQuantizeLinear", "MatMulNBits", "QLinearMatMul", "QLinearConv"}) \
        if qmodel is not None else ["FakeQuantize (OpenVINO IR)"]
    state.quantized[role] = dst.name
    state.log(f"{role}: worst cosine {min_cosine(outputs):.4f}, {_size(src) / 1e6:.2f} -> "
                f"{_size(dst) / 1e6:.2f} MB, {before:.2f} -> {after:.2f} ms")
    return {
        "quantized": True, "file": dst.name, **details, "integer_ops": ops,
        "nodes_excluded_by_recipe": len(skip - mask_nodes),
        "nodes_on_nonfinite_tensors_fp32": sorted(mask_nodes), "seconds": round(seconds, 2),
        "outputs": outputs, "min_cosine": min_cosine(outputs),
        "bytes_fp32": _size(src), "bytes_int8": _size(dst), "size_ratio": round(_size(src) / _size(dst), 3),
        "weight_bytes_fp32": _weight_bytes(src), "weight_bytes_int8": _weight_bytes(dst),
        "latency_ms_fp32": round(before, 3), "latency_ms_int8": round(after, 3),
        "speedup": round(before / after, 3) if after > 0 else None,
        "latency_note": f"{backend.name}, {LATENCY_THREADS} thread, median of 10, batch 1, one "
                        "held-out feed" + (" (a mid-caption decoder step)" if "input_ids" in feed and
                                           "encoder_hidden_states" in feed else ""),
        "fallback": fallback.to_dict() if fallback else None,
    }
