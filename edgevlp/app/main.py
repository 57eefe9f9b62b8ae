"""Entry points shared by ``edgevlp run`` and the ``apps/camera_*.py`` scripts.

Example:
    >>> from edgevlp.app.main import run_command
    >>> run_command(args)        # parsed add_run_arguments() options     # doctest: +SKIP
    0
"""

from __future__ import annotations

import argparse
import sys
import traceback
from collections.abc import Callable, Sequence

from edgevlp._process import EXIT_INTERNAL, EXIT_INTERRUPTED, terminate_cleanly
from edgevlp.errors import EdgeVLPError, InputError

__all__ = ["run_command", "script_main"]


def run_command(args: argparse.Namespace, *, expect_task: str | None = None, prog: str = "edgevlp run") -> int:
    """Validate the options, open the window (unless ``--headless``), load the bundles, run, and print the
    summary. ``expect_task`` ("caption" or "detect") makes the first bundle's task mandatory.
    Errors are raised as :class:`~edgevlp.errors.EdgeVLPError` subclasses."""
    from edgevlp.app.config import AppConfig

    config = AppConfig.from_args(args)
    from edgevlp.app.capture import parse_source
    from edgevlp.app.pipeline import load_models, run_app
    from edgevlp.app.sinks import WindowSink

    sources = [args.source] if isinstance(args.source, str) else list(args.source)
    for source in sources:
        parse_source(source)  # a missing file fails before any model is loaded
    if not getattr(args, "debug", False):
        _quiet_opencv()
    bundles = list(args.bundles)
    server = getattr(args, "server", None)
    if server is not None:
        if bundles:
            raise InputError(f"give bundles or --server, not both: with --server {server} the models are the "
                             "server's")
        from edgevlp.app.served import run_served

        return run_served(config, server, sources, prog=prog)
    if len(sources) > 1:
        raise InputError(f"{len(sources)} --source given: several cameras in one process run against a server "
                         "(edgevlp serve REPO, then edgevlp run --server grpc://HOST:8001 --source A --source B)")
    if not bundles:
        raise InputError("give one captioner and/or one detector bundle, or --server URL")
    if expect_task is not None:
        from edgevlp.bundle import read_manifest

        task = read_manifest(bundles[0], verify=False).task
        if task != expect_task:
            raise InputError(f"{bundles[0]} is a {task} bundle; {prog} needs a {expect_task} bundle first")
    window = None if config.headless else WindowSink(title=prog)  # fails fast without a GUI
    try:
        models = load_models(bundles, backend=getattr(args, "backend", None), device=getattr(args, "device", None))

        def event(message: str) -> None:
            print(f"{prog}: {message}", file=sys.stderr, flush=True)

        run_app(config, window=window, report=lambda text: print(text, flush=True), on_event=event, **models)
    finally:
        if window is not None:
            window.close()
    return 0


def _quiet_opencv() -> None:
    """OpenCV and FFmpeg print their own warnings for every failed open; our one-line errors say it
    better. ``--debug`` (or the user's own OPENCV_* settings) keeps them."""
    import os

    os.environ.setdefault("OPENCV_FFMPEG_LOGLEVEL", "-8")  # read when FFmpeg is first used
    if "OPENCV_LOG_LEVEL" not in os.environ:
        import cv2

        cv2.utils.logging.setLogLevel(cv2.utils.logging.LOG_LEVEL_ERROR)


def script_main(parser: argparse.ArgumentParser, argv: Sequence[str] | None = None, *,
                expect_task: str | None = None,
                bundles: Callable[[argparse.Namespace], list[str]] | None = None) -> int:
    """Parse ``argv`` and run, with the CLI's exit codes: 0 ok, 1 error (one line), 2 usage, 130 interrupted,
    70 internal error (traceback only with ``--debug``). ``bundles`` maps the parsed options to the bundle
    list when the parser has no ``bundles`` positional.

    Example:
        >>> script_main(parser, ["b/owl", "--source", "0", "--prompts", "cup"], expect_task="detect",
        ...             bundles=lambda a: [a.bundle])                                  # doctest: +SKIP
    """
    parser.add_argument("--debug", action="store_true", help="show tracebacks on errors")
    args = parser.parse_args(argv)
    if bundles is not None:
        args.bundles = bundles(args)
    prog = parser.prog
    terminate_cleanly()
    try:
        return run_command(args, expect_task=expect_task, prog=prog)
    except EdgeVLPError as err:
        if args.debug:
            traceback.print_exc()
        print(f"{prog}: error: {' '.join(str(err).split())}", file=sys.stderr)
        return err.exit_code
    except KeyboardInterrupt:
        print(f"{prog}: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    except Exception as err:  # noqa: BLE001 - no traceback without --debug
        if args.debug:
            traceback.print_exc()
        print(f"{prog}: internal error: {type(err).__name__}: {err} (re-run with --debug)", file=sys.stderr)
        return EXIT_INTERNAL
