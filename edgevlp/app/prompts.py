"""A prompts file watched for changes (modification time and size polled, content compared).

Example:
    >>> from edgevlp.app.prompts import PromptsFile
    >>> watcher = PromptsFile("prompts.txt", poll_s=0.5)     # doctest: +SKIP
    >>> watcher.poll()     # new prompts if the file changed since the last read, else None  # doctest: +SKIP
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from pathlib import Path

from edgevlp.app.config import parse_prompt_text
from edgevlp.errors import InputError

__all__ = ["PromptsFile", "parse_question_text"]


def parse_question_text(text: str) -> list[str]:
    """A question file's text as a one-item list (the whole text, whitespace collapsed), or ``[]``.

    Example:
        >>> parse_question_text("  is anyone\n at the door? ")
        ['is anyone at the door?']
    """
    question = " ".join(str(text).split())
    return [question] if question else []


class PromptsFile:
    """Reads detection prompts from ``path`` (comma- or line-separated, ``#`` comments) and reports
    changes at most every ``poll_s`` seconds.

    Example:
        >>> import tempfile, pathlib
        >>> path = pathlib.Path(tempfile.mkdtemp()) / "prompts.txt"
        >>> _ = path.write_text("cup, person")
        >>> watcher = PromptsFile(path, poll_s=0)
        >>> watcher.read()
        ['cup', 'person']
        >>> watcher.poll() is None          # unchanged since read()
        True
    """

    def __init__(self, path: str | os.PathLike[str], poll_s: float = 0.5, *,
                 parse: Callable[[str], list[str]] = parse_prompt_text, what: str = "prompts") -> None:
        self.path = Path(path)
        self.poll_s = float(poll_s)
        self.parse, self.what = parse, what
        self._stamp: tuple[int, int] | None = None
        self._prompts: list[str] | None = None
        self._next_poll = 0.0

    def _stat(self) -> tuple[int, int] | None:
        try:
            st = self.path.stat()
        except OSError:
            return None
        return st.st_mtime_ns, st.st_size

    def read(self) -> list[str]:
        """The file's prompts now; :class:`InputError` if it is missing, unreadable or holds none."""
        stamp = self._stat()
        try:
            text = self.path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as err:
            self._stamp = stamp
            raise InputError(f"cannot read {self.what} file {self.path}: {err}") from None
        prompts = self.parse(text)
        self._stamp = stamp
        if not prompts:
            example = "holds no prompt; write e.g. 'cup, person'" if self.what == "prompts" else \
                "is empty; write e.g. 'is anyone at the door?'"
            raise InputError(f"{self.what} file {self.path} {example}")
        self._prompts = prompts
        return prompts

    def mark_seen(self) -> None:
        """Take the file as it is now as already applied (a later change is reported by :meth:`poll`)."""
        self._stamp = self._stat()

    def poll(self, force: bool = False) -> list[str] | None:
        """New prompts if the file changed (or ``force``) and they differ from the last ones, else None.

        A file that became empty or unreadable raises :class:`InputError` once per change; the caller
        keeps its current prompts."""
        now = time.monotonic()
        if not force and now < self._next_poll:
            return None
        self._next_poll = now + self.poll_s
        if not force and self._stat() == self._stamp:
            return None
        before = self._prompts
        prompts = self.read()
        return None if prompts == before and not force else prompts
