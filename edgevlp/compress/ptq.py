"""The ``quant`` stage: FP32 ONNX graphs -> INT8 graphs, calibrated on real frames, with FP32 fallback.

Generic over a model's graphs (role -> FP32 ONNX file -> feeds from :func:`edgevlp.compress.calib.build_feeds`);
nothing here knows a graph's input names. Per graph, each step with a progress line and an ETA:

1. **reference**: FP32 outputs on the held-out feeds (frames not used for calibration + 3 real photos);
2. **calibration**: activation ranges collected once, in one pass over the calibration feeds
   (:meth:`~edgevlp.compress._ort.OnnxRuntimeBackend.calibrate`), reused by every scheme and every
   fallback candidate;
3. **quantisation**: each candidate scheme (the recipe's ``method``, or with ``method = "auto"`` static
   QDQ, dynamic and weight-only) quantised all-INT8, scored against FP32 on a search subset of the
   held-out feeds (as many as take ~4 s in FP32) and timed on this CPU; the fastest within the
   tolerance is kept;
4. **fallback search** (:mod:`edgevlp.compress.fallback`) when none is within it: candidates derived
   from the all-INT8 graph, ordered by the noise each layer group adds;
5. **parity**: the result against FP32 on every held-out feed (per-output cosine, max |diff|), file
   sizes and single-thread latency on this machine.

Nodes matching ``exclude`` (or not ``include``), and the readers of tensors that hold inf/NaN (additive
attention masks), stay FP32.
"""

from __future__ import annotations

import dataclasses
import fnmatch
import shutil
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import onnx

from edgevlp._lazy import import_object
from edgevlp.compress._photos import resolve_source
from edgevlp.compress.calib import Feeds, Frame, build_feeds, load_frames, real_photos
from edgevlp.compress.fallback import COMPUTE_OPS, evaluations_bound, node_groups, select_fallback
from edgevlp.compress.measure import compare, latency_ms, min_cosine
from edgevlp.compress.recipe import QuantConfig
from edgevlp.compress.state import CompressState
from edgevlp.errors import InputError, NotAvailableYet

__all__ = ["BACKENDS", "apply", "selected", "LATENCY_THREADS"]

#: recipe backend -> "module:Class" (a strategy: calibrate / quantize / derive / attribute / runner).
BACKENDS: dict[str, str] = {
    "onnxruntime": "edgevlp.compress._ort:OnnxRuntimeBackend",
    "openvino": "edgevlp.compress._openvino:OpenVINOBackend",
}
LATENCY_THREADS = 1
#: a search evaluation runs on as many held-out feeds as take about this long in FP32 (at least 4).
SEARCH_BUDGET_S = 4.0
#: each latency figure stops repeating (after 3 runs) once its runs took this long.
LATENCY_BUDGET_S = 3.0


def selected(cfg: QuantConfig, role: str, node: onnx.NodeProto) -> bool:
    """Is ``node`` of graph ``role`` to be quantised (some include pattern matches its name, op type or
    role, and no exclude pattern does)?"""
    keys = (node.name, node.op_type, role)
    hit = lambda pats: any(fnmatch.fnmatchcase(k, p) for p in pats for k in keys)  # noqa: E731
    return hit(cfg.include) and not hit(cfg.exclude)


def _size(path: Path) -> int:
    extra = path.with_suffix(".bin") if path.suffix == ".xml" else None
    return path.stat().st_size + (extra.stat().st_size if extra and extra.is_file() else 0)


def _copy(src: Path, dst: Path) -> None:
    shutil.copyfile(src, dst)
    if src.suffix == ".xml":
        shutil.copyfile(src.with_suffix(".bin"), dst.with_suffix(".bin"))


def _weight_bytes(path: Path) -> int:
    if path.suffix != ".onnx":
        return 0
    from onnx import numpy_helper

    return sum(numpy_helper.to_array(t).nbytes for t in onnx.load(str(path)).graph.initializer)


def _feeds(state: CompressState, graphs: dict[str, Path], frames: list[Frame], label: str) -> dict[str, Feeds]:
    """:func:`build_feeds` over ``frames`` in a few chunks, so the (FP32 greedy decode) loop shows an ETA."""
    chunk = max(1, -(-len(frames) // 4)) if len(frames) >= 16 else max(1, len(frames))
    out: dict[str, Feeds] = {}
    with state.bar(label, len(frames), unit="frames") as bar:
        for i in range(0, len(frames), chunk):
            for role, feeds in build_feeds(state.adapter, graphs, frames[i:i + chunk]).items():
                out.setdefault(role, []).extend(feeds)
            bar.update(len(frames[i:i + chunk]))
    return out


def apply(state: CompressState, cfg: QuantConfig) -> dict[str, Any]:
    """Quantise every graph of ``state.adapter`` as ``cfg`` says; returns the stage's report.

    ``method = "qat"`` trains with fake quantisation first (:func:`edgevlp.compress.qat.train`), then
    quantises the trained weights by the ``ptq_static`` path."""
    if cfg.method == "qat":
        from edgevlp.compress.qat import train

        trained = train(state, cfg)
        report = _quantize(state, dataclasses.replace(cfg, method="ptq_static", train=None))
        return {**report, "method": "qat", "qat": trained}
    return _quantize(state, cfg)


def _quantize(state: CompressState, cfg: QuantConfig) -> dict[str, Any]:
    if cfg.fallback is not None and cfg.fallback.bound is None:
        raise NotAvailableYet("a fallback on max_metric_drop alone is not available yet (task-metric "
                              "fallback lands with issue #8); set fallback.min_cosine")
    backend = import_object(BACKENDS[cfg.backend])()
    graphs = state.fp32_graphs()
    asked = state.calib_override or cfg.calibration.source
    source = resolve_source(asked, shapes_model=state.shapes_model)
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
    calib = _feeds(state, graphs, calib_frames, "calibration frames")
    evals = _feeds(state, graphs, held + real_photos(), "held-out frames")
    state.log(f"calibration: {len(calib_frames)} frames from {source}"
              + (f" ({asked}: {'a model trained on shapes' if state.shapes_model else 'not a demo model'})"
                 if asked != source else "")
              + f", held-out {len(held)} + 3 photos ({time.perf_counter() - t0:.1f}s)")
    work = state.work / "quant"
    work.mkdir(exist_ok=True)
    report: dict[str, Any] = {
        "method": cfg.method, "backend": cfg.backend,
        "calibration": {"source": source, **({"source_asked": asked} if asked != source else {}),
                        "method": cfg.calibration.method, "frames": len(calib_frames),
                        "samples": {}, "samples_available": {r: len(f) for r, f in calib.items()},
                        "held_out_frames": len(held), "held_out_overlaps_calibration": overlap,
                        "real_photos": ["astronaut", "coffee", "chelsea"]},
        "graphs": {},
    }
    for role, src in graphs.items():
        feeds = _spread(calib[role], cfg.calibration.max_samples)
        report["calibration"]["samples"][role] = len(feeds)
        report["graphs"][role] = _quantize_graph(state, backend, cfg.for_role(role), role, src, feeds, evals[role],
                                                 work, graphs)
    return report


def _spread(feeds: Feeds, most: int) -> Feeds:
    """At most ``most`` of ``feeds``, evenly spaced (first and last kept)."""
    if len(feeds) <= most:
        return feeds
    return [feeds[int(i)] for i in np.linspace(0, len(feeds) - 1, most).round()]


def _search_indices(n: int, seconds_per_feed: float) -> list[int]:
    """Evenly spread indices of the held-out feeds one search evaluation runs on."""
    k = n if seconds_per_feed <= 0 else min(n, max(4, int(SEARCH_BUDGET_S / seconds_per_feed)))
    return sorted({int(i) for i in np.linspace(0, n - 1, k)}) if k < n else list(range(n))


def _untied(src: Path, work: Path) -> tuple[Path, int]:
    """``src``, or a copy whose tied LM head has its own weight (the quantiser skips a MatMul that reads
    the word embedding through a ``Transpose``: the biggest matrix of a decoder step stayed FP32)."""
    from edgevlp.export.optimize import untie_transposed_weights

    copy = work / f"{src.stem}.untied.onnx"
    shutil.copyfile(src, copy)
    count = untie_transposed_weights(copy)
    if not count:
        copy.unlink()
        return src, 0
    return copy, count



def _run_feeds(state: Any, label: str, run: Any, feeds: list[dict[str, Any]]) -> tuple[list[list[Any]], Any]:
    """Every feed through ``run`` under a progress bar: (outputs per feed, the finished bar)."""
    with state.bar(label, len(feeds), unit="feeds") as bar:
        out = []
        for feed in feeds:
            out.append(list(run(feed)))
            bar.update()
    return out, bar

def _quantize_graph(state: CompressState, backend: Any, cfg: QuantConfig, role: str, fp32: Path,
                    calib: Feeds, evals: Feeds, work: Path, graphs: dict[str, Path]) -> dict[str, Any]:
    src, untied = _untied(fp32, work)
    model = onnx.load(str(src), load_external_data=False)
    skip = {n.name for n in model.graph.node if not selected(cfg, role, n)}
    compute = [n for n in model.graph.node if n.op_type in COMPUTE_OPS]
    if not compute:
        state.log(f"{role}: kept in FP32 (no {'/'.join(sorted(COMPUTE_OPS))} layer to quantise)")
        return {"quantized": False, "reason": "no layer to quantise"}
    if all(n.name in skip for n in compute):
        state.log(f"{role}: kept in FP32 (the recipe's include/exclude select none of its layers)")
        return {"quantized": False, "reason": "include/exclude patterns select none of its layers"}
    t_start = time.perf_counter()
    names = backend.output_names(src)
    run_fp32 = backend.runner(src)
    ref, bar = _run_feeds(state, f"{role}: FP32 reference", run_fp32, evals)
    search = _search_indices(len(evals), bar.elapsed / len(evals))
    search_feeds = [evals[i] for i in search]
    schemes = cfg.candidate_schemes()
    ranges = None
    calibration: dict[str, Any] = {"passes": 0}
    if "ptq_static" in schemes:
        with state.bar(f"{role}: calibration ({cfg.calibration.method})", len(calib), unit="feeds") as bar:
            ranges = backend.calibrate(role, src, cfg, calib, lambda i: bar.update(done=i))
        calibration = {"passes": 1, "feeds": len(calib), "seconds": round(bar.elapsed, 2),
                       **({"tensors": ranges.notes.get("tensors"), "how": ranges.notes.get("how")} if ranges else
                          {"how": f"{backend.name} collects its statistics inside each quantisation"})}
    quantises_activations = bool({"ptq_static", "ptq_dynamic"} & set(schemes))
    nonfinite = ranges.nonfinite if ranges is not None else (
        backend.probe(src, cfg, calib) if quantises_activations else frozenset())
    mask_nodes = {n.name for n in model.graph.node if nonfinite & {*n.input, *n.output}}
    skip |= mask_nodes
    rel = cfg.fallback.max_rel_diff if cfg.fallback is not None else None

    def cosine(run: Callable[[dict[str, np.ndarray]], list[np.ndarray]]) -> float:
        result = compare([ref[i] for i in search], [list(run(f)) for f in search_feeds], names)
        too_far = rel is not None and any(o["max_abs_diff"] > rel * o["max_abs_fp32"] for o in result.values())
        return min_cosine(result) - (1.0 if too_far else 0.0)  # beyond max_rel_diff: never within tolerance

    score, metric = cosine, ("cosine", "min output cosine vs FP32 (held-out samples)")
    answers = _answer_judge(state, cfg, role, graphs, run_fp32, evals)
    if answers is not None:
        score, metric = answers

    feed_index = len(evals) // 2
    feed = evals[feed_index]

    def timed(source: Path | bytes) -> float:
        return latency_ms(backend.runner(source, LATENCY_THREADS), feed, warmup=1, budget_s=LATENCY_BUDGET_S)

    before = timed(fp32)
    trials: dict[str, dict[str, Any]] = {}
    with state.bar(f"{role}: quantisation", len(schemes), unit="schemes") as bar:
        for scheme in schemes:
            bar.update(0, note=f"{scheme} ...")
            path = work / f"{role}.{scheme}{backend.suffix}"
            t0 = time.perf_counter()
            details = backend.quantize(role, src, path, cfg, scheme, skip, ranges, work)
            seconds = time.perf_counter() - t0
            trials[scheme] = {"path": path, "details": details, "quantize_seconds": round(seconds, 2),
                              "score": score(backend.runner(path)), "latency_ms": timed(path), "bytes": _size(path)}
            bar.update(note=f"{scheme}: {metric[0]} {trials[scheme]['score']:.4f}, {trials[scheme]['latency_ms']:.1f} ms")
    bound = cfg.fallback.bound if cfg.fallback is not None else None
    within = [s for s in schemes if bound is None or trials[s]["score"] >= bound]
    if within:
        chosen = min(within, key=lambda s: trials[s]["latency_ms"])
    else:  # the fallback works on static QDQ (candidates derived without re-quantising) where it can
        chosen = "ptq_static" if "ptq_static" in schemes else max(schemes, key=lambda s: trials[s]["score"])
    dst = state.out / f"{role}{backend.suffix}"
    fallback = None
    if bound is not None:
        fallback = _fallback(state, backend, cfg, role, src, model, chosen, trials[chosen], skip, ranges, work,
                             score, search_feeds, metric)
        kept = ", ".join(k["group"] for k in fallback.kept) or "none"
        if fallback.evaluations > 1:
            state.log(f"{role}: {chosen} all-INT8 {metric[0]} {fallback.score_quantized:.4f} -> "
                      f"{fallback.score_final:.4f} (tolerance {bound}), FP32: {kept}")
    excluded = fallback.excluded_nodes if fallback else set()
    if excluded:
        derived = backend.derive(chosen, trials[chosen]["path"], src, skip | excluded)
        if derived is not None:
            dst.write_bytes(derived)
            details = {**trials[chosen]["details"], "fallback_graph": "derived from the all-INT8 graph"}
        else:
            details = backend.quantize(role, src, dst, cfg, chosen, skip | excluded, ranges, work)
        after = timed(dst)
    else:
        _copy(trials[chosen]["path"], dst)
        details, after = trials[chosen]["details"], trials[chosen]["latency_ms"]
    run_int8 = backend.runner(dst)
    got, _ = _run_feeds(state, f"{role}: parity vs FP32", run_int8, evals)
    outputs = compare(ref, got, names)
    ops = backend.integer_ops(dst)
    if not ops:  # the fallback kept every layer in FP32: an "INT8" graph with nothing in INT8 is FP32
        state.log(f"{role}: kept in FP32 (no layer meets the tolerance in INT8: the fallback kept them all)")
        dst.unlink()
        return {"quantized": False, "scheme": chosen,
                "reason": "the fallback kept every layer in FP32 to meet the tolerance",
                "fallback": fallback.to_dict() if fallback is not None else None}
    state.quantized[role] = dst.name
    state.log(f"{role}: {chosen}, worst cosine {min_cosine(outputs):.4f}, {_size(fp32) / 1e6:.2f} -> "
              f"{_size(dst) / 1e6:.2f} MB, {before:.2f} -> {after:.2f} ms")
    return {
        "quantized": True, "file": dst.name, "scheme": chosen, **details, "integer_ops": ops,
        "schemes": {s: {f"{'min_cosine' if metric[0] == 'cosine' else 'answer_match'}_search": round(t["score"], 6),
                        "latency_ms": round(t["latency_ms"], 3),
                        "bytes": t["bytes"], "quantize_seconds": t["quantize_seconds"],
                        "within_tolerance": bound is None or t["score"] >= bound} for s, t in trials.items()},
        "scheme_rule": ("the recipe's method" if cfg.method != "auto" else
                        "fastest all-INT8 scheme within the tolerance" if within else
                        f"none within the tolerance all-INT8: {chosen} with the fallback"),
        "calibration": calibration, "search_feeds": len(search), "eval_feeds": len(evals),
        "untied_weights": untied,
        "nodes_excluded_by_recipe": len(skip - mask_nodes),
        "nodes_on_nonfinite_tensors_fp32": sorted(mask_nodes), "seconds": round(time.perf_counter() - t_start, 2),
        "outputs": outputs, "min_cosine": min_cosine(outputs),
        "bytes_fp32": _size(fp32), "bytes_int8": _size(dst), "size_ratio": round(_size(fp32) / _size(dst), 3),
        "weight_bytes_fp32": _weight_bytes(fp32), "weight_bytes_int8": _weight_bytes(dst),
        "latency_ms_fp32": round(before, 3), "latency_ms_int8": round(after, 3),
        "speedup": round(before / after, 3) if after > 0 else None,
        "latency_note": f"{backend.name}, {LATENCY_THREADS} thread, median of 3-10 runs, batch 1, held-out "
                        f"feed {feed_index} of {len(evals)} ({', '.join(sorted(feed))})",
        "fallback": fallback.to_dict() if fallback else None,
    }


def _fallback(state: CompressState, backend: Any, cfg: QuantConfig, role: str, src: Path, model: onnx.ModelProto,
              scheme: str, trial: dict[str, Any], skip: set[str], ranges: Any, work: Path,
              score: Callable[[Any], float], search_feeds: Feeds, metric: tuple[str, str]) -> Any:
    """The mixed-precision search on ``scheme``'s all-INT8 graph (see :mod:`edgevlp.compress.fallback`)."""
    assert cfg.fallback is not None and cfg.fallback.bound is not None
    groups = {g: nodes for g, nodes in node_groups(model).items() if not set(nodes) <= skip}
    base = trial["path"]
    scratch = work / f"{role}.candidate{backend.suffix}"

    def evaluate(extra: set[str]) -> float:
        derived = backend.derive(scheme, base, src, skip | extra)
        if derived is not None:
            return score(backend.runner(derived))
        backend.quantize(role, src, scratch, cfg, scheme, skip | extra, ranges, work)
        return score(backend.runner(scratch))

    def order() -> dict[str, float] | None:
        bar.update(0, note="attributing the INT8 noise to layer groups")
        return backend.attribute(src, base, groups, search_feeds)

    kwargs = {"min_score": cfg.fallback.bound, "max_layers": cfg.fallback.max_layers, "base": trial["score"],
              "metric": metric}
    if trial["score"] >= cfg.fallback.bound:  # all INT8 within tolerance: nothing to search
        result = select_fallback(groups, evaluate, **kwargs)
    else:
        ordered = getattr(backend, "orders_by_attribution", False)
        total = evaluations_bound(len(groups), cfg.fallback.max_layers, ordered) - 1  # the base is measured
        with state.bar(f"{role}: fallback search ({scheme}, at most {total})", total, unit="candidates") as bar:
            result = select_fallback(groups, evaluate, **kwargs, order=order,
                                     progress=lambda i, s: bar.update(done=i, note=f"last {metric[0]} {s:.4f}"))
            bar.close(note=f"{len(result.kept)} group(s) kept FP32")
    result.evaluations += 1  # the all-INT8 graph, scored with the schemes
    return result


#: the longest answer a fallback judged on answers generates per held-out prompt (as calibration does)
ANSWER_TOKENS = 16


def _answer_judge(state: CompressState, cfg: QuantConfig, role: str, graphs: dict[str, Path], run_fp32: Any,
                  evals: Feeds) -> tuple[Callable[[Any], float], tuple[str, str]] | None:
    """With ``fallback.min_answer_match``: a score of a candidate ``role`` graph, the fraction of held-out
    prompts whose whole greedy answer equals FP32's (the candidate on its own KV cache)."""
    if cfg.fallback is None or cfg.fallback.min_answer_match is None:
        return None
    from edgevlp.tasks import get_task

    task = get_task(state.adapter.task)
    if task.answer_role != role:
        where = f"the {task.answer_role!r} graph's table" if task.answer_role else "a generating decoder's table"
        raise InputError(f"fallback.min_answer_match judges greedy answers: it belongs in {where} "
                         f"([stages.quant.graphs.ROLE.fallback]), not {role!r}'s ({task.name} model)")
    t0 = time.perf_counter()
    ref = task.answers(state.adapter, graphs, run_fp32, evals, max_new_tokens=ANSWER_TOKENS)
    if not ref:
        raise InputError(f"{role}: no held-out prompts to judge answers on; raise calibration.size")
    state.log(f"{role}: judged on {len(ref)} greedy answers of up to {ANSWER_TOKENS} tokens "
              f"(FP32 in {time.perf_counter() - t0:.1f}s)")

    def answer_match(run: Callable[[dict[str, np.ndarray]], list[np.ndarray]]) -> float:
        got = task.answers(state.adapter, graphs, run, evals, max_new_tokens=ANSWER_TOKENS)
        return sum(a == b for a, b in zip(got, ref)) / len(ref)

    return answer_match, ("answer match", f"greedy answers equal to FP32's (fraction of {len(ref)} held-out "
                                          f"prompts, up to {ANSWER_TOKENS} tokens)")
