"""What ``edgevlp bench`` measures: one :class:`BenchRow` per configuration, and the definitions of its
figures (read by the runner that fills the rows and by the report that prints them)."""

from __future__ import annotations

from dataclasses import dataclass, field

__all__ = ["BenchRow", "DEFINITIONS"]

DEFINITIONS = (
    "ms/image: p50 of one end-to-end call per frame (BGR frame -> caption text / post-processed boxes); "
    "encode: p50 of the vision part; decode ms/token: p50 over frames of (t_k - t_1) / (k - 1), t_k the "
    "call generating k tokens, t_1 the same call with max_new_tokens=1 (random weights: k = "
    "max_new_tokens exactly, min_new_tokens = max_new_tokens on every engine; trained models: k as "
    "generated); peak RSS: VmHWM of a fresh "
    "process that imports, loads and runs once; size: model files (bundle without its JSON, or safetensors)"
)


@dataclass
class BenchRow:
    """One measured configuration; ``model`` groups a model's rows with its references."""

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
    model: str = ""
    decode_ms_per_token: float | None = None
    tokens: int | None = None  # p50 of the new tokens per caption
    random_weights: bool = False

    @property
    def p50(self) -> float:
        return self.latency_ms.get("total", {}).get("p50", float("nan"))
