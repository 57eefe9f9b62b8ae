"""Measure every (model, backend, precision) configuration on the same frames in one run.

Latency definitions, identical for the runtime and the references (``docs`` and ``bench.md`` repeat them):

- **ms per image**: p50 over the frames of one end-to-end call (preprocessing of the BGR frame to the
  result: caption text, or boxes after post-processing), after one warm-up call.
- **encode ms**: p50 of the vision part (the runtime's image graph; in transformers the forward of the
  vision tower, timed inside ``generate`` / the detector call).
- **decode ms per token**: p50 over the frames of ``(t_k - t_1) / (k - 1)``, where ``t_k`` is that call
  generating ``k`` new tokens and ``t_1`` the same call on the same frame with ``max_new_tokens=1``. For a
  random-weights preset every call generates exactly ``max_new_tokens`` (``min_new_tokens`` equal to it in
  the runtime and in transformers: random weights would stop at any step); for a trained model ``k`` is
  what greedy generated, eos included.
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from edgevlp.bench.rows import DEFINITIONS, BenchRow
from edgevlp.bundle import is_bundle, read_manifest
from edgevlp.errors import EdgeVLPError, InputError
from edgevlp.targets import host_targets
from edgevlp.tasks import get_task

__all__ = ["BenchRow", "run_bench", "DEFAULT_BACKENDS", "DEFAULT_PRECISIONS", "photo_frames", "DEFINITIONS"]

DEFAULT_BACKENDS = ("onnxruntime", "openvino")
DEFAULT_PRECISIONS = ("fp32", "int8")
#: backend -> export target producing its files (the CPU targets of edgevlp.targets)
_TARGET = host_targets()
STAGES = ("preprocess", "encode", "decode", "postprocess")
#: real photos bundled with scikit-image: the frames of random-weights models (shapes mean nothing to them)
PHOTOS = ("astronaut", "coffee", "chelsea", "rocket", "immunohistochemistry", "hubble_deep_field", "retina",
          "camera")
#: prompts of detectors on photos; on shapes data the split's phrases are used
PHOTO_PROMPTS = ("a photo of a cat", "a photo of a person", "a photo of a cup of coffee")
SHAPE_PROMPTS = ("red circle", "blue square", "green triangle", "yellow star")


def _percentiles(samples: dict[str, list[float]]) -> dict[str, dict[str, float]]:
    return {k: {"p50": float(np.percentile(v, 50)), "p90": float(np.percentile(v, 90))}
            for k, v in samples.items() if v}


def _per_token(t_k: list[float], t_1: list[float], k: list[int]) -> float | None:
    """p50 over frames of ``(t_k - t_1) / (k - 1)`` (frames with ``k >= 2``)."""
    per = [(a - b) / (n - 1) for a, b, n in zip(t_k, t_1, k) if n >= 2]
    return float(np.percentile(per, 50)) if per else None


def photo_frames(n: int) -> list[np.ndarray]:
    """``n`` BGR uint8 frames cycling through real photos (:data:`PHOTOS`), at their own sizes."""
    from skimage import data

    photos = []
    for name in PHOTOS:
        img = np.asarray(getattr(data, name)())
        if img.ndim == 2:
            img = np.repeat(img[..., None], 3, axis=2)
        photos.append(np.ascontiguousarray(img[..., :3][..., ::-1]))
    return [photos[i % len(photos)] for i in range(n)]


def _frames(data: str, n: int, size: int, photos: bool) -> list[np.ndarray]:
    if photos:
        return photo_frames(n)
    from edgevlp.eval.evaluate import load_samples

    samples, _ = load_samples(data, n, size)
    return [np.ascontiguousarray(s.image[..., ::-1]) for s in samples]


def _bundle_mb(manifest: Any) -> float:
    return sum(meta["size"] for rel, meta in manifest.files.items() if not rel.endswith(".json")) / 1e6


# ---------------------------------------------------------------------------------- fresh processes
_RSS = "hwm = [l for l in open('/proc/self/status') if l.startswith('VmHWM')][0].split()[1]\n"
_COLD = """
import sys, time, json, numpy as np
t = time.perf_counter()
import edgevlp.runtime as rt
m = rt.load(sys.argv[1], backend=sys.argv[2])
frame = np.zeros((480, 640, 3), np.uint8)
from edgevlp.tasks import get_task
get_task(m.manifest.task).bench_call(m, ["red circle"], False)(frame, int(sys.argv[3]))
""" + _RSS + """print(json.dumps({"seconds": time.perf_counter() - t, "rss_kib": int(hwm)}))
"""
_COLD_TRANSFORMERS = """
import sys, time, json
import numpy as np
t = time.perf_counter()
import torch
from edgevlp.models import load_model
a = load_model(sys.argv[1])
h, w = a.preprocess_spec().input_shape[2:]
pixels = torch.zeros(1, 3, h, w)
from transformers import AutoImageProcessor
from edgevlp.tasks import get_task
processor = AutoImageProcessor.from_pretrained(sys.argv[1], use_fast=False)
with torch.no_grad():
    call = get_task(a.task).reference_call(a, processor, ["red circle"], True)
    call(pixels, np.zeros((h, w, 3), np.uint8), int(sys.argv[2]))
""" + _RSS + """print(json.dumps({"seconds": time.perf_counter() - t, "rss_kib": int(hwm)}))
"""


def _fresh_process(script: str, *args: str) -> tuple[float | None, float | None]:
    """Run ``script`` in a fresh interpreter: (seconds to import, load and infer once, peak RSS MiB)."""
    try:
        out = subprocess.run([sys.executable, "-c", script, *args], capture_output=True, text=True,
                             timeout=900, check=True)
        record = json.loads(out.stdout.strip().splitlines()[-1])
        return record["seconds"], record["rss_kib"] / 1024
    except (subprocess.SubprocessError, json.JSONDecodeError, IndexError):
        return None, None


def _cold_start(bundle: Path, backend: str, tokens: int) -> tuple[float | None, float | None]:
    """A fresh process: import the runtime, load, first inference. (seconds, peak RSS MiB)."""
    return _fresh_process(_COLD, str(bundle), backend, str(tokens))


# ----------------------------------------------------------------------------------------- runtime
def _time_runtime(model: Any, frames: list[np.ndarray], tokens: int, phrases: list[str],
                  exact: bool = False) -> tuple[dict[str, list[float]], float | None, int | None]:
    """Stage samples (ms), decode ms per token and p50 tokens (where the task generates) of the runtime
    on ``frames``."""
    task = get_task(model.manifest.task)
    samples: dict[str, list[float]] = {k: [] for k in (*STAGES, "total")}
    call = task.bench_call(model, phrases, exact)
    call(frames[0], tokens)  # warm-up
    t_k, t_1, counts = [], [], []
    for frame in frames:
        t0 = time.perf_counter()
        result = call(frame, tokens)
        t_k.append((time.perf_counter() - t0) * 1e3)
        for k, v in result.timings.items():
            samples.setdefault(k, []).append(v)
        if task.generates:
            counts.append(len(result.token_ids))
            t0 = time.perf_counter()
            call(frame, 1)
            t_1.append((time.perf_counter() - t0) * 1e3)
    samples["total"] = t_k
    if not task.generates:
        return samples, None, None
    return samples, _per_token(t_k, t_1, counts), int(np.median(counts))


def _bundle_row(bundle: Path, backend: str, data: str, n: int, tokens: int, frames: list[np.ndarray],
                name: str, progress: bool, group: str = "") -> BenchRow:
    from edgevlp.runtime import load

    manifest = read_manifest(bundle)
    random = bool(manifest.source.get("random_weights"))
    model = load(bundle, backend=backend)
    metric_name = get_task(manifest.task).metric
    metric = None
    if not random:
        from edgevlp.eval.evaluate import evaluate

        metric = evaluate(bundle, data, n=n, backend=backend, max_new_tokens=tokens,
                          progress=progress).get(metric_name)
    phrases = list(PHOTO_PROMPTS if random else SHAPE_PROMPTS)
    samples, per_token, count = _time_runtime(model, frames, tokens, phrases, exact=random)
    cold, rss = _cold_start(bundle, backend, tokens)
    notes = [manifest.export.get("quantization", {}).get("method", ""),
             manifest.source.get("note", "") if random else ""]
    return BenchRow(name=name, task=manifest.task, engine=backend, precision=manifest.precision,
                    metric_name=metric_name, metric=metric, latency_ms=_percentiles(samples),
                    throughput_fps=1e3 / statistics.mean(samples["total"]), peak_rss_mib=rss,
                    cold_start_s=cold, size_mb=_bundle_mb(manifest), note="; ".join(x for x in notes if x),
                    model=group or name, decode_ms_per_token=per_token, tokens=count, random_weights=random)


# -------------------------------------------------------------------------------------- references
class _OptimumCaptioner:
    """optimum's ``ORTModelForVision2Seq`` (exported by optimum from the same model) behind the calls a
    reference row and ``evaluate`` make on an adapter: ``generate``, ``caption``, processor config."""

    task = "caption"

    def __init__(self, adapter: Any, model_dir: str) -> None:
        from optimum.onnxruntime import ORTModelForVision2Seq

        self.adapter, self.model = adapter, adapter.model  # torch model: evaluate reads its dtype only
        self.processor_config, self.tokenizer = adapter.processor_config, adapter.tokenizer
        self.source = adapter.source
        self.ort = ORTModelForVision2Seq.from_pretrained(model_dir, export=True)

    def preprocess_spec(self) -> Any:
        return self.adapter.preprocess_spec()

    def generate(self, pixel_values: Any, max_new_tokens: int = 20, **kwargs: Any) -> Any:
        ids = self.ort.generate(pixel_values=pixel_values, max_new_tokens=max_new_tokens, do_sample=False,
                                num_beams=1, **kwargs)
        return ids[:, 1:]

    def caption(self, pixel_values: Any, max_new_tokens: int = 20) -> list[str]:
        return self.tokenizer.batch_decode(self.generate(pixel_values, max_new_tokens), skip_special_tokens=True)


def _vision_module(ref: Any) -> Any:
    """The object whose ``forward`` is the vision part of a reference (timed inside its calls)."""
    if isinstance(ref, _OptimumCaptioner):
        return ref.ort.encoder
    part = next(p for p in ref.parts if p.kind == "vision_encoder")
    return ref.model.get_submodule(part.prefixes[0].rstrip("."))


@contextmanager
def _timed_forward(module: Any) -> Iterator[list[float]]:
    """Milliseconds of every ``module.forward`` call while inside (a scoped, restored instance patch)."""
    spent: list[float] = []
    original = module.forward

    def forward(*args: Any, **kwargs: Any) -> Any:
        t0 = time.perf_counter()
        try:
            return original(*args, **kwargs)
        finally:
            spent.append((time.perf_counter() - t0) * 1e3)

    module.forward = forward
    try:
        yield spent
    finally:
        del module.forward  # the class's forward again
        if module.forward != original:  # forward was an instance attribute before
            module.forward = original


def _reference_rows(model_dir: str, data: str, n: int, tokens: int, frames: list[np.ndarray],
                    progress: bool, group: str = "", random: bool = False) -> tuple[list[BenchRow], str | None]:
    """The references a user would pick instead: transformers eager FP32 and, where it exports the
    model, optimum's ORTModel; plus a note when optimum does not apply."""
    from edgevlp.models import load_model

    adapter = load_model(model_dir)
    eager = get_task(adapter.task).reference_note
    rows = [_reference_row(adapter, model_dir, "transformers eager", "pytorch", eager, data, n, tokens, frames,
                           progress, group, random)]
    cold, rss = _fresh_process(_COLD_TRANSFORMERS, str(model_dir), str(tokens))
    rows[0].cold_start_s, rows[0].peak_rss_mib = cold, rss
    if adapter.architecture != "VisionEncoderDecoderModel":
        return rows, (f"optimum's ORTModel has no {adapter.architecture} export "
                      "(BLIP: optimum issue 1818; OWL-ViT: none)")
    try:
        ort = _OptimumCaptioner(adapter, model_dir)
    except Exception as err:  # noqa: BLE001 - optimum raises many types for models it cannot export
        return rows, f"optimum ORTModelForVision2Seq could not export {model_dir}: {str(err)[:200]}"
    rows.append(_reference_row(ort, model_dir, "optimum ORTModel", "optimum-onnxruntime",
                               "HF processor + ORTModelForVision2Seq.generate (optimum's own export, KV cache)",
                               data, n, tokens, frames, progress, group, random))
    return rows, None


def _reference_row(adapter: Any, model_dir: str, name: str, engine: str, note: str, data: str, n: int,
                   tokens: int, frames: list[np.ndarray], progress: bool, group: str = "",
                   random: bool = False) -> BenchRow:
    """HF image processor + ``adapter.generate`` / the detector with post-processing (FP32), on ``frames``."""
    import torch
    from transformers import AutoImageProcessor

    metric_name = get_task(adapter.task).metric
    metric = None
    if not random:
        from edgevlp.eval.evaluate import evaluate

        metric = evaluate(adapter, data, n=n, max_new_tokens=tokens, progress=progress).get(metric_name)
    processor = AutoImageProcessor.from_pretrained(adapter.source if Path(adapter.source).is_dir()
                                                   else model_dir, use_fast=False)  # what the files say
    task = get_task(adapter.task)
    # random weights: eos would stop early, so exactly `tokens` new tokens (min_new_tokens) on both sides
    infer = task.reference_call(adapter, processor, list(PHOTO_PROMPTS if random else SHAPE_PROMPTS), random)

    def run(frame: np.ndarray, new_tokens: int) -> tuple[float, int]:
        """One end-to-end call: (pre-processing ms, new tokens)."""
        rgb = frame[..., ::-1]
        t0 = time.perf_counter()
        pixels = processor(images=rgb, return_tensors="pt")["pixel_values"]
        pre = (time.perf_counter() - t0) * 1e3
        return pre, infer(pixels, rgb, new_tokens)

    samples: dict[str, list[float]] = {"preprocess": [], "encode": [], "decode": [], "total": []}
    t_1: list[float] = []
    counts: list[int] = []
    with torch.no_grad(), _timed_forward(_vision_module(adapter)) as vision_ms:
        run(frames[0], tokens)  # warm-up
        for frame in frames:
            vision_ms.clear()
            t0 = time.perf_counter()
            pre, count = run(frame, tokens)
            total = (time.perf_counter() - t0) * 1e3
            encode = sum(vision_ms)
            samples["preprocess"].append(pre)
            samples["encode"].append(encode)
            if task.generates:
                samples["decode"].append(total - pre - encode)
                counts.append(count)
                t1 = time.perf_counter()
                run(frame, 1)
                t_1.append((time.perf_counter() - t1) * 1e3)
            samples["total"].append(total)
    size = sum(p.stat().st_size for p in Path(model_dir).glob("*.safetensors")) / 1e6 \
        if Path(model_dir).is_dir() else None
    return BenchRow(name=name, task=adapter.task, engine=engine, precision="fp32",
                    metric_name=metric_name, metric=metric, latency_ms=_percentiles(samples),
                    throughput_fps=1e3 / statistics.mean(samples["total"]), size_mb=size,
                    note="; ".join(x for x in (note, "random weights: latency only" if random else "") if x),
                    model=group or name,
                    decode_ms_per_token=_per_token(samples["total"], t_1, counts) if task.generates else None,
                    tokens=int(np.median(counts)) if counts else None, random_weights=random)


# --------------------------------------------------------------------------------------------- run
def _random_note(target: str, tokens: int) -> str:
    return (f"{target}: random weights: latency only (metric n/a); frames are real photos, every caption "
            f"exactly {tokens} new tokens (min_new_tokens)")


def _preset_name(source: dict[str, Any]) -> str:
    """``arch:NAME`` of a manifest's source record (its ``preset``, with or without the prefix)."""
    name = str(source["preset"])
    return name if name.startswith("arch:") else f"arch:{name}"


def _reference_source(source: dict[str, Any]) -> Path | None:
    """The FP32 model a bundle was exported from, for the reference rows: an ``arch:`` preset (also when
    exported from an `edgevlp compress` output of one: the same seeded weights), the base model inside a
    compressed directory, or the model directory itself; ``None`` when it is not on this machine."""
    from edgevlp.models import resolve_model_dir

    model = str(source.get("model", ""))
    if source.get("preset"):
        return resolve_model_dir(_preset_name(source))
    if model.startswith("arch:"):
        return resolve_model_dir(model)
    path = Path(model)
    record = path / "compression.json"
    if record.is_file():
        try:
            path = path / str(json.loads(record.read_text()).get("base_model", "model"))
        except (OSError, ValueError):
            return None
    return path if (path / "config.json").is_file() else None


def _is_random(model_dir: Path) -> bool:
    from edgevlp.models.presets import preset_record
    from edgevlp.models.registry import read_config

    return preset_record(read_config(model_dir)) is not None


@dataclass
class _Measured:
    """One bench target's runtime rows, the frames they ran on and the model their references run."""

    rows: list[BenchRow]
    group: str
    clip: list[np.ndarray] | None
    source: Path | None
    random: bool
    notes: list[str] = field(default_factory=list)


def _measure_bundle(target: str, data: str, n: int, tokens: int, frames: int, progress: bool) -> _Measured:
    """A bundle, as it is, on the backend its target prefers; grouped with its ``arch:`` preset if any."""
    from edgevlp.runtime.loader import choose_backend

    manifest = read_manifest(target)
    random = bool(manifest.source.get("random_weights"))
    clip = _frames(data, frames, int(manifest.preprocess["height"]), photos=random)
    group = _preset_name(manifest.source) if manifest.source.get("preset") else Path(target).name
    row = _bundle_row(Path(target), choose_backend(manifest).name, data, n, tokens, clip, Path(target).name,
                      progress, group)
    return _Measured([row], group, clip, _reference_source(manifest.source), random)


def _measure_model(target: str, tmp: Path, backends: tuple[str, ...], precisions: tuple[str, ...], data: str,
                   n: int, tokens: int, frames: int, progress: bool) -> _Measured:
    """A model, exported here for every backend x precision (a combination export refuses is a note)."""
    from edgevlp.export import export_model
    from edgevlp.models import inspect_model

    model_dir, _ = inspect_model(target)
    random = _is_random(Path(model_dir))
    group = target if target.startswith("arch:") else Path(target).name
    got = _Measured([], group, None, _reference_source({"model": str(model_dir)}), random)
    for backend in backends:
        for precision in precisions:
            out = tmp / f"{group.replace(':', '-')}-{backend}-{precision}"
            try:
                manifest = export_model(model_dir, out, target=_TARGET[backend], precision=precision,
                                        progress=False)
            except EdgeVLPError as err:
                got.notes.append(f"{target} {backend} {precision}: skipped ({err})")
                continue
            if got.clip is None:
                got.clip = _frames(data, frames, int(manifest.preprocess["height"]), photos=random)
            got.rows.append(_bundle_row(out, backend, data, n, tokens, got.clip, group, progress, group))
    return got


def run_bench(targets: list[str], *, data: str = "shapes:val", n: int = 50,
              backends: tuple[str, ...] = DEFAULT_BACKENDS, precisions: tuple[str, ...] = DEFAULT_PRECISIONS,
              frames: int = 20, max_new_tokens: int = 20, output: str | os.PathLike[str] | None = None,
              references: bool = True, progress: bool = True) -> list[BenchRow]:
    """Benchmark models (exported here for every backend x precision; ``arch:NAME`` presets too) and
    bundles (as they are). Random-weights models get latency rows only (metric n/a), on real photos."""
    if not targets:
        raise InputError("give at least one model or bundle to benchmark (e.g. demo-blip)")
    unknown = set(backends) - set(_TARGET)
    if unknown:
        raise InputError(f"unknown backend(s) {sorted(unknown)}; choose from {', '.join(_TARGET)}")
    if frames < 1 or max_new_tokens < 1:
        raise InputError(f"frames={frames}, max_new_tokens={max_new_tokens}: both must be at least 1")
    rows: list[BenchRow] = []
    notes: list[str] = []
    referenced: set[str] = set()
    with tempfile.TemporaryDirectory(prefix="edgevlp-bench-") as tmp:
        for target in targets:
            got = _measure_bundle(target, data, n, max_new_tokens, frames, progress) if is_bundle(target) else \
                _measure_model(target, Path(tmp), backends, precisions, data, n, max_new_tokens, frames, progress)
            rows += got.rows
            notes += got.notes
            # the reference rows once per model: bundles of one preset share them (same frames)
            if references and got.clip is not None and got.source is not None and got.group not in referenced:
                referenced.add(got.group)
                refs, note = _reference_rows(str(got.source), data, n, max_new_tokens, got.clip, progress,
                                             got.group, got.random)
                rows += refs
                notes += [f"{target}: {note}"] if note else []
            if got.random:
                notes.append(_random_note(target, max_new_tokens))
    if output is not None:
        from edgevlp.bench.report import write_report

        write_report(rows, notes, Path(output), data=data, n=n)
    return rows


def rows_to_json(rows: list[BenchRow]) -> list[dict[str, Any]]:
    return [asdict(r) for r in rows]
