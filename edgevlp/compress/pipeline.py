"""``compress_model``: model + recipe -> a compressed-model directory that `edgevlp export` reads.

Output (written atomically)::

    DIR/model/               the (pruned/distilled) model, save_pretrained: safetensors + configs
    DIR/<role>.int8.onnx     the quantised graphs (onnxruntime backend; OpenVINO: .int8.xml/.bin)
    DIR/compression.json     the compression record (:mod:`edgevlp.compress.record`): format, precision,
                             graphs by role, scheme per graph, parity tolerance, the recipe
    DIR/recipe.toml          the recipe as run
    DIR/report.json          params, sizes, per-stage time, cosine/max-diff vs FP32, latency, fallback
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

from edgevlp.bundle import atomic_directory
from edgevlp.compress.cache import cacheable_prefix, lookup, read_reports, stage_key, store
from edgevlp.compress.distill import teacher_copy
from edgevlp.compress.recipe import DistillConfig, PruneConfig, QuantConfig, Recipe, load_recipe, to_toml
from edgevlp.compress.record import FORMAT_VERSION, CompressionRecord
from edgevlp.compress.stages import apply_stage
from edgevlp.compress.state import CompressState
from edgevlp.errors import InputError
from edgevlp.models.base import ModelAdapter

__all__ = ["compress_model", "format_report", "FORMAT_VERSION"]


def _with_calibration(recipe: Recipe, source: str) -> Recipe:
    """The recipe with every calibration source replaced by ``source`` (the user's --calib)."""
    stages = []
    for s in recipe.stages:
        if isinstance(s, QuantConfig):
            s = dataclasses.replace(s, calibration=dataclasses.replace(s.calibration, source=source))
        elif isinstance(s, PruneConfig):
            s = dataclasses.replace(s, calibration_source=source)
        stages.append(s)
    return dataclasses.replace(recipe, stages=tuple(stages))


def _shapes_model(model: str | os.PathLike[str] | ModelAdapter) -> bool:
    """Was ``model`` trained on shape scenes (so calibration source ``auto`` means shapes:train)?"""
    from edgevlp.compress._photos import trained_on_shapes
    from edgevlp.zoo import ZOO_NAMES

    if isinstance(model, ModelAdapter):
        source = str(model.source)
        return source in ZOO_NAMES or (Path(source).is_dir() and trained_on_shapes(Path(source)))
    from edgevlp.models import resolve_model_dir

    return trained_on_shapes(resolve_model_dir(model))


def _runnable(recipe: Recipe, shapes_model: bool) -> tuple[Any, ...]:
    """The stages to run: QAT's calibration source ``auto`` resolved (PTQ resolves and reports its own)."""
    from edgevlp.compress._photos import resolve_source

    out = []
    for s in recipe.stages:
        if isinstance(s, QuantConfig) and s.method == "qat":
            source = resolve_source(s.calibration.source, shapes_model=shapes_model)
            s = dataclasses.replace(s, calibration=dataclasses.replace(s.calibration, source=source))
        out.append(s)
    return tuple(out)


def _record(state: CompressState, recipe: Recipe, stages: list[dict[str, Any]]) -> CompressionRecord:
    """The compression record (``compression.json``, :class:`CompressionRecord`)."""
    quant = next((st for st in stages if st.get("stage") == "quant"), {})
    graphs = {r: g for r, g in (quant.get("graphs") or {}).items() if g.get("quantized")}
    cfg = recipe.quant
    # the loosest tolerance any quantised graph was held to (graphs.ROLE tables may set their own)
    fallbacks = [c.fallback for c in ([cfg.for_role(r) for r in graphs] or [cfg]) if c.fallback] if cfg else []
    cosines = [f.min_cosine for f in fallbacks if f.min_cosine is not None]
    rel = [f.max_rel_diff for f in fallbacks if f.max_rel_diff is not None]
    # OpenVINO IR (not .onnx): `edgevlp export --target openvino` copies it as it is
    four_bit = any(g.get("bits") == 4 for g in graphs.values())
    return CompressionRecord(
        base_model="model", precision=("int4" if four_bit else "int8") if state.quantized else None,
        graphs={r: f for r, f in state.quantized.items() if f.endswith(".onnx")},
        schemes={r: g.get("scheme", cfg.method if cfg else "ptq_static") for r, g in graphs.items()},
        parity={"min_cosine": min(cosines) if cosines else None,
                "max_rel_diff": max(rel) if rel else None,
                "measured": {r: g["min_cosine"] for r, g in graphs.items() if "min_cosine" in g}},
        recipe=recipe.to_dict(),
        openvino_graphs={r: f for r, f in state.quantized.items() if not f.endswith(".onnx")})


def compress_model(model: str | os.PathLike[str] | ModelAdapter, recipe: Recipe | str | os.PathLike[str],
                   output: str | os.PathLike[str], *, calib: str | None = None,
                   teacher: str | os.PathLike[str] | None = None, force: bool = False,
                   progress: bool = True, resume: bool = False, eval_data: str | None = None,
                   eval_n: int = 100, cache: bool = True) -> dict[str, Any]:
    """Apply ``recipe``'s stages to ``model`` and write the compressed directory ``output``.

    ``calib`` replaces the recipe's calibration sources (recorded in the written recipe). Training
    stages distil from ``teacher`` (default: the model as loaded, before any stage) and checkpoint into
    ``OUTPUT.train/``, which ``resume`` continues from and a successful run removes. With
    ``eval_data``, the task metric on ``eval_n`` images is measured before (PyTorch FP32) and after
    (the compressed model exported to a CPU bundle, so INT8 graphs are what is measured). With
    ``cache``, the result of the training stages is stored and reused (:mod:`edgevlp.compress.cache`).
    Returns the
    report (also written as ``report.json``).

    Example:
        >>> report = compress_model("demo-blip", "recipes/int8-ptq.toml", "out/blip-int8")  # doctest: +SKIP
        >>> print(format_report(report))                                                   # doctest: +SKIP
    """
    recipe_file = None if isinstance(recipe, Recipe) else Path(recipe)
    loaded = recipe if isinstance(recipe, Recipe) else load_recipe(recipe)
    effective = _with_calibration(loaded, calib) if calib else loaded
    if calib:
        from edgevlp.compress.calib import load_frames

        load_frames(calib, 1)  # fail fast on a bad --calib, before loading the model
    trains = any(isinstance(s, DistillConfig) or (isinstance(s, QuantConfig) and s.train is not None)
                 for s in effective.stages)
    if teacher is not None and not trains:
        raise InputError("--teacher is only used by distillation (a distill stage or QAT); the recipe has "
                         "neither, so drop --teacher")
    from edgevlp.models import load_model, resolve_model_dir

    adapter = model if isinstance(model, ModelAdapter) else load_model(model)
    if teacher is not None:
        teacher_adapter = load_model(teacher)
    else:  # the original, before pruning changes it
        teacher_adapter = teacher_copy(adapter) if trains else None
    checkpoints = Path(output).with_name(Path(output).name + ".train")
    if resume and not checkpoints.is_dir():
        raise InputError(f"--resume: no checkpoints in {checkpoints}; run without --resume")
    if trains and checkpoints.is_dir() and not resume:
        raise InputError(f"{checkpoints} holds checkpoints of an interrupted run: pass --resume to continue "
                         "it, or delete the folder to start over")
    from edgevlp.models.presets import RANDOM_WEIGHTS_NOTE, preset_record

    random_weights = preset_record(adapter.model.config) is not None  # an arch: preset: no metric to measure
    measure = bool(eval_data) and not random_weights
    metric_before = _metric(adapter, eval_data, eval_n) if measure else None
    source = model.source if isinstance(model, ModelAdapter) else os.fspath(model)
    params_before = adapter.parameter_counts()
    prefix = cacheable_prefix(effective.stages) if cache and not isinstance(model, ModelAdapter) else 0
    key = stage_key(resolve_model_dir(model), effective.stages[:prefix]) if prefix else None  # type: ignore[arg-type]
    hit = lookup(key) if key else None
    cached_reports: list[dict[str, Any]] = []
    if hit is not None:  # the training stages ran before on this very model: reuse their result
        adapter = load_model(hit)
        adapter.source = source
        cached_reports = [{**r, "cached": str(hit)} for r in read_reports(hit)]
    t_start = time.perf_counter()
    shapes_model = _shapes_model(model)
    with atomic_directory(output, force=force) as tmp, tempfile.TemporaryDirectory(prefix="edgevlp-compress-") as work:
        state = CompressState(adapter=adapter, out=tmp, work=Path(work), teacher=teacher_adapter,
                              progress=progress, checkpoints=checkpoints, resume=resume,
                              shapes_model=shapes_model)
        stages = list(cached_reports)
        for i, (name, stage) in enumerate(zip(effective.stage_names(), _runnable(effective, shapes_model))):
            if i < len(cached_reports):
                continue
            t0 = time.perf_counter()
            details = apply_stage(state, stage)
            stages.append({"stage": name, "seconds": round(time.perf_counter() - t0, 2), **details})
            if key is not None and hit is None and i == prefix - 1:
                stored = store(key, adapter, stages, source)
                state.log(f"stages {', '.join(effective.stage_names()[:prefix])} cached as {stored}"
                          if stored else "could not write the stage cache (continuing)")
        adapter.save_pretrained(tmp / "model")
        if recipe_file is not None and effective == loaded:
            shutil.copyfile(recipe_file, tmp / "recipe.toml")
        else:
            (tmp / "recipe.toml").write_text(to_toml(effective), encoding="utf-8")
        compression = _record(state, effective, stages)
        other = compression.openvino_graphs
        compression.write(tmp)
        metric_after = None
        if measure:
            state.log(f"measuring the task metric on {eval_n} images of {eval_data}")
            metric_after = _metric_compressed(tmp, Path(work), eval_data, eval_n, compression.host_target()) \
                if state.quantized \
                else _metric(adapter, eval_data, eval_n)
        report = {
            "format": "edgevlp-compress-report", "model": source, "family": adapter.family,
            "metric": _metric_summary(metric_before, metric_after, eval_data, eval_n) if not random_weights else
                      {"skipped": f"{RANDOM_WEIGHTS_NOTE} (arch: preset): no task metric"},
            "stage_cache": {"key": key, "reused": str(hit) if hit else None} if key else None,
            "recipe": effective.name, "recipe_file": str(recipe_file) if recipe_file else None,
            "export_target": compression.host_target(),
            "calibration_override": calib,
            "parameters": {"before": params_before, "after": adapter.parameter_counts()},
            "stages": stages, "seconds": round(time.perf_counter() - t_start, 2),
            "model_dir_bytes": sum(p.stat().st_size for p in (tmp / "model").iterdir()),
            "notes": ([f"OpenVINO INT8 IR ({', '.join(other.values())}) is in {Path(output).name}/; "
                       "export it with `edgevlp export DIR --target openvino`"]
                      if other else []),
        }
        (tmp / "report.json").write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    if checkpoints.is_dir():
        shutil.rmtree(checkpoints)  # the run succeeded: its training checkpoints are no longer needed
    return report


def _metric(model: Any, data: str, n: int) -> dict[str, float]:
    """The task's headline metric and its first two printed ones (captioners: CIDEr, BLEU-4; detectors:
    mAP, mAP@.5; vqa: accuracy)."""
    from edgevlp.eval import evaluate
    from edgevlp.tasks import get_task

    result = evaluate(model, data, n, progress=False)
    task = get_task(result["task"])
    keys = dict.fromkeys([task.metric, *(k for k, _ in task.metric_labels[:2])])
    return {k: round(float(result[k]), 4) for k in keys if k in result}


def _metric_compressed(out: Path, work: Path, data: str, n: int, target: str) -> dict[str, float]:
    """The metric of the compressed directory as deployed: exported to a CPU bundle (INT8 graphs)."""
    from edgevlp.export import export_model

    bundle = work / "eval-bundle"
    export_model(out, bundle, target=target, skip_parity=True, progress=False)
    return _metric(bundle, data, n)


def _metric_summary(before: dict[str, float] | None, after: dict[str, float] | None, data: str | None,
                    n: int) -> dict[str, Any] | None:
    if before is None or after is None:
        return None
    ratio = {k: round(after[k] / before[k], 4) for k in before if k in after and before[k] > 0}
    return {"data": data, "images": n, "before": before, "after": after, "after_over_before": ratio,
            "before_is": "PyTorch FP32 (the input model)", "after_is": "the compressed model"}


def _mb(n: int) -> str:
    return f"{n / 1e6:.2f} MB"


def format_report(r: dict[str, Any]) -> str:
    """The readable summary `edgevlp compress` prints."""
    p0, p1 = r["parameters"]["before"]["total"], r["parameters"]["after"]["total"]
    lines = [f"compressed   {r['model']} ({r['family']}) with recipe {r['recipe']} in {r['seconds']:.1f}s",
             f"parameters   {p0:,} -> {p1:,} ({p1 / p0:.1%})"]
    m = r.get("metric")
    if m and m.get("skipped"):
        lines.append(f"metric       n/a: {m['skipped']}")
    elif m:
        lines.append(f"metric       {m['data']} ({m['images']} images), before -> after: " + ", ".join(
            f"{k} {m['before'][k]:.4f} -> {m['after'][k]:.4f} ({m['after_over_before'].get(k, 0):.1%})"
            for k in m["before"] if k in m["after"]))
    for st in r["stages"]:
        cached = " (reused from the stage cache)" if st.get("cached") else ""
        lines.append(f"stage        {st['stage']}: {st['seconds']:.1f}s{cached}")
        if st["stage"] == "prune":
            for part, targets in st.get("parts", {}).items():
                for target, t in targets.items():
                    per = "/".join(str(a) for _, a in t["per_module"].values())
                    lines.append(f"  {part} {target}: {t['before']} -> {t['after']} (per module {per})")
            lines.append(f"  importance {st['importance']} ({st['scope']})")
            continue
        if st["stage"] == "distill":
            last = st.get("loss_last_20_steps", {})
            lines.append(f"  {st['steps']} steps on {st['data']}; loss terms first batch -> last 20 steps: "
                         + ", ".join(f"{k} {st['loss_first_batch'][k]:.4f} -> {last.get(k, float('nan')):.4f}"
                                     for k in ("task", "kd", "hidden")))
            continue
        if st["stage"] != "quant":
            continue
        cal = st["calibration"]
        asked = f" ({cal['source_asked']})" if cal.get("source_asked") else ""
        lines.append(f"  {st['method']} on {st['backend']}; calibration {cal['method']} on {cal['frames']} frames "
                     f"of {cal['source']}{asked}; checked on {cal['held_out_frames']} held-out frames + real photos")
        lines.append(f"  {'graph':<15} {'scheme':<12} {'cosine':>8} {'max|diff|':>10} {'size fp32->int8':>22} "
                     f"{'latency ms fp32->int8':>24}")
        for role, g in st["graphs"].items():
            if not g["quantized"]:
                lines.append(f"  {role:<15} kept FP32: {g['reason']}")
                continue
            diff = max(v["max_abs_diff"] for v in g["outputs"].values()) if g["outputs"] else 0.0
            size = f"{_mb(g['bytes_fp32'])}->{_mb(g['bytes_int8'])} ({g['size_ratio']:.2f}x)"
            lat = f"{g['latency_ms_fp32']:.2f}->{g['latency_ms_int8']:.2f} ({g['speedup']:.2f}x)"
            lines.append(f"  {role:<15} {g.get('scheme', st['method']):<12} {g['min_cosine']:>8.4f} {diff:>10.3g} "
                         f"{size:>22} {lat:>24}")
            schemes = g.get("schemes") or {}
            if len(schemes) > 1:
                lines.append("    schemes (all INT8): " + "; ".join(
                    f"{k} {v['latency_ms']:.2f} ms, cosine {v['min_cosine_search']:.4f}"
                    + ("" if v["within_tolerance"] else " (beyond tolerance)") for k, v in schemes.items())
                    + f" -> {g['scheme_rule']}")
            fb = g.get("fallback")
            if fb and fb["kept_fp32"] or fb and not fb["met"]:
                kept = fb["kept_fp32"]
                state = "met" if fb["met"] else "NOT met"
                lines.append(f"    fallback: all-INT8 cosine {fb['score_all_int8']:.4f} -> {fb['score_final']:.4f}, "
                             f"tolerance {fb['tolerance']} {state} ({fb['evaluations']} evaluations); kept in FP32: "
                             + (", ".join(k["group"] + (f" (alone -> {k['score_if_only_this_fp32']:.4f})"
                                                       if "score_if_only_this_fp32" in k else
                                                       f" (adds noise {k['noise_added']:.3g})") for k in kept)
                                or "none"))
    lines += [f"note         {n}" for n in r.get("notes", [])]
    return "\n".join(lines)
