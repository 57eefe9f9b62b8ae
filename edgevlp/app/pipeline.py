"""The camera app's loop: capture thread -> detector on every frame it takes -> overlay -> sinks, with
the captioner on its own thread and cadence (its latest caption is shown on every frame).

Models are passed in (load them with :func:`load_models`); so is the source, for tests and embedders.

Example:
    >>> from edgevlp.app import AppConfig, load_models, run_app
    >>> models = load_models(["bundles/blip-cpu", "bundles/owl-cpu"])              # doctest: +SKIP
    >>> config = AppConfig(source="clip.mp4", prompts=("cup",), headless=True, output="out/run")
    >>> summary = run_app(config, **models, report=print)                          # doctest: +SKIP
    >>> summary["fps"]                                                              # doctest: +SKIP
"""

from __future__ import annotations

import collections
import logging
import random
import threading
import time
from array import array
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from edgevlp.app.capture import Backoff, Capture, Frame, FrameSlot, VideoSource, open_source
from edgevlp.app.config import AppConfig
from edgevlp.app.events import CaptionEvents, EventTracker
from edgevlp.app.overlay import render
from edgevlp.app.prompts import PromptsFile, parse_question_text
from edgevlp.app.sinks import FileSink, WindowSink
from edgevlp.errors import EdgeVLPError, InputError, SourceError

__all__ = ["run_app", "load_models", "LatencyStats", "CaptionWorker", "Asking", "format_summary"]

log = logging.getLogger("edgevlp.app")
_QUIT_KEYS = (ord("q"), 27)  # q, Esc
_PROMPTS_KEY = ord("p")


def load_models(bundles: Sequence[str], backend: str | None = None, device: str | None = None) -> dict[str, Any]:
    """``{"captioner": ..., "detector": ..., "assistant": ...}`` (the task's app slot) from at most one bundle
    of each task (by manifest task).

    Example:
        >>> load_models(["bundles/owl-cpu"])             # doctest: +SKIP
        {'detector': <edgevlp.runtime.detector.Detector object at ...>}
    """
    from edgevlp.bundle import read_manifest
    from edgevlp.runtime import load
    from edgevlp.tasks import get_task

    if not 1 <= len(bundles) <= 2:
        raise InputError(f"give one captioner (or VLM) and/or one detector bundle, got {len(bundles)} bundles")
    tasks = {}
    for bundle in bundles:  # check the pairing before opening any graph
        task = read_manifest(bundle, verify=False).task
        if task in tasks:
            raise InputError(f"two {task} bundles given ({tasks[task]} and {bundle}): pass at most one "
                             "captioner and one detector")
        tasks[task] = bundle
    models: dict[str, Any] = {}
    for task, bundle in tasks.items():
        models[get_task(task).app_slot] = load(bundle, backend=backend, device=device)
    if "captioner" in models and "assistant" in models:
        raise InputError("a captioner and a VLM (vqa) bundle both write the caption line: pass one of them")
    return models


class Asking:
    """A VLM as the app's captioner: ``caption(frame)`` answers ``question`` about it (None: the bundle's
    default captioning prompt); the answer is the caption line."""

    def __init__(self, assistant: Any, question: str | None) -> None:
        self.assistant = assistant
        self.question = question
        self.manifest = assistant.manifest
        self.backend = getattr(assistant, "backend", "")

    def caption(self, frame: np.ndarray, **generation: Any) -> Any:
        return self.assistant.ask(frame, self.question, **generation)


class LatencyStats:
    """Per-stage latencies (ms) with percentiles over a uniform sample of at most ``keep`` values per
    stage, so memory stays flat on runs of any length.

    Example:
        >>> stats = LatencyStats()
        >>> for ms in (1.0, 2.0, 3.0, 4.0): stats.add({"detect": ms})
        >>> stats.summary()["detect"]["p50"]
        2.5
    """

    def __init__(self, keep: int = 20000, seed: int = 0) -> None:
        self.keep = keep
        self._values: dict[str, array] = {}
        self._counts: dict[str, int] = {}
        self._sums: dict[str, float] = {}
        self._rng = random.Random(seed)

    def add(self, timings: Mapping[str, float]) -> None:
        for stage, ms in timings.items():
            values = self._values.setdefault(stage, array("d"))
            n = self._counts.get(stage, 0) + 1
            self._counts[stage] = n
            self._sums[stage] = self._sums.get(stage, 0.0) + float(ms)
            if len(values) < self.keep:
                values.append(float(ms))
            else:  # reservoir sampling (Algorithm R)
                j = self._rng.randrange(n)
                if j < self.keep:
                    values[j] = float(ms)

    def summary(self) -> dict[str, dict[str, float]]:
        out = {}
        for stage, values in self._values.items():
            p50, p90, p99 = np.percentile(np.frombuffer(values, dtype=np.float64), [50, 90, 99])
            out[stage] = {"p50": round(float(p50), 3), "p90": round(float(p90), 3), "p99": round(float(p99), 3),
                          "mean": round(self._sums[stage] / self._counts[stage], 3), "n": self._counts[stage]}
        return out


@dataclass(frozen=True)
class CaptionUpdate:
    """A finished caption: ``text``, the source ``frame`` it describes, stage ``timings`` and its ``seq``."""

    text: str
    frame: int
    timings: dict[str, float] = field(default_factory=dict)
    seq: int = 0


class CaptionWorker(threading.Thread):
    """Captions the newest submitted frame on its own thread; :attr:`latest` is the newest caption.

    Example:
        >>> worker = CaptionWorker(captioner); worker.start()        # doctest: +SKIP
        >>> worker.submit(frame); worker.latest                       # doctest: +SKIP
    """

    def __init__(self, captioner: Any, generation: Mapping[str, Any] | None = None) -> None:
        super().__init__(name="edgevlp-caption", daemon=True)
        self.captioner = captioner
        self.generation = dict(generation or {})
        self.slot: FrameSlot[Frame] = FrameSlot(1, drop=True)
        self.latest: CaptionUpdate | None = None
        self.error: BaseException | None = None
        self.count = 0
        self.finished: collections.deque[CaptionUpdate] = collections.deque(maxlen=1000)  # drained by the loop
        self._lock = threading.Lock()

    def caption(self, frame: Frame) -> CaptionUpdate:
        """Caption ``frame`` now, on the calling thread, and publish it."""
        t0 = time.perf_counter()
        result = self.captioner.caption(frame.image, **self.generation)
        timings = {f"caption_{k}": float(v) for k, v in result.timings.items()}
        timings["caption"] = (time.perf_counter() - t0) * 1e3
        with self._lock:
            self.count += 1
            self.latest = CaptionUpdate(str(result.text), frame.index, timings, self.count)
            self.finished.append(self.latest)
            return self.latest

    def submit(self, frame: Frame) -> None:
        """Queue ``frame`` (replacing one not started yet)."""
        self.slot.put(frame)

    def run(self) -> None:
        while True:
            frame = self.slot.get(timeout=0.1)
            if frame is None:
                if self.slot.closed:
                    return
                continue
            try:
                self.caption(frame)
            except BaseException as err:  # noqa: BLE001 - re-raised on the main loop
                self.error = err
                return

    def stop(self, join_s: float = 5.0) -> None:
        self.slot.close()
        if self.is_alive():
            self.join(join_s)


def _detections_json(dets: Any) -> list[dict[str, Any]]:
    names = dets.label_names
    return [{"box": [round(float(v), 1) for v in dets.boxes_xyxy[i]], "score": round(float(dets.scores[i]), 4),
             "label": names[int(dets.labels[i])] if 0 <= int(dets.labels[i]) < len(names) else int(dets.labels[i])}
            for i in range(len(dets))]


class _Run:
    """State of one :func:`run_app` call (kept off the public surface)."""

    def __init__(self, config: AppConfig, captioner: Any, detector: Any, on_event: Callable[[str], None]) -> None:
        self.config = config
        self.detector = detector
        self.on_event = on_event
        gen = {} if config.max_new_tokens is None else {"max_new_tokens": config.max_new_tokens}
        self.worker = CaptionWorker(captioner, gen) if captioner is not None else None
        self.stats = LatencyStats()
        self.prompts: list[str] = list(config.prompts)
        self.watcher = PromptsFile(config.prompts_file, config.prompts_poll_s) if config.prompts_file else None
        self.asking = captioner if isinstance(captioner, Asking) else None
        self.question_file = PromptsFile(config.ask_file, config.prompts_poll_s, parse=parse_question_text,
                                         what="question") if config.ask_file else None
        self.question_changes = 0
        self.processed = 0
        self.prompt_changes = 0
        self.threshold = config.threshold
        self.paused = False
        self.viewer: Any = None  # edgevlp.app.web.server.WebViewer with --serve
        self.mqtt: Any = None  # edgevlp.app.mqtt.MqttEvents with --mqtt
        self.tracker = EventTracker()
        self.caption_events = CaptionEvents()
        self.events = 0
        self.last_caption_seq = 0
        self.last_submit = -1e9
        self.fps_ema = 0.0
        self.last_done: float | None = None
        self.first_start: float | None = None
        self.end: float | None = None

    def start_prompts(self) -> None:
        if self.detector is None:
            if self.prompts or self.watcher:
                raise InputError("--prompts/--prompts-file need a detector bundle (task detect); none was given")
            return
        if self.watcher is not None:
            if self.prompts:
                self.watcher.mark_seen()  # --prompts first; a later change of the file replaces them
            else:
                self.prompts = self.watcher.read()
        if not self.prompts:
            raise InputError("the detector needs prompts: pass --prompts \"cup, person\" or --prompts-file FILE")
        self.detector.set_prompts(self.prompts)

    def start_question(self) -> None:
        if self.question_file is None:
            return
        if self.asking is None:
            raise InputError("--ask-file needs a VLM bundle (task vqa); none was given")
        if self.config.ask is not None:
            self.question_file.mark_seen()  # --ask first; a later change of the file replaces it
        else:
            self.asking.question = self.question_file.read()[0]

    def check_question(self) -> None:
        if self.question_file is None or self.asking is None:
            return
        try:
            new = self.question_file.poll()
        except InputError as err:
            self.on_event(f"question unchanged: {err}")
            return
        if new:
            self.asking.question = new[0]
            self.question_changes += 1
            self.on_event(f"question now: {new[0]}")

    def check_prompts(self, force: bool = False) -> dict[str, float]:
        if self.watcher is None or self.detector is None:
            if force:
                self.on_event("no --prompts-file to re-read")
            return {}
        try:
            new = self.watcher.poll(force=force)
            if new is None:
                return {}
            return {"prompts": self.use_prompts(new)}
        except InputError as err:
            self.on_event(f"prompts unchanged: {err}")
            return {}

    def use_prompts(self, new: list[str]) -> float:
        """Give the detector ``new`` prompts (an invalid set raises :class:`InputError`, nothing changed);
        every remote control sees them. Returns the milliseconds the text encoder took."""
        if self.detector is None:
            raise InputError("this app runs no detector: there are no prompts to set")
        t0 = time.perf_counter()
        self.detector.set_prompts(new)
        ms = (time.perf_counter() - t0) * 1e3
        self.prompts = list(new)
        self.prompt_changes += 1
        self.tell_remotes(prompts=self.prompts)
        self.on_event(f"prompts now: {', '.join(self.prompts)}")
        return ms

    def tell_remotes(self, **state: Any) -> None:
        """The new state, to every web viewer and the broker."""
        for r in self.remotes:
            r.applied(**state)

    @property
    def remotes(self) -> list[Any]:
        """Where changes may come from besides the prompts file: the web viewers, the MQTT broker."""
        return [r for r in (self.viewer, self.mqtt) if r is not None]

    def apply_remote(self) -> dict[str, float]:
        """The web viewers' and the broker's changes since the last frame: prompts, threshold, pause;
        each source is told what became of its change, and every source sees the new state."""
        timings: dict[str, float] = {}
        for remote in self.remotes:
            changes = remote.take_changes()
            if "prompts" in changes:
                try:
                    timings["prompts"] = self.use_prompts(changes["prompts"])
                except InputError as err:
                    remote.applied(error=str(err))
                    self.on_event(f"prompts unchanged: {err}")
            if "question" in changes and self.asking is not None:
                self.asking.question = changes["question"]
                self.question_changes += 1
                self.tell_remotes(question=self.asking.question)
                self.on_event(f"question now: {self.asking.question}")
            if "threshold" in changes:
                self.threshold = float(changes["threshold"])
                self.tell_remotes(threshold=self.threshold)
            if "paused" in changes:
                self.paused = bool(changes["paused"])
                self.tell_remotes(paused=self.paused)
                self.on_event("paused" if self.paused else "resumed")
        return timings

    def publish(self, frame: Frame, capture: Capture, found: list[dict[str, Any]] | None, caption: Any,
                timings: Mapping[str, float]) -> list[dict[str, Any]]:
        """This frame's events (tracked objects, caption changes) to the broker, its frame and results to
        the web viewers; returns the events (for the log)."""
        events = self.tracker.update(found, frame=self.processed, t=frame.t) if found is not None else []
        events += self.caption_events.update(caption.text if caption else None, frame=self.processed, t=frame.t)
        self.events += len(events)
        if self.mqtt is not None:
            self.mqtt.publish(events)
            self.mqtt.publish_state(fps=round(self.fps_ema, 2), frames=self.processed, prompts=self.prompts,
                                    threshold=self.threshold)
        if self.viewer is None:
            return events
        results = {"frame": self.processed, "source_frame": frame.index, "detections": found,
                   "caption": caption.text if caption else None}
        stats = {"fps": round(self.fps_ema, 2), "dropped": capture.dropped, "frames": self.processed,
                 "timings": {k: round(float(v), 2) for k, v in timings.items()}}
        self.viewer.publish(frame.image, results, stats)
        return events

    def caption_for(self, frame: Frame, timings: dict[str, float]) -> Any:
        worker = self.worker
        if worker is None:
            return None
        if worker.error is not None:
            raise worker.error
        cadence = self.config.caption_every
        if worker.latest is None and not worker.is_alive():
            worker.caption(frame)  # the first caption synchronously: no frame goes out without one
            worker.start()
            self.last_submit = time.monotonic()
        elif cadence.unit == "frames":
            if self.processed % int(cadence.value) == 0:
                worker.submit(frame)
        elif time.monotonic() - self.last_submit >= cadence.value:
            worker.submit(frame)
            self.last_submit = time.monotonic()
        while worker.finished:  # every caption's timings count in the statistics, not only the latest
            self.stats.add(worker.finished.popleft().timings)
        latest = worker.latest
        if latest is not None and latest.seq != self.last_caption_seq:
            self.last_caption_seq = latest.seq
            timings.update(latest.timings)  # the JSONL line of the frame where a new caption appears
        return latest

    def hud(self, capture: Capture, detections: Any, timings: Mapping[str, float]) -> list[str]:
        lines = [f"{self.fps_ema:.1f} FPS  frame {self.processed}  dropped {capture.dropped}"]
        if "detect" in timings:
            lines.append(f"detect {timings['detect']:.0f} ms (pre {timings.get('detect_preprocess', 0):.0f} "
                         f"enc {timings.get('detect_encode', 0):.0f} post {timings.get('detect_postprocess', 0):.0f})"
                         f"  {len(detections)} boxes")
        if self.worker is not None and self.worker.latest is not None:
            t = self.worker.latest.timings
            lines.append(f"caption {t.get('caption', 0):.0f} ms (enc {t.get('caption_encode', 0):.0f} "
                         f"dec {t.get('caption_decode', 0):.0f}) every {self.config.caption_every}")
        if self.detector is not None:
            text = ", ".join(self.prompts)
            lines.append("prompts: " + (text if len(text) <= 60 else text[:57] + "..."))
        if self.asking is not None and self.asking.question:
            q = self.asking.question
            lines.append("Q: " + (q if len(q) <= 60 else q[:57] + "..."))
        return lines

    def tick(self, now: float) -> None:
        if self.last_done is not None:
            dt = max(now - self.last_done, 1e-6)
            self.fps_ema = 1.0 / dt if self.fps_ema == 0 else 0.9 * self.fps_ema + 0.1 / dt
        self.last_done = now


    def step(self, frame: Frame, capture: Capture, sink: FileSink | None, window: WindowSink | None) -> str:
        """Process one frame: prompts, detection, caption, overlay, outputs. Returns a stop reason or ''."""
        config, detector = self.config, self.detector
        t_start = time.perf_counter()
        timings = self.check_prompts()
        timings.update(self.apply_remote())
        if self.paused:
            return ""
        self.check_question()
        detections = None
        if detector is not None:
            t0 = time.perf_counter()
            detections = detector.detect(frame.image, threshold=self.threshold)
            timings["detect"] = (time.perf_counter() - t0) * 1e3
            timings.update({f"detect_{k}": float(v) for k, v in detections.timings.items()})
        caption = self.caption_for(frame, timings)
        self.tick(time.perf_counter())
        found = _detections_json(detections) if detections is not None else None
        events = self.publish(frame, capture, found, caption, timings)
        annotated = None
        if sink is not None or window is not None:
            t0 = time.perf_counter()
            annotated = render(frame.image, detections, caption.text if caption else None,
                               self.hud(capture, detections, timings))
            timings["overlay"] = (time.perf_counter() - t0) * 1e3
        timings["process"] = (time.perf_counter() - t_start) * 1e3
        timings["end_to_end"] = (time.monotonic() - frame.monotonic) * 1e3
        if sink is not None:
            record = {"frame": self.processed, "source_frame": frame.index, "timestamp": round(frame.timestamp, 4),
                      "t": round(frame.t, 4), "caption": caption.text if caption else None,
                      "caption_frame": caption.frame if caption else None,
                      "detections": found, "events": events,
                      "timings": {k: round(v, 3) for k, v in timings.items()}}
            t0 = time.perf_counter()
            sink.write(annotated, record)
            timings["write"] = (time.perf_counter() - t0) * 1e3
        self.stats.add({k: v for k, v in timings.items() if not k.startswith("caption")})
        self.processed += 1
        self.end = time.perf_counter()
        if window is not None:
            key = window.show(annotated)
            if key == _PROMPTS_KEY:
                self.stats.add(self.check_prompts(force=True))
            if key in _QUIT_KEYS:
                return "quit key"
            if window.closed_by_user:
                return "window closed"
        if config.max_frames is not None and self.processed >= config.max_frames:
            return "max frames"
        return ""

def run_app(config: AppConfig, *, captioner: Any = None, detector: Any = None, assistant: Any = None,
            source: VideoSource | None = None,
            window: WindowSink | None = None, report: Callable[[str], None] | None = None,
            on_event: Callable[[str], None] | None = None, stop: threading.Event | None = None) -> dict[str, Any]:
    """Run the app until the source ends, ``max_frames``, the quit key, Ctrl-C/SIGTERM, ``stop`` being
    set (another thread's Ctrl-C: the run ends as "interrupted") or a fault.

    Outputs are flushed and closed and ``summary.json`` written in every case; ``report`` gets the
    summary text. A lost source raises :class:`SourceError` afterwards, Ctrl-C ``KeyboardInterrupt``.
    Returns the summary dict.
    """
    if assistant is not None:
        if captioner is not None:
            raise InputError("a captioner and a VLM (vqa) bundle both write the caption line: pass one of them")
        captioner = Asking(assistant, config.ask)
    elif config.ask is not None:
        raise InputError("--ask needs a VLM bundle (task vqa, e.g. an exported SmolVLM); none was given")
    if captioner is None and detector is None:
        raise InputError("no model: pass a captioner bundle (task caption) and/or a detector bundle (task detect)")
    events = on_event or (lambda message: log.warning("%s", message))
    if config.ask_file is not None and assistant is None:
        raise InputError("--ask-file needs a VLM bundle (task vqa, e.g. an exported SmolVLM); none was given")
    run = _Run(config, captioner, detector, events)
    run.start_prompts()
    run.start_question()
    own_window = window is None and not config.headless
    if own_window:
        window = WindowSink()
    src = source if source is not None else open_source(config.source, timeout_s=config.timeout_s,
                                                        loop=config.loop)
    capture = Capture(src, queue_size=config.queue_size, fps_limit=config.fps_limit, timeout_s=config.timeout_s,
                      backoff=Backoff(config.reconnect, config.backoff_s, config.backoff_max_s), on_event=events)
    if config.output:
        FileSink.check(config.output, force=config.force)  # fail before the source opens
    if config.serve:
        from edgevlp.app.remote import parse_serve_address
        from edgevlp.app.web.server import WebViewer

        host, port = parse_serve_address(config.serve)
        run.viewer = WebViewer(host, port, token=config.token, view_token=config.view_token,
                               no_auth=config.no_auth, allow_hosts=config.allow_hosts, prompts=run.prompts,
                               threshold=config.threshold, detector=detector is not None,
                               assistant=run.asking is not None,
                               question=run.asking.question if run.asking is not None else None,
                               max_fps=config.serve_fps).start()
        shown = f"web viewer: {run.viewer.url}"
        if run.viewer.view_url:
            shown += f" (watch only: {run.viewer.view_url})"
        if run.viewer.no_auth and not run.viewer.loopback:
            shown += " - no token (--no-auth): anyone who can reach this address can steer the app"
        events(shown)
    if config.mqtt:
        from edgevlp.app.mqtt import MqttEvents

        run.mqtt = MqttEvents(config.mqtt, on_event=events).start()
        run.mqtt.state.update(prompts=run.prompts, threshold=run.threshold)
    sink: FileSink | None = None
    stopped, error = "end of stream", None
    try:
        for frame in capture.frames():
            if run.first_start is None:
                run.first_start = time.perf_counter()
                if config.output:  # files appear with the first frame: a failed open leaves none
                    sink = FileSink(config.output, fps=config.fps_limit or capture.source_fps or 30.0,
                                    force=config.force)
            reason = run.step(frame, capture, sink, window)
            if stop is not None and stop.is_set():
                reason = "interrupted"
            if reason:
                stopped = reason
                break
    except SourceError as err:
        stopped, error = "source error", str(err)
        raise
    except KeyboardInterrupt:
        stopped = "interrupted"
        raise
    except BaseException as err:
        stopped, error = "error", f"{type(err).__name__}: {err}" if not isinstance(err, EdgeVLPError) else str(err)
        raise
    finally:
        capture.stop()
        if run.viewer is not None:
            run.viewer.stop()
        if run.mqtt is not None:
            run.mqtt.publish(run.tracker.finish(time.perf_counter() - (run.first_start or 0.0)))
            run.mqtt.stop()
        if run.worker is not None:
            run.worker.stop()
            while run.worker.finished:  # captions that finished after the last frame
                run.stats.add(run.worker.finished.popleft().timings)
        if own_window and window is not None:
            window.close()
        summary = _summary(config, run, capture, stopped, error, captioner, detector, sink)
        if sink is not None:
            sink.close(summary)
        if report is not None and run.processed:
            report(format_summary(summary))
    return summary


def _model_info(model: Any) -> dict[str, Any] | None:
    if model is None:
        return None
    m = getattr(model, "manifest", None)
    if m is None:  # e.g. a served model (edgevlp.serve.client.RemoteDetector)
        return {"model": type(model).__name__, "backend": getattr(model, "backend", None)}
    return {"bundle": str(m.path) if m.path else None, "family": m.family, "target": m.target,
            "precision": m.precision, "backend": getattr(model, "backend", None)}


def _summary(config: AppConfig, run: _Run, capture: Capture, stopped: str, error: str | None, captioner: Any,
             detector: Any, sink: FileSink | None) -> dict[str, Any]:
    duration = (run.end - run.first_start) if run.first_start is not None and run.end is not None else 0.0
    captions = run.worker.count if run.worker is not None else 0
    return {
        "frames": run.processed, "captured": capture.captured, "dropped": capture.dropped,
        "max_queue": capture.slot.max_depth, "queue_size": config.queue_size,
        "duration_s": round(duration, 3), "fps": round(run.processed / duration, 2) if duration > 0 else None,
        "captions": captions, "captions_per_s": round(captions / duration, 2) if duration > 0 else None,
        "reconnects": capture.reconnects, "stopped": stopped, "error": error, "source": config.source,
        "models": {"captioner": _model_info(captioner), "detector": _model_info(detector)},
        **({"question": run.asking.question, "question_changes": run.question_changes}
           if run.asking is not None else {}),
        "prompts": run.prompts if detector is not None else None, "prompt_changes": run.prompt_changes,
        "events": run.events,
        **({"mqtt": {"connects": run.mqtt.connects, "published": run.mqtt.published}} if run.mqtt is not None else {}),
        "latency_ms": run.stats.summary(),
        **({"web": {"url": run.viewer.url.split("?")[0], "frames_encoded": run.viewer.frames_encoded,
                    "frames_sent": run.viewer.frames_sent}} if run.viewer is not None else {}),
        "outputs": {k: str(v) for k, v in sink.paths.items()} if sink is not None else None,
    }


_STAGE_ORDER = ("end_to_end", "process", "detect", "detect_preprocess", "detect_encode", "detect_postprocess",
                "caption", "caption_preprocess", "caption_encode", "caption_decode", "caption_postprocess",
                "overlay", "write", "prompts")


def format_summary(summary: Mapping[str, Any]) -> str:
    """The summary as a few lines of text (what ``edgevlp run`` prints at the end)."""
    fps = f"{summary['fps']:.1f} FPS" if summary.get("fps") else "- FPS"
    lines = [f"{summary['frames']} frames in {summary['duration_s']:.1f} s ({fps}); captured {summary['captured']}, "
             f"dropped {summary['dropped']}, captions {summary['captions']}, reconnects {summary['reconnects']}; "
             f"stopped: {summary['stopped']}"]
    latency = summary.get("latency_ms") or {}
    stages = [s for s in _STAGE_ORDER if s in latency] + sorted(set(latency) - set(_STAGE_ORDER))
    if stages:
        width = max(len(s) for s in stages)
        lines.append(f"  {'stage (ms)':<{width}}  {'p50':>8} {'p90':>8} {'p99':>8} {'n':>7}")
        for s in stages:
            v = latency[s]
            lines.append(f"  {s:<{width}}  {v['p50']:>8.2f} {v['p90']:>8.2f} {v['p99']:>8.2f} {v['n']:>7}")
    if summary.get("outputs"):
        lines.append("outputs: " + ", ".join(summary["outputs"].values()))
    return "\n".join(lines)
