"""Stage-by-stage progress with timing on stderr (trace, check, simplify, parity, write)."""

from __future__ import annotations

import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager

__all__ = ["Progress", "Bar"]


class Progress:
    """Prints ``[export] stage ... done in 1.2s`` lines and keeps the timings.

    Example:
        >>> p = Progress(enabled=False)
        >>> with p.stage("trace"):
        ...     pass
        >>> list(p.seconds)
        ['trace']
    """

    def __init__(self, enabled: bool = True, prefix: str = "export") -> None:
        self.enabled = enabled
        self.prefix = prefix
        self.seconds: dict[str, float] = {}
        self._line_open = False  # a stage's "..." is waiting for its "done"

    def _print(self, text: str, end: str = "\n") -> None:
        if self.enabled:
            print(text, file=sys.stderr, end=end, flush=True)

    @contextmanager
    def stage(self, name: str, detail: str = "") -> Iterator[None]:
        label = f"[{self.prefix}] {name}{' ' + detail if detail else ''}"
        if self._line_open:  # nested stage: finish the parent's line first
            self._print("")
        self._print(f"{label} ...", end="")
        self._line_open = True
        t0 = time.perf_counter()
        try:
            yield
        except BaseException:
            self._print(" failed" if self._line_open else f"{label} failed")
            self._line_open = False
            raise
        dt = time.perf_counter() - t0
        self.seconds[name] = self.seconds.get(name, 0.0) + dt
        self._print(f" done in {dt:.1f}s" if self._line_open else f"{label} done in {dt:.1f}s")
        self._line_open = False


def _clock(seconds: float) -> str:
    seconds = max(0, int(round(seconds)))
    return f"{seconds // 60}m{seconds % 60:02d}s" if seconds >= 60 else f"{seconds}s"


class Bar:
    """A counted loop on stderr with its ETA: ``[compress] calibration vision_encoder 12/64 (19%)
    31s, ETA 2m12s``.

    On a terminal the line is redrawn in place; otherwise (logs, CI) a line is printed once the loop
    has run ``first_s`` seconds, then at most every ``every_s`` seconds, and always at the end (a loop
    shorter than ``first_s`` prints its final line only). ``total=None``: a count without ETA.

    Example:
        >>> with Bar("calibration", 3, enabled=False) as bar:
        ...     for _ in range(3):
        ...         bar.update()
        >>> bar.done, bar.total
        (3, 3)
    """

    def __init__(self, label: str, total: int | None, *, enabled: bool = True, prefix: str = "compress",
                 unit: str = "", every_s: float = 30.0, first_s: float = 5.0) -> None:
        self.label, self.total, self.unit = label, total, unit
        self.enabled, self.prefix, self.every_s = enabled, prefix, every_s
        self.done = 0
        self.note = ""
        self._t0 = time.perf_counter()
        self._last = self._t0 + first_s - every_s  # the first periodic line comes after first_s
        self._tty = enabled and sys.stderr.isatty()
        self._closed = False
        self._printed = ""
        self._origin: tuple[float, int] | None = None  # (time, done) of the first update: the rate's origin

    def __enter__(self) -> "Bar":
        if self._tty:
            self._draw(force=True)
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def elapsed(self) -> float:
        return time.perf_counter() - self._t0

    def text(self) -> str:
        """The current line (without the ``[prefix]``)."""
        unit = f" {self.unit}" if self.unit else ""
        if self.total:
            eta = None  # from the first update on (what comes before it, a session start-up, is no step)
            if self._origin is not None and self.done > self._origin[1]:
                t1, d1 = self._origin
                eta = (time.perf_counter() - t1) / (self.done - d1) * (self.total - self.done)
            elif self.done:
                eta = self.elapsed / self.done * (self.total - self.done)
            head = f"{self.label} {self.done}/{self.total}{unit} ({self.done / self.total:.0%}) {_clock(self.elapsed)}"
            tail = "" if self.done >= self.total else (f", ETA {_clock(eta)}" if eta is not None else ", ETA ?")
        else:
            head, tail = f"{self.label} {self.done}{unit} {_clock(self.elapsed)}", ""
        return head + tail + (f"; {self.note}" if self.note else "")

    def update(self, n: int = 1, *, done: int | None = None, note: str | None = None) -> None:
        """Count ``n`` more steps (or set ``done``); ``note``: a short status after the counts. The
        ETA's rate counts from the first call (``update(0)`` once set up: start-up is not a step)."""
        self.done = done if done is not None else self.done + n
        if self._origin is None:
            self._origin = (time.perf_counter(), self.done)
        if note is not None:
            self.note = note
        self._draw()

    def close(self, note: str | None = None) -> None:
        if self._closed:
            return
        if note is not None:
            self.note = note
        self._closed = True
        self._draw(force=True, final=True)

    def _draw(self, force: bool = False, final: bool = False) -> None:
        if not self.enabled:
            return
        now = time.perf_counter()
        if self._tty:
            end = "\n" if final else ""
            print(f"\r\033[K[{self.prefix}] {self.text()}", file=sys.stderr, end=end, flush=True)
        elif force or now - self._last >= self.every_s:
            text = self.text()
            if text != self._printed:
                print(f"[{self.prefix}] {text}", file=sys.stderr, flush=True)
            self._printed = text
        else:
            return
        self._last = now
