"""Where annotated frames go: a display window, or files (``annotated.mp4``, ``log.jsonl``,
``summary.json``) that stay readable whatever stops the run.

Each JSONL record is one ``os.write`` of a complete line to a file opened in append mode, so a crash or a
kill leaves only whole lines; ``summary.json`` is written to a temporary file and renamed into place.

Example:
    >>> from edgevlp.app.sinks import FileSink
    >>> sink = FileSink("out/run", fps=30)                     # doctest: +SKIP
    >>> sink.write(annotated_bgr, {"frame": 0, "caption": "a cup"})   # doctest: +SKIP
    >>> sink.close(summary)                                     # doctest: +SKIP
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from edgevlp.errors import InputError

__all__ = ["FileSink", "WindowSink", "write_json_atomic", "OUTPUT_FILES"]

VIDEO, LOG, SUMMARY = "annotated.mp4", "log.jsonl", "summary.json"
OUTPUT_FILES = (VIDEO, LOG, SUMMARY)


def _json_default(value: object) -> object:
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    raise TypeError(f"{type(value).__name__} is not JSON serialisable")


def _finite(value: object) -> object:
    """JSON has no NaN/inf: they become null."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite(v) for v in value]
    return value


def write_json_atomic(path: str | os.PathLike[str], data: Mapping[str, Any]) -> None:
    """Write ``data`` as indented JSON to ``path`` via a temporary file and a rename."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(_finite(dict(data)), indent=2, default=_json_default) + "\n", encoding="utf-8")
    os.replace(tmp, path)


class FileSink:
    """Writes ``DIR/annotated.mp4`` (mp4v, opened at the first frame's size), ``DIR/log.jsonl`` (one
    line per frame) and, on :meth:`close`, ``DIR/summary.json``. Outputs of an earlier run are only
    replaced with ``force=True``.

    Example:
        >>> sink = FileSink("out/run", fps=25.0, force=True)      # doctest: +SKIP
    """

    def __init__(self, output: str | os.PathLike[str], fps: float = 30.0, *, force: bool = False,
                 fourcc: str = "mp4v") -> None:
        self.dir = Path(output)
        existing = self.check(self.dir, force=force)
        try:
            self.dir.mkdir(parents=True, exist_ok=True)
            for name in existing:
                (self.dir / name).unlink()
            self._log_fd: int | None = os.open(self.dir / LOG, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_APPEND,
                                               0o644)
        except OSError as err:
            raise InputError(f"cannot write to --output {self.dir}: {err.strerror}") from None
        self.fps = float(fps)
        self.fourcc = fourcc
        self.frames = 0
        self.lines = 0
        self._writer = None
        self._size: tuple[int, int] | None = None

    @staticmethod
    def check(output: str | os.PathLike[str], *, force: bool = False) -> list[str]:
        """The output files already in ``output``; :class:`InputError` if there are any and not ``force``,
        or if ``output`` is a file."""
        out = Path(output)
        if out.exists() and not out.is_dir():
            raise InputError(f"--output {out} is a file, not a directory")
        existing = [name for name in OUTPUT_FILES if (out / name).exists()]
        if existing and not force:
            raise InputError(f"--output {out} already holds {', '.join(existing)} from an earlier run; "
                             "pass --force to overwrite them or pick another directory")
        return existing

    @property
    def paths(self) -> dict[str, Path]:
        return {"video": self.dir / VIDEO, "log": self.dir / LOG, "summary": self.dir / SUMMARY}

    def _open_writer(self, width: int, height: int) -> None:
        import cv2

        writer = cv2.VideoWriter(str(self.dir / VIDEO), cv2.VideoWriter_fourcc(*self.fourcc), self.fps,
                                 (width, height))
        if not writer.isOpened():
            raise InputError(f"OpenCV cannot write {self.dir / VIDEO} with codec {self.fourcc} "
                             f"({width}x{height} at {self.fps:g} FPS); check the disk and the OpenCV build")
        self._writer, self._size = writer, (width, height)

    def write(self, image: np.ndarray | None, record: Mapping[str, Any]) -> None:
        """Append ``image`` (BGR) to the video and ``record`` as one JSON line."""
        if image is not None:
            height, width = image.shape[:2]
            if self._writer is None:
                self._open_writer(width, height)
            elif (width, height) != self._size:
                import cv2

                image = cv2.resize(image, self._size, interpolation=cv2.INTER_AREA)
            self._writer.write(image)
            self.frames += 1
        self.log(record)

    def log(self, record: Mapping[str, Any]) -> None:
        """One complete JSON line, written with a single system call."""
        if self._log_fd is None:
            return
        data = (json.dumps(_finite(dict(record)), separators=(",", ":"), default=_json_default) + "\n").encode()
        view = memoryview(data)
        while view:
            view = view[os.write(self._log_fd, view):]
        self.lines += 1

    def close(self, summary: Mapping[str, Any] | None = None) -> None:
        """Finish the video, close the log and write ``summary.json`` (safe to call twice)."""
        writer, self._writer = self._writer, None
        if writer is not None:
            writer.release()
        fd, self._log_fd = self._log_fd, None
        if fd is not None:
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
        if summary is not None:
            write_json_atomic(self.dir / SUMMARY, summary)


class WindowSink:
    """An OpenCV window; :meth:`show` returns the key pressed (or -1). Raises :class:`InputError` at
    once when OpenCV has no GUI (``opencv-python-headless``).

    Example:
        >>> window = WindowSink("edgevlp")            # doctest: +SKIP
        >>> key = window.show(annotated_bgr)           # doctest: +SKIP
    """

    def __init__(self, title: str = "edgevlp") -> None:
        import cv2

        self.title = title
        try:
            cv2.namedWindow(title, cv2.WINDOW_NORMAL)
        except cv2.error:
            raise InputError("this OpenCV has no window support (opencv-python-headless); pass --headless "
                             "--output DIR to write the annotated video instead, or replace it with the GUI "
                             "build: pip uninstall opencv-python-headless && pip install opencv-python") from None
        self.closed_by_user = False

    def show(self, image: np.ndarray) -> int:
        import cv2

        cv2.imshow(self.title, image)
        key = cv2.waitKey(1)
        try:
            if cv2.getWindowProperty(self.title, cv2.WND_PROP_VISIBLE) < 1:
                self.closed_by_user = True
        except cv2.error:
            self.closed_by_user = True
        return -1 if key < 0 else key & 0xFF

    def close(self) -> None:
        import cv2

        try:
            cv2.destroyWindow(self.title)
            cv2.waitKey(1)
        except cv2.error:
            pass
