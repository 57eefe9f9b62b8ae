"""Bench outputs: a markdown table, ``bench.json`` and a Pareto plot (metric vs latency)."""

from __future__ import annotations

import json
import os
import platform
from dataclasses import asdict
from pathlib import Path

from edgevlp.bench.rows import DEFINITIONS, BenchRow

__all__ = ["markdown_table", "write_report", "pareto_front"]


def _fmt(value: float | None, spec: str = ".2f") -> str:
    return "-" if value is None or value != value else format(value, spec)  # None and NaN print as -


def _ratio(ref: float | None, mine: float) -> str:
    return f"{ref / mine:.2f}x" if ref and mine and mine == mine else "-"


def _label(r: BenchRow) -> str:
    return r.name if not r.model or r.model == r.name else f"{r.model}: {r.name}"


def markdown_table(rows: list[BenchRow]) -> str:
    """One row per configuration: latency p50/p90 in ms per stage and in total, decode ms per new token,
    each row's speed-up against its own model's transformers eager (and optimum ORTModel) row, in total
    and per decoded token, and its peak RSS over its size on disk."""
    head = ("| model | engine | precision | metric | p50 ms | p90 ms | preprocess | encode | decode "
            "| decode ms/token | post | FPS | speed-up | vs optimum | decode speed-up | peak RSS MiB "
            "| RSS / size | cold start s | size MB | note |")
    lines = [head, "|" + "---|" * (head.count("|") - 1)]

    def reference(engine: str, r: BenchRow) -> BenchRow | None:  # the same model's (legacy: same task)
        same = [o for o in rows if o.engine == engine and (o.model == r.model if r.model else o.task == r.task)]
        return same[-1] if same else None

    def ref(engine: str, r: BenchRow) -> float | None:
        found = reference(engine, r)
        return found.p50 if found else None

    def per_token(r: BenchRow) -> str:
        eager = reference("pytorch", r)
        return _ratio(eager.decode_ms_per_token if eager else None, r.decode_ms_per_token or float("nan"))

    def rss_ratio(r: BenchRow) -> str:  # MiB over MB: both in bytes
        return f"{r.peak_rss_mib * 2**20 / (r.size_mb * 1e6):.2f}" if r.peak_rss_mib and r.size_mb else "-"

    for r in rows:
        stage = {k: _fmt(r.latency_ms.get(k, {}).get("p50")) for k in ("preprocess", "encode", "decode",
                                                                        "postprocess")}
        metric = "n/a" if r.random_weights else f"{r.metric_name} {_fmt(r.metric, '.3f')}"
        lines.append(f"| {_label(r)} | {r.engine} | {r.precision} | {metric} | {_fmt(r.p50)} | "
                     f"{_fmt(r.latency_ms.get('total', {}).get('p90'))} | {stage['preprocess']} | "
                     f"{stage['encode']} | {stage['decode']} | {_fmt(r.decode_ms_per_token)} | "
                     f"{stage['postprocess']} | {r.throughput_fps:.1f} | {_ratio(ref('pytorch', r), r.p50)} | "
                     f"{_ratio(ref('optimum-onnxruntime', r), r.p50)} | {per_token(r)} | "
                     f"{_fmt(r.peak_rss_mib, '.0f')} | {rss_ratio(r)} | "
                     f"{_fmt(r.cold_start_s)} | {_fmt(r.size_mb)} | {r.note} |")
    return "\n".join(lines)


def pareto_front(rows: list[BenchRow]) -> list[BenchRow]:
    """Rows no other row of the same task beats on both metric (higher) and p50 latency (lower)."""
    front = []
    for r in rows:
        if r.metric is None:
            continue
        dominated = any(o is not r and o.task == r.task and o.metric is not None and o.metric >= r.metric
                        and o.p50 <= r.p50 and (o.metric > r.metric or o.p50 < r.p50) for o in rows)
        if not dominated:
            front.append(r)
    return front


def _plot(rows: list[BenchRow], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    tasks = sorted({r.task for r in rows})
    fig, axes = plt.subplots(1, len(tasks), figsize=(6 * len(tasks), 4.5), squeeze=False)
    front = pareto_front(rows)
    for ax, task in zip(axes[0], tasks):
        mine = [r for r in rows if r.task == task and r.metric is not None]
        for r in mine:
            ax.scatter(r.p50, r.metric, s=60, marker="*" if r in front else "o")
            ax.annotate(f"{r.engine} {r.precision}", (r.p50, r.metric), textcoords="offset points",
                        xytext=(5, 5), fontsize=8)
        pts = sorted((r.p50, r.metric) for r in mine if r in front)
        if len(pts) > 1:
            ax.plot(*zip(*pts), "--", color="gray", linewidth=1)
        if not mine:  # random-weights models only: latency, no metric
            ax.text(0.5, 0.5, "random weights: latency only\n(no metric)", ha="center", va="center",
                    transform=ax.transAxes)
        else:
            ax.set_xscale("log")
        ax.set_xlabel("latency p50 per frame (ms, log)")
        ax.set_ylabel(mine[0].metric_name if mine else "metric")
        ax.set_title(f"{task}: metric vs latency (stars: Pareto front)")
        ax.grid(True, alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def write_report(rows: list[BenchRow], notes: list[str], out: Path, *, data: str, n: int) -> None:
    """Write ``bench.md``, ``bench.json`` and ``pareto.png`` into ``out``."""
    out.mkdir(parents=True, exist_ok=True)
    machine = f"{platform.machine()}, {os.cpu_count()} CPUs, {platform.platform()}"
    table = markdown_table(rows)
    text = (f"# edgevlp bench\n\nmachine: {machine}; data: {data}, {n} images for the metric; latency per "
            f"frame (ms) measured in this run.\n\nDefinitions: {DEFINITIONS}.\n\n{table}\n\n"
            + "\n".join(f"- {n_}" for n_ in notes) + "\n")
    (out / "bench.md").write_text(text)
    (out / "bench.json").write_text(json.dumps({"machine": machine, "data": data, "n_images": n,
                                                "definitions": DEFINITIONS,
                                                "rows": [asdict(r) for r in rows], "notes": notes},
                                               indent=2))
    _plot(rows, out / "pareto.png")
