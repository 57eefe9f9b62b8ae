"""Measure every (model, backend, precision) configuration on the same frames in one run."""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np

from edgevlp.bundle import is_bundle, read_manifest
from edgevlp.errors import EdgeVLPError, InputError

__all__ = ["BenchRow", "run_bench", "DEFAULT_BACKENDS", "DEFAULT_PRECISIONS"]

DEFAULT_BACKENDS = ("onnxruntime", "openvino")
DEFAULT_PRECISIONS = ("fp32", "int8")
#: backend -> export target producing its files
_TARGET = {"onnxruntime": "cpu", "openvino": "openvino"}
STAGES = ("preprocess", "encode", "decode", "postprocess")


@dataclass
class BenchRow:
    """One measured configuration."""

    name: str
    task: str
    engine: str
    precision: str
    metric_name: str
    metric: float | None
    latency_ms: dict[str, dict[str, float]] = field(default_factory=dict)  # stage -> {p50, p90}
    throughput_fps: float = 0.0
    peak_rss_mib: float | None = None
    cold_start_s: float | None = None
    size_mb: float | None = None
    note: str = ""

    @property
    def p50(self) -> float:
        return self.latency_ms.get("total", {}).get("p50", float("nan"))


def _percentiles(samples: dict[str, list[float]]) -> dict[str, dict[str, float]]:
    return {k: {"p50": float(np.percentile(v, 50)), "p90": float(np.percentile(v, 90))}
            for k, v in samples.items() if v}


def _frames(data: str, n: int, size: int) -> list[np.ndarray]:
    from edgevlp.eval.evaluate import load_samples

    samples, _ = load_samples(data, n, size)
    return [np.ascontiguousarray(s.image[..., ::-1]) for s in samples]


_COLD = """
import sys, time, json, numpy as np
t = time.perf_counter()
import edgevlp.runtime as rt
m = rt.load(sys.argv[1], backend=sys.argv[2])
frame = np.zeros((480, 640, 3), np.uint8)
if m.manifest.task == "caption":
    m.caption(frame, max_new_tokens=int(sys.argv[3]))
else:
    m.set_prompts(["red circle"]); m.detect(frame)
hwm = [l for l in open("/proc/self/status") if l.startswith("VmHWM")][0].split()[1]
print(json.dumps({"seconds": time.perf_counter() - t, "rss_kib": int(hwm)}))
"""


def _cold_start(bundle: Path, backend: str, tokens: int) -> tuple[float | None, float | None]:
    """A fresh process: import the runtime, load, first inference. (seconds, peak RSS MiB)."""
    try:
        out = subprocess.run([sys.executable, "-c", _COLD, str(bundle), backend, str(tokens)],
                             capture_output=True, text=True, timeout=600, check=True)
        record = json.loads(out.stdout.strip().splitlines()[-1])
        return record["seconds"], record["rss_kib"] / 1024
    except (subprocess.SubprocessError, json.JSONDecodeError, IndexError):
        return None, None


def _time_runtime(model: Any, frames: list[np.ndarray], tokens: int, phrases: list[str]) -> dict[str, list[float]]:
    samples: dict[str, list[float]] = {k: [] for k in (*STAGES, "total")}
    if model.manifest.task == "detect":
        model.set_prompts(phrases)
    call: Callable[[np.ndarray], Any] = (
        (lambda f: model.caption(f, max_new_tokens=tokens)) if model.manifest.task == "caption"
        else (lambda f: model.detect(f, threshold=0.1)))
    call(frames[0])  # warm-up
    for frame in frames:
        t0 = time.perf_counter()
        result = call(frame)
        samples["total"].append((time.perf_counter() - t0) * 1e3)
        for k, v in result.timings.items():
            samples[k].append(v)
    return samples


def _bundle_row(bundle: Path, backend: str, data: str, n: int, tokens: int, frames: list[np.ndarray],
                name: str, progress: bool) -> BenchRow:
    from edgevlp.eval.evaluate import evaluate
    from edgevlp.runtime import load

    manifest = read_manifest(bundle)
    model = load(bundle, backend=backend)
    metrics = evaluate(bundle, data, n=n, backend=backend, max_new_tokens=tokens, progress=progress)
    metric_name = "cider" if manifest.task == "caption" else "map50"
    phrases = ["red circle", "blue square", "green triangle", "yellow star"]
    samples = _time_runtime(model, frames, tokens, phrases)
    cold, rss = _cold_start(bundle, backend, tokens)
    size = sum(meta["size"] for rel, meta in manifest.files.items() if not rel.endswith(".json")) / 1e6
    note = manifest.export.get("quantization", {}).get("method", "")
    return BenchRow(name=name, task=manifest.task, engine=backend, precision=manifest.precision,
                    metric_name=metric_name, metric=metrics.get(metric_name),
                    latency_ms=_percentiles(samples),
                    throughput_fps=1e3 / statistics.mean(samples["total"]), peak_rss_mib=rss,
                    cold_start_s=cold, size_mb=size, note=note)


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

    def generate(self, pixel_values: Any, max_new_tokens: int = 20) -> Any:
        ids = self.ort.generate(pixel_values=pixel_values, max_new_tokens=max_new_tokens, do_sample=False,
                                num_beams=1)
        return ids[:, 1:]

    def caption(self, pixel_values: Any, max_new_tokens: int = 20) -> list[str]:
        return self.tokenizer.batch_decode(self.generate(pixel_values, max_new_tokens), skip_special_tokens=True)


def _reference_rows(model_dir: str, data: str, n: int, tokens: int, frames: list[np.ndarray],
                    progress: bool) -> tuple[list[BenchRow], str | None]:
    """The references a user would pick instead: transformers eager FP32 and, where it exports the
    model, optimum's ORTModel; plus a note when optimum does not apply."""
    from edgevlp.models import load_model

    adapter = load_model(model_dir)
    rows = [_reference_row(adapter, model_dir, "transformers eager", "pytorch",
                           "HF processor + generate (caption: encode inside decode)", data, n, tokens, frames,
                           progress)]
    if adapter.architecture != "VisionEncoderDecoderModel":
        return rows, (f"optimum's ORTModel has no {adapter.architecture} export "
                      "(BLIP: optimum issue 1818; OWL-ViT: none)")
    try:
        ort = _OptimumCaptioner(adapter, model_dir)
    except Exception as err:  # noqa: BLE001 - optimum raises many types for models it cannot export
        return rows, f"optimum ORTModelForVision2Seq could not export {model_dir}: {str(err)[:200]}"
    rows.append(_reference_row(ort, model_dir, "optimum ORTModel", "optimum-onnxruntime",
                               "HF processor + ORTModelForVision2Seq.generate (optimum's own export)", data, n,
                               tokens, frames, progress))
    return rows, None


def _reference_row(adapter: Any, model_dir: str, name: str, engine: str, note: str, data: str, n: int,
                   tokens: int, frames: list[np.ndarray], progress: bool) -> BenchRow:
    """HF image processor + ``adapter.generate`` / ``forward`` (FP32), timed on ``frames``."""
    import torch

    from edgevlp.eval.evaluate import evaluate

    metrics = evaluate(adapter, data, n=n, max_new_tokens=tokens, progress=progress)
    metric_name = "cider" if adapter.task == "caption" else "map50"
    from transformers import AutoImageProcessor

    processor = AutoImageProcessor.from_pretrained(adapter.source if Path(adapter.source).is_dir()
                                                   else model_dir)
    samples: dict[str, list[float]] = {"preprocess": [], "encode": [], "decode": [], "total": []}
    prompts = ["red circle", "blue square", "green triangle", "yellow star"]
    for i, frame in enumerate([frames[0], *frames]):
        t0 = time.perf_counter()
        with torch.no_grad():
            pixels = processor(images=frame[..., ::-1], return_tensors="pt")["pixel_values"]
            t1 = time.perf_counter()
            if adapter.task == "caption":
                adapter.generate(pixels, max_new_tokens=tokens)
            else:
                adapter.forward(pixels, prompts=prompts)
        t2 = time.perf_counter()
        if i:  # first call is warm-up
            samples["preprocess"].append((t1 - t0) * 1e3)
            samples["decode" if adapter.task == "caption" else "encode"].append((t2 - t1) * 1e3)
            samples["total"].append((t2 - t0) * 1e3)
    size = sum(p.stat().st_size for p in Path(model_dir).glob("*.safetensors")) / 1e6 \
        if Path(model_dir).is_dir() else None
    return BenchRow(name=name, task=adapter.task, engine=engine, precision="fp32",
                    metric_name=metric_name, metric=metrics.get(metric_name),
                    latency_ms=_percentiles(samples), throughput_fps=1e3 / statistics.mean(samples["total"]),
                    size_mb=size, note=note)


def run_bench(targets: list[str], *, data: str = "shapes:val", n: int = 50,
              backends: tuple[str, ...] = DEFAULT_BACKENDS, precisions: tuple[str, ...] = DEFAULT_PRECISIONS,
              frames: int = 20, max_new_tokens: int = 20, output: str | os.PathLike[str] | None = None,
              references: bool = True, progress: bool = True) -> list[BenchRow]:
    """Benchmark models (exported here for every backend x precision) and bundles (as they are)."""
    if not targets:
        raise InputError("give at least one model or bundle to benchmark (e.g. demo-blip)")
    unknown = set(backends) - set(_TARGET)
    if unknown:
        raise InputError(f"unknown backend(s) {sorted(unknown)}; choose from {', '.join(_TARGET)}")
    rows: list[BenchRow] = []
    notes: list[str] = []
    with tempfile.TemporaryDirectory(prefix="edgevlp-bench-") as tmp:
        for target in targets:
            if is_bundle(target):
                manifest = read_manifest(target)
                size = int(manifest.preprocess["height"])
                clip = _frames(data, frames, size)
                from edgevlp.runtime.loader import choose_backend

                engine = choose_backend(manifest).name
                rows.append(_bundle_row(Path(target), engine, data, n, max_new_tokens, clip,
                                        f"{Path(target).name}", progress))
                source = Path(str(manifest.source.get("model", "")))
                if references and (source / "config.json").is_file():
                    refs, note = _reference_rows(str(source), data, n, max_new_tokens, clip, progress)
                    rows += refs
                    notes += [f"{target}: {note}"] if note else []
                continue
            from edgevlp.export import export_model
            from edgevlp.models import inspect_model, resolve_model_dir

            model_dir, _ = inspect_model(target)
            clip: list[np.ndarray] | None = None
            for backend in backends:
                for precision in precisions:
                    out = Path(tmp) / f"{Path(target).name}-{backend}-{precision}"
                    try:
                        manifest = export_model(model_dir, out, target=_TARGET[backend], precision=precision,
                                                progress=False)
                    except EdgeVLPError as err:
                        notes.append(f"{target} {backend} {precision}: skipped ({err})")
                        continue
                    if clip is None:
                        clip = _frames(data, frames, int(manifest.preprocess["height"]))
                    rows.append(_bundle_row(out, backend, data, n, max_new_tokens, clip,
                                            f"{Path(target).name}", progress))
            if references and clip is not None:
                refs, note = _reference_rows(str(resolve_model_dir(target)), data, n, max_new_tokens, clip,
                                             progress)
                rows += refs
                notes += [f"{target}: {note}"] if note else []
    if output is not None:
        from edgevlp.bench.report import write_report

        write_report(rows, notes, Path(output), data=data, n=n)
    return rows


def rows_to_json(rows: list[BenchRow]) -> list[dict[str, Any]]:
    return [asdict(r) for r in rows]
