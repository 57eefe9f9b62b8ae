"""Exit codes and signal handling shared by the ``edgevlp`` CLI and the ``apps/`` scripts."""

from __future__ import annotations

__all__ = ["EXIT_INTERNAL", "EXIT_INTERRUPTED", "terminate_cleanly"]

#: An unexpected exception (a bug): the CLI prints one line, the traceback only with ``--debug``.
EXIT_INTERNAL = 70
#: Ctrl-C or SIGTERM.
EXIT_INTERRUPTED = 130


def terminate_cleanly() -> None:
    """SIGTERM unwinds like Ctrl-C, so context managers remove temp dirs and flush outputs."""
    import signal

    def handler(signum: int, frame: object) -> None:
        raise KeyboardInterrupt(f"signal {signum}")

    try:
        signal.signal(signal.SIGTERM, handler)
    except ValueError:  # not the main thread (e.g. called from a test runner thread)
        pass
