"""Load test of a Triton server: N simulated cameras, open loop (``edgevlp bench --server URL``).

Each camera sends a detection request at ``detect_fps`` (its own random phase) and, when the server
holds a captioner, the first ``caption_streams`` cameras a caption request every ``caption_every``
seconds, whether or not the previous
answers came back (open loop: a slow server shows as latency, late and dropped frames, not as a
politely lower request rate). A camera with ``max_outstanding`` detections in flight drops the frame
that falls due (what a camera app with a one-frame queue does). Per N: achieved detections/s, p50/p99
end-to-end latency (from the frame's due time to its answer), late frames (answered after the next one
was due), dropped frames, and from the server's own metrics the mean time a request queued vs computed
and the image leaf's mean batch size. The largest N whose detection p99 stays under the frame
interval with no frame dropped is the "max streams" figure.

Example:
    >>> rows = load_test("grpc://127.0.0.1:8001", streams=(1, 4, 16), seconds=8)   # doctest: +SKIP
    >>> print(load_table(rows))                                                      # doctest: +SKIP
"""

from __future__ import annotations

import heapq
import random
import threading
import time
import urllib.request
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any
from urllib.parse import urlparse

import numpy as np

from edgevlp.errors import InputError, ServerError

__all__ = ["LoadRow", "load_test", "load_table", "max_streams", "metrics_url_for", "scrape_metrics"]


@dataclass
class LoadRow:
    """One N of the sweep (latencies in ms)."""

    streams: int
    seconds: float
    detect_offered: int = 0
    detect_done: int = 0
    detect_fps: float = 0.0
    detect_p50: float = float("nan")
    detect_p99: float = float("nan")
    late: int = 0
    dropped: int = 0
    errors: int = 0
    caption_streams: int = 0
    caption_done: int = 0
    caption_p50: float = float("nan")
    caption_p99: float = float("nan")
    queue_ms: float = float("nan")
    compute_ms: float = float("nan")
    batch: float = float("nan")
    notes: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def metrics_url_for(url: str) -> str:
    """The metrics endpoint of ``edgevlp serve``'s layout: HTTP PORT, gRPC PORT+1, metrics PORT+2.

    Example:
        >>> metrics_url_for("grpc://127.0.0.1:8001")
        'http://127.0.0.1:8002/metrics'
    """
    parsed = urlparse(url if "://" in url else f"grpc://{url}")
    if parsed.port is None:
        raise InputError(f"server URL {url!r} has no port")
    port = parsed.port + (1 if parsed.scheme == "grpc" else 2)
    return f"http://{parsed.hostname}:{port}/metrics"


def scrape_metrics(url: str) -> dict[tuple[str, str], float]:
    """``{(metric, model): value}`` of the Prometheus text at ``url`` (the nv_inference_* counters)."""
    try:
        text = urllib.request.urlopen(url, timeout=5).read().decode()
    except OSError as err:
        raise ServerError(f"cannot read the server's metrics at {url} ({err}); pass --metrics URL") from None
    out: dict[tuple[str, str], float] = {}
    for line in text.splitlines():
        if not line.startswith("nv_inference_") or 'model="' not in line:
            continue
        name, rest = line.split("{", 1)
        model = rest.split('model="', 1)[1].split('"', 1)[0]
        out[name, model] = out.get((name, model), 0.0) + float(line.rsplit(" ", 1)[1])
    return out


def _delta(after: dict, before: dict, name: str, model: str) -> float:
    return after.get((name, model), 0.0) - before.get((name, model), 0.0)


def _pct(values: Sequence[float], q: float) -> float:
    return float(np.percentile(np.asarray(values), q)) if len(values) else float("nan")


class _Camera:
    def __init__(self) -> None:
        self.outstanding = 0
        self.lock = threading.Lock()


def _run_one(client: Any, n: int, *, seconds: float, detect_fps: float, caption_every: float | None,
             caption_streams: int,
             detect_inputs: Callable[[], list[Any]], caption_inputs: Callable[[], list[Any]] | None,
             models: dict[str, str], max_outstanding: int, seed: int) -> LoadRow:
    from edgevlp.serve.repository import BOXES, TEXT

    rng = random.Random(seed)
    interval = 1.0 / detect_fps
    cams = [_Camera() for _ in range(n)]
    events: list[tuple[float, int, int, str]] = []  # (due, seq, camera, kind)
    seq = 0
    for c in range(n):
        phase = rng.random() * interval
        k = 0
        while phase + k * interval < seconds:
            events.append((phase + k * interval, seq, c, "detect"))
            seq, k = seq + 1, k + 1
        if caption_every is not None and caption_inputs is not None and c < caption_streams:
            cphase = rng.random() * caption_every
            k = 0
            while cphase + k * caption_every < seconds:
                events.append((cphase + k * caption_every, seq, c, "caption"))
                seq, k = seq + 1, k + 1
    heapq.heapify(events)
    row = LoadRow(streams=n, seconds=seconds,
                  caption_streams=min(n, caption_streams) if caption_inputs is not None and caption_every else 0)
    lat: dict[str, list[float]] = {"detect": [], "caption": []}
    lock = threading.Lock()
    pending = threading.Semaphore(0)
    sent = 0
    t0 = time.monotonic() + 0.05

    def done_for(cam: _Camera, kind: str, due: float) -> Callable[[Any, str | None], None]:
        def done(out: Any, error: str | None) -> None:
            ms = (time.monotonic() - due) * 1e3
            with lock:
                if error is not None:
                    row.errors += 1
                    row.notes.setdefault("first_error", error)
                else:
                    lat[kind].append(ms)
                    if kind == "detect" and ms > interval * 1e3:
                        row.late += 1
            if kind == "detect":
                with cam.lock:
                    cam.outstanding -= 1
            pending.release()
        return done

    while events:
        due_rel, _, c, kind = heapq.heappop(events)
        due = t0 + due_rel
        wait = due - time.monotonic()
        if wait > 0:
            time.sleep(wait)
        cam = cams[c]
        if kind == "detect":
            row.detect_offered += 1
            with cam.lock:
                if cam.outstanding >= max_outstanding:
                    row.dropped += 1
                    continue
                cam.outstanding += 1
            client.infer_async(models["detect"], detect_inputs(), (BOXES,), done_for(cam, kind, due))
        else:
            assert caption_inputs is not None
            client.infer_async(models["caption"], caption_inputs(), (TEXT,), done_for(cam, kind, due))
        sent += 1
    end = time.monotonic()
    drain_deadline = end + 30.0
    for _ in range(sent):
        if not pending.acquire(timeout=max(0.0, drain_deadline - time.monotonic())):
            row.notes["unanswered"] = row.notes.get("unanswered", 0) + 1
    row.detect_done = len(lat["detect"])
    row.detect_fps = round(row.detect_done / max(end - t0, 1e-6), 2)
    row.detect_p50, row.detect_p99 = _pct(lat["detect"], 50), _pct(lat["detect"], 99)
    row.caption_done = len(lat["caption"])
    row.caption_p50, row.caption_p99 = _pct(lat["caption"], 50), _pct(lat["caption"], 99)
    return row


def load_test(url: str, streams: Sequence[int] = (1, 2, 4, 8, 16, 32), *, seconds: float = 10.0,
              detect_fps: float = 5.0, caption_every: float | None = 2.0, caption_streams: int = 8, prompts: Sequence[str] = ("a red circle", "a blue square"),
              threshold: float = 0.1, frame: np.ndarray | None = None, metrics_url: str | None = None,
              max_outstanding: int = 2, seed: int = 0,
              on_row: Callable[[LoadRow], None] | None = None) -> list[LoadRow]:
    """Sweep ``streams`` against the server at ``url`` (detector required; the first ``caption_streams``
    cameras also ask for a caption every ``caption_every`` s when the server holds a captioner).
    ``frame`` defaults to a 640x480 photo."""
    from edgevlp.serve import Client

    if not streams or any(int(n) < 1 for n in streams):
        raise InputError(f"--streams must be positive whole numbers, e.g. 1,2,4,8,16,32; got {list(streams)}")
    if not 0 < detect_fps <= 120:
        raise InputError(f"detection fps must be in (0, 120], got {detect_fps}")
    if seconds <= 0:
        raise InputError(f"--seconds must be > 0, got {seconds}")
    client = Client(url, timeout=60.0)
    served = client.models()
    if "detect" not in served:
        raise InputError(f"the server at {url} serves no detector (it serves: {', '.join(served) or 'none'}); "
                         "the load test sends detections at its fps")
    if frame is None:
        frame = _photo()
    metrics = metrics_url or metrics_url_for(url)
    leaf = f"{served['detect']}_image_encoder"
    det = client.detect_inputs(frame, list(prompts), threshold)
    cap = client.caption_inputs(frame) if "caption" in served and caption_every else None
    rows = []
    try:
        for n in streams:
            before = scrape_metrics(metrics)
            row = _run_one(client, int(n), seconds=seconds, detect_fps=detect_fps,
                           caption_every=caption_every if cap is not None else None,
                           caption_streams=caption_streams,
                           detect_inputs=lambda: det, caption_inputs=(lambda: cap) if cap is not None else None,
                           models=served, max_outstanding=max_outstanding, seed=seed + int(n))
            after = scrape_metrics(metrics)
            entry = served["detect"]
            ok = _delta(after, before, "nv_inference_request_success", entry)
            if ok:
                # Triton adds an execution's duration once for every request in it: per request, the
                # compute sum is the mean time of the execution a request ran in
                requests = max(_delta(after, before, "nv_inference_request_success", leaf), 1)
                row.queue_ms = _delta(after, before, "nv_inference_queue_duration_us", leaf) / requests / 1e3
                row.compute_ms = _delta(after, before, "nv_inference_compute_infer_duration_us", leaf) / requests / 1e3
                execs = _delta(after, before, "nv_inference_exec_count", leaf)
                row.batch = _delta(after, before, "nv_inference_count", leaf) / execs if execs else float("nan")
            rows.append(row)
            if on_row is not None:
                on_row(row)
    finally:
        client.close()
    return rows


def _photo() -> np.ndarray:
    import cv2

    try:
        from skimage import data

        rgb = data.astronaut()
    except ImportError:  # a lean install: a deterministic synthetic frame
        rgb = np.random.default_rng(0).integers(0, 255, (480, 640, 3), dtype=np.uint8)
    return np.ascontiguousarray(cv2.resize(rgb[..., ::-1], (640, 480)))


def max_streams(rows: Sequence[LoadRow], detect_fps: float = 5.0) -> int:
    """The largest N whose detection p99 < the frame interval, with no frame dropped and no error."""
    limit = 1e3 / detect_fps
    good = [r.streams for r in rows if r.detect_p99 < limit and r.dropped == 0 and r.errors == 0]
    return max(good) if good else 0


def load_table(rows: Sequence[LoadRow], title: str = "") -> str:
    """Markdown table of a sweep."""
    head = ("| streams | detect/s | p50 ms | p99 ms | late | dropped | errors | caption streams | captions | "
            "caption p50 | caption p99 | queue ms | compute ms | batch |")
    lines = ([f"**{title}**", ""] if title else []) + [head, "|" + "---|" * 14]
    for r in rows:
        lines.append(f"| {r.streams} | {r.detect_fps:.1f} | {r.detect_p50:.0f} | {r.detect_p99:.0f} | {r.late} | "
                     f"{r.dropped} | {r.errors} | {r.caption_streams} | {r.caption_done} | {r.caption_p50:.0f} | "
                     f"{r.caption_p99:.0f} | "
                     f"{r.queue_ms:.1f} | {r.compute_ms:.1f} | {r.batch:.2f} |")
    return "\n".join(lines)
