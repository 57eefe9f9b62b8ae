"""Stage-by-stage progress with timing on stderr (trace, check, simplify, parity, write)."""

from __future__ import annotations

import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager

__all__ = ["Progress"]


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
