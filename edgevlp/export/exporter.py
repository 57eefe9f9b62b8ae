"""``export_model``: model -> traced ONNX graphs -> target format -> parity -> bundle (atomically)."""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from edgevlp import __version__
from edgevlp._lazy import import_object
from edgevlp.bundle import GraphSpec, Manifest, build_bundle, file_digest
from edgevlp.errors import BundleError, InputError
from edgevlp.export.context import ExportContext
from edgevlp.export.graphs import GraphExport
from edgevlp.export.onnx_export import DEFAULT_OPSET, export_graph
from edgevlp.export.parity import check_parity, parity_photos, parity_pixels
from edgevlp.export.profiles import check_profile_target, load_profile
from edgevlp.export.progress import Progress
from edgevlp.models import load_model
from edgevlp.models.base import ModelAdapter
from edgevlp.models.presets import RANDOM_WEIGHTS_NOTE, preset_record
from edgevlp.targets import PRECISIONS, TARGETS, get_target
from edgevlp.tasks import get_task

if TYPE_CHECKING:
    from edgevlp.compress.record import CompressionRecord

__all__ = ["export_model", "WRITERS", "COMPRESSION_FILE"]

#: target -> "module:function" writing that target's files from the traced ONNX graphs (edgevlp.targets).
WRITERS: dict[str, str] = {name: t.writer for name, t in TARGETS.items()}
#: Written by `edgevlp compress` beside its output (:mod:`edgevlp.compress.record`): precision, parity
#: tolerance, the quantised graphs by role, the recipe.
COMPRESSION_FILE = "compression.json"
#: INT8 outputs also pass parity when their cosine to the source reaches this (see parity._Diffs).
INT8_MIN_COSINE = 0.99


def _source_record(model: str | os.PathLike[str] | ModelAdapter, model_dir: Path | None,
                   adapter: ModelAdapter) -> dict[str, Any]:
    record: dict[str, Any] = {"model": model.source if isinstance(model, ModelAdapter) else os.fspath(model)}
    if model_dir is not None:
        files = sorted(p for p in model_dir.iterdir() if p.suffix in (".json", ".safetensors"))
        digest = "".join(file_digest(p) for p in files)
        import hashlib

        record["sha256"] = hashlib.sha256(digest.encode()).hexdigest()
        record["files"] = [p.name for p in files]
    preset = preset_record(adapter.model.config)
    if preset:  # an arch: preset: real shapes, random weights
        record.update(preset=preset["name"], shapes_of=preset["source"], random_weights=True,
                      note=RANDOM_WEIGHTS_NOTE)
    return record


def _versions() -> dict[str, str]:
    import onnx
    import onnxruntime
    import transformers

    return {"edgevlp": __version__, "torch": torch.__version__, "transformers": transformers.__version__,
            "onnx": onnx.__version__, "onnxruntime": onnxruntime.__version__}


def _sample_feeds(graphs: list[GraphExport], pixels: np.ndarray) -> dict[str, dict[str, np.ndarray]]:
    feeds = {}
    for g in graphs:
        feed = {n: t.numpy() for n, t in zip(g.input_names, g.example_inputs)}
        if "pixel_values" in feed and feed["pixel_values"].ndim == pixels.ndim:  # (B, 3, H, W) images;
            feed["pixel_values"] = pixels  # a VLM's (B, tiles, 3, T, T) keeps its traced example
        feeds[g.role] = feed
    return feeds


def _int8_tolerance(compression: CompressionRecord | None, rtol: float) -> tuple[float, float]:
    """(rtol, min_cosine) of an INT8 parity check: the compression record's, else the defaults."""
    from edgevlp.compress.record import parity_tolerance

    recorded = parity_tolerance(compression) if compression else {}
    min_cosine = recorded.get("min_cosine")
    rel = recorded.get("max_rel_diff")
    return (rtol if rel is None else float(rel)), (INT8_MIN_COSINE if min_cosine is None else float(min_cosine))


def export_model(model: str | os.PathLike[str] | ModelAdapter, output: str | os.PathLike[str], *,
                 target: str = "cpu", precision: str | None = None,
                 profile: str | os.PathLike[str] | None = None, opset: int | None = None,
                 force: bool = False, skip_parity: bool = False, progress: bool = True) -> Manifest:
    """Export ``model`` (dir, zoo name, hub id, adapter or `edgevlp compress` output) as a bundle.

    An `edgevlp compress` output is exported at the precision its ``compression.json`` records (INT8
    when it holds quantised graphs; a ``precision`` that contradicts it raises :class:`InputError`) and
    its parity is checked against the tolerance the graphs were quantised to (the recipe's
    ``fallback.min_cosine`` / ``max_rel_diff``).

    Example:
        >>> from edgevlp.export import export_model
        >>> manifest = export_model("demo-blip", "bundles/blip-cpu", target="cpu")   # doctest: +SKIP
        >>> manifest.parity["greedy_tokens_identical"]                              # doctest: +SKIP
        True
    """
    row = get_target(target)
    if precision is not None and precision not in PRECISIONS:
        raise InputError(f"unknown precision {precision!r}; choose one of {', '.join(PRECISIONS)}")
    out = Path(output)
    if out.is_dir() and any(out.iterdir()) and not force:
        raise BundleError(f"output directory {out} is not empty; pass --force to replace it")
    prof = load_profile(profile or row.profile)
    check_profile_target(prof, target)
    opset = opset or DEFAULT_OPSET
    if not 14 <= opset <= 21:
        raise InputError(f"--opset {opset} is outside the supported range 14..21")
    steps = Progress(enabled=progress)

    model_dir = None
    compression: CompressionRecord | None = None
    if not isinstance(model, ModelAdapter):
        from edgevlp.compress.record import read_compression
        from edgevlp.models import resolve_model_dir

        model_dir = resolve_model_dir(model)
        compression = read_compression(model_dir)
    if compression is not None:  # before loading: a contradicting --precision fails fast
        from edgevlp.compress.record import export_precision

        precision = export_precision(compression, precision, target, model_dir)  # type: ignore[arg-type]
    precision_from = "compression.json" if compression is not None and precision is not None else \
        "--precision" if precision is not None else f"profile {prof.name}"
    precision = precision or prof.precision
    if precision == "int4" and compression is None:
        raise InputError("INT4 graphs come from `edgevlp compress` (4-bit weight-only decoders, e.g. "
                         "--recipe recipes/smolvlm-int4.toml); export its output, or pick fp32, fp16 or int8")
    with steps.stage("load"):
        if isinstance(model, ModelAdapter):
            adapter = model
        else:
            assert model_dir is not None
            base = model_dir / compression.base_model if compression and compression.base_model else model_dir
            adapter = load_model(base)
    task = get_task(adapter.task)
    qdq = compression.graphs if compression else {}
    # OpenVINO IR quantised by `edgevlp compress` (NNCF) is used as is for the openvino target.
    ov_ir = compression.openvino_graphs if compression and "openvino" in get_target(target).formats else {}

    def write(root: Path) -> Manifest:
        traced = task.graphs(adapter)
        records = {}
        for g in traced:
            path = root / f"{g.role}.onnx"
            if g.role in ov_ir:
                with steps.stage("copy", f"{g.role} (quantised OpenVINO IR)"):
                    src = Path(model_dir) / ov_ir[g.role]  # type: ignore[arg-type]
                    shutil.copyfile(src, root / f"{g.role}.xml")
                    shutil.copyfile(src.with_suffix(".bin"), root / f"{g.role}.bin")
                records[g.role] = {"exporter": "edgevlp compress (OpenVINO IR)", "file": ov_ir[g.role]}
                continue
            if g.role in qdq:
                with steps.stage("copy", f"{g.role} (quantised)"):
                    shutil.copyfile(Path(model_dir) / qdq[g.role], path)  # type: ignore[arg-type]
                records[g.role] = {"exporter": "edgevlp compress (QDQ)", "file": qdq[g.role]}
                continue
            with steps.stage("trace", g.role):
                rec = export_graph(g, path, opset=opset)
            records[g.role] = {"exporter": rec.exporter, "opset": rec.opset, "seconds": round(rec.seconds, 2),
                               **({"fallback_reason": rec.fallback_reason} if rec.fallback_reason else {})}
        graphs = [GraphSpec(role=g.role, file=f"{g.role}.xml", inputs=g.inputs, outputs=g.outputs,
                            format="openvino", extra_files=(f"{g.role}.bin",)) if g.role in ov_ir else
                  GraphSpec(role=g.role, file=f"{g.role}.onnx", inputs=g.inputs, outputs=g.outputs)
                  for g in traced]
        spec = adapter.preprocess_spec()
        ctx = ExportContext(root=root, graphs=graphs, profile=prof, precision=precision, target=target,
                            progress=steps, prequantized=bool(qdq or ov_ir), family=adapter.family,
                            sample_feeds=_sample_feeds(traced, parity_pixels(spec, parity_photos())))
        with steps.stage("convert", f"{target} {precision}"):
            import_object(WRITERS[target])(ctx)
        adapter.save_tokenizer(root)
        settings = {task.manifest_section: task.manifest_settings(adapter, max_new_tokens=prof.max_new_tokens,
                                                                  roles=ctx.graphs_by_role())}
        manifest = Manifest(
            task=adapter.task, family=adapter.family, architecture=adapter.architecture,
            source=_source_record(model, model_dir, adapter), target=target, precision=precision,
            graphs={g.role: g for g in ctx.graphs}, preprocess=spec.to_dict(),
            tokenizer={"file": "tokenizer.json", **adapter.tokenizer_summary()},
            **settings,
            compression=compression.recipe if compression else None,
            versions={**_versions(), "opset": str(opset)},
            target_profile=prof.to_dict(),
            export={"graphs": records, **ctx.notes},
            path=root,
        )
        if skip_parity:
            manifest.parity = {"skipped": True}
            manifest.verified = False
        else:
            atol, rtol = prof.tolerance_for(precision)
            min_cosine = None
            if precision in ("int8", "int4"):
                rtol, min_cosine = _int8_tolerance(compression, rtol)
            with steps.stage("parity", "(source model vs exported graphs on 2 photos)"):
                manifest.parity = check_parity(
                    adapter, manifest, atol=atol, rtol=rtol, new_tokens=20,
                    require_identical_tokens=precision == "fp32" and not (qdq or ov_ir),
                    min_cosine=min_cosine)
            manifest.verified = True
        manifest.export["precision_from"] = precision_from
        manifest.export["stage_seconds"] = {k: round(v, 2) for k, v in steps.seconds.items()}
        return manifest

    return build_bundle(out, write, force=force)
