"""Events from the camera app: Frigate-style ``new`` / ``update`` / ``end`` per tracked detection, and
``caption`` when the caption changes (the JSONL sink's ``events`` and ``--mqtt``).

Hysteresis, not one message per frame: a detection becomes a tracked object (``new``) after it was seen
in ``min_hits`` frames in a row (matched to its track by label and IoU); an ``update`` is sent when its
box moved (IoU with the last sent box under ``move_iou``) or its top score rose by ``score_step``, at
most every ``update_every_s``; ``end`` when it was missed for ``max_misses`` frames in a row.

Example:
    >>> tracker = EventTracker(min_hits=2, max_misses=2)
    >>> det = [{"label": "cup", "score": 0.9, "box": [0, 0, 10, 10]}]
    >>> [e["type"] for t in range(6) for e in tracker.update(det if t < 3 else [], frame=t, t=t * 0.1)]
    ['new', 'end']
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

__all__ = ["EventTracker", "CaptionEvents", "iou"]


def iou(a: Sequence[float], b: Sequence[float]) -> float:
    """Intersection over union of two xyxy boxes.

    Example:
        >>> iou([0, 0, 10, 10], [5, 0, 15, 10])
        0.3333333333333333
    """
    w = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    h = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = w * h
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0


@dataclass
class _Track:
    id: str
    label: str
    box: list[float]
    score: float
    top_score: float
    start_time: float
    first_frame: int
    hits: int = 1
    misses: int = 0
    published: bool = False
    sent_box: list[float] = field(default_factory=list)
    sent_score: float = 0.0
    sent_at: float = 0.0
    frame: int = 0
    time: float = 0.0

    def payload(self, end_time: float | None = None) -> dict[str, Any]:
        return {"id": self.id, "label": self.label, "score": round(self.score, 4),
                "top_score": round(self.top_score, 4), "box": [round(v, 1) for v in self.box],
                "start_time": round(self.start_time, 3), "end_time": None if end_time is None else round(end_time, 3),
                "frame": self.frame}


class EventTracker:
    """Detections per frame -> object events (see the module)."""

    def __init__(self, *, min_hits: int = 2, max_misses: int = 10, match_iou: float = 0.3, move_iou: float = 0.7,
                 score_step: float = 0.1, update_every_s: float = 1.0) -> None:
        if min_hits < 1 or max_misses < 1:
            raise ValueError("min_hits and max_misses must be >= 1")
        self.min_hits, self.max_misses = min_hits, max_misses
        self.match_iou, self.move_iou, self.score_step, self.update_every_s = match_iou, move_iou, score_step, update_every_s
        self.tracks: list[_Track] = []
        self._next = 0

    def update(self, detections: Sequence[dict[str, Any]] | None, *, frame: int, t: float) -> list[dict[str, Any]]:
        """This frame's detections (``label``, ``score``, ``box`` xyxy) -> the events they cause."""
        events: list[dict[str, Any]] = []
        unmatched = list(range(len(self.tracks)))
        for det in sorted(detections or (), key=lambda d: -float(d["score"])):
            best, best_iou = None, self.match_iou
            for i in unmatched:
                tr = self.tracks[i]
                if tr.label == det["label"] and (v := iou(tr.box, det["box"])) >= best_iou:
                    best, best_iou = i, v
            if best is None:
                self._next += 1
                self.tracks.append(_Track(id=f"{t:.3f}-{self._next}", label=str(det["label"]), box=list(det["box"]),
                                          score=float(det["score"]), top_score=float(det["score"]), start_time=t,
                                          first_frame=frame, frame=frame, time=t))
                continue
            unmatched.remove(best)
            tr = self.tracks[best]
            tr.box, tr.score, tr.frame, tr.time = list(det["box"]), float(det["score"]), frame, t
            tr.top_score = max(tr.top_score, tr.score)
            tr.hits, tr.misses = tr.hits + 1, 0
        for i in unmatched:
            self.tracks[i].misses += 1
        kept = []
        for tr in self.tracks:
            if tr.misses >= self.max_misses:
                if tr.published:
                    events.append({"type": "end", "before": tr.payload(), "after": tr.payload(end_time=tr.time)})
                continue
            if tr.misses and not tr.published:
                continue  # a blip that never became an object
            kept.append(tr)
            if tr.misses:
                continue
            if not tr.published and tr.hits >= self.min_hits:
                tr.published, tr.sent_box, tr.sent_score, tr.sent_at = True, list(tr.box), tr.top_score, t
                events.append({"type": "new", "before": None, "after": tr.payload()})
            elif tr.published and t - tr.sent_at >= self.update_every_s and (
                    iou(tr.box, tr.sent_box) < self.move_iou or tr.top_score >= tr.sent_score + self.score_step):
                before = {**tr.payload(), "box": [round(v, 1) for v in tr.sent_box]}
                tr.sent_box, tr.sent_score, tr.sent_at = list(tr.box), tr.top_score, t
                events.append({"type": "update", "before": before, "after": tr.payload()})
        self.tracks = kept
        return events

    def finish(self, t: float) -> list[dict[str, Any]]:
        """``end`` for every published object (the run is over)."""
        events = [{"type": "end", "before": tr.payload(), "after": tr.payload(end_time=t)}
                  for tr in self.tracks if tr.published]
        self.tracks = []
        return events


class CaptionEvents:
    """A ``caption`` event each time the caption text changes."""

    def __init__(self) -> None:
        self.last: str | None = None

    def update(self, text: str | None, *, frame: int, t: float) -> list[dict[str, Any]]:
        if text is None or text == self.last:
            return []
        self.last = text
        return [{"type": "caption", "text": text, "frame": frame, "time": round(t, 3)}]
