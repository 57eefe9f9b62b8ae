"""The camera app's settings: one frozen, validated :class:`AppConfig` and its command-line options.

This module imports nothing heavy (no OpenCV, no inference engine), so ``edgevlp run --help`` stays fast.

Example:
    >>> import argparse
    >>> from edgevlp.app.config import AppConfig, add_run_arguments
    >>> parser = argparse.ArgumentParser()
    >>> add_run_arguments(parser)
    >>> args = parser.parse_args(["b/owl", "--source", "clip.mp4", "--prompts", "cup, person", "--headless"])
    >>> AppConfig.from_args(args).prompts
    ('cup', 'person')
"""

from __future__ import annotations

import argparse
import math
from dataclasses import dataclass

from edgevlp.errors import InputError

__all__ = ["AppConfig", "Cadence", "add_run_arguments", "parse_cadence", "parse_prompt_text"]


@dataclass(frozen=True)
class Cadence:
    """How often the captioner gets a new frame: every ``value`` seconds, or every ``value`` frames."""

    value: float
    unit: str  # "s" | "frames"

    def __str__(self) -> str:
        return f"{int(self.value)} frames" if self.unit == "frames" else f"{self.value:g} s"


def parse_cadence(text: str) -> Cadence:
    """``"0.5"`` or ``"0.5s"``: seconds (0: as often as the captioner can); ``"10f"``: every 10 frames.

    Example:
        >>> parse_cadence("10f"), parse_cadence("0.5")
        (Cadence(value=10.0, unit='frames'), Cadence(value=0.5, unit='s'))
    """
    raw = str(text).strip().lower()
    unit = "frames" if raw.endswith("f") else "s"
    number = raw[:-1] if raw.endswith(("f", "s")) else raw
    try:
        value = float(number)
    except ValueError:
        raise InputError(f"--caption-every {text!r} is not a number of seconds (e.g. 0.5) or frames "
                         "(e.g. 10f)") from None
    if not math.isfinite(value) or value < 0 or (unit == "frames" and (value < 1 or value != int(value))):
        raise InputError(f"--caption-every {text!r} must be >= 0 seconds or a whole number >= 1 of "
                         "frames (e.g. 10f)")
    return Cadence(value, unit)


def parse_prompt_text(text: str) -> list[str]:
    """Prompts from ``"red circle, person"`` or a file's text: split on commas and newlines; blank
    entries and ``#`` comment lines are dropped.

    Example:
        >>> parse_prompt_text("red circle, person\\n# a comment\\ncup")
        ['red circle', 'person', 'cup']
    """
    prompts: list[str] = []
    for line in str(text).splitlines():
        if line.lstrip().startswith("#"):
            continue
        prompts += [p.strip() for p in line.split(",") if p.strip()]
    return prompts


@dataclass(frozen=True)
class AppConfig:
    """Everything the camera app needs besides the models and the source object.

    ``timeout_s`` bounds every open and read of the source; a live source that fails is re-opened up to
    ``reconnect`` times, waiting ``backoff_s`` doubling up to ``backoff_max_s`` between tries.
    ``queue_size`` frames at most wait between capture and inference (live sources drop the oldest).
    """

    source: str
    prompts: tuple[str, ...] = ()
    prompts_file: str | None = None
    prompts_poll_s: float = 0.5
    threshold: float = 0.1
    caption_every: Cadence = Cadence(0.5, "s")
    max_new_tokens: int | None = None
    #: the question a vqa bundle answers about the newest frame at ``caption_every`` (None: its default
    #: captioning prompt)
    ask: str | None = None
    #: a file holding the question, re-read when it changes (as ``prompts_file``)
    ask_file: str | None = None
    headless: bool = False
    output: str | None = None
    force: bool = False
    max_frames: int | None = None
    fps_limit: float | None = None
    timeout_s: float = 10.0
    reconnect: int = 5
    backoff_s: float = 0.5
    backoff_max_s: float = 8.0
    queue_size: int = 1
    #: replay a file source from its start when it ends (serve a clip for as long as needed)
    loop: bool = False
    #: ``[HOST:]PORT`` of the web viewer (edgevlp.app.web), None: no web server
    serve: str | None = None
    token: str | None = None
    view_token: str | None = None
    no_auth: bool = False
    allow_hosts: tuple[str, ...] = ()
    #: frames a second each web viewer gets at most
    serve_fps: float = 30.0
    #: ``mqtt://HOST[:PORT][/PREFIX]``: object and caption events, prompts steered from ``PREFIX/prompts/set``
    mqtt: str | None = None

    def __post_init__(self) -> None:
        if not str(self.source).strip():
            raise InputError("--source is empty: give a camera index (0), a file, rtsp://..., csi://0 or a "
                             "GStreamer pipeline")
        if not 0.0 <= self.threshold <= 1.0:
            raise InputError(f"--threshold must be in [0, 1], got {self.threshold}")
        _positive("--prompts-poll", self.prompts_poll_s, allow_zero=True)
        _positive("--timeout", self.timeout_s)
        _positive("--backoff", self.backoff_s, allow_zero=True)
        _positive("--backoff-max", self.backoff_max_s, allow_zero=True)
        if self.fps_limit is not None:
            _positive("--fps-limit", self.fps_limit)
        for name, value, low in (("--max-frames", self.max_frames, 1), ("--max-new-tokens", self.max_new_tokens, 1),
                                 ("--reconnect", self.reconnect, 0), ("--queue-size", self.queue_size, 1)):
            if value is not None and (not isinstance(value, int) or value < low):
                raise InputError(f"{name} must be a whole number >= {low}, got {value!r}")
        if self.ask is not None and not str(self.ask).strip():
            raise InputError('--ask is empty: give a question, e.g. --ask "is anyone at the door?"')
        if self.serve is not None:
            from edgevlp.app.remote import parse_serve_address

            parse_serve_address(self.serve)
        if self.mqtt is not None:
            from edgevlp.app.remote import parse_mqtt_url

            parse_mqtt_url(self.mqtt)
        from edgevlp.app.remote import check_serve_fps

        check_serve_fps(self.serve_fps)
        if self.no_auth and (self.token or self.view_token):
            raise InputError("--no-auth and --token/--view-token contradict each other: pass one of them")
        if any(not isinstance(p, str) or not p.strip() for p in self.prompts):
            raise InputError("--prompts must not contain empty prompts, e.g. --prompts \"red circle, person\"")

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> AppConfig:
        """The config of parsed :func:`add_run_arguments` options (validated)."""
        prompts: tuple[str, ...] = ()
        if args.prompts is not None:
            prompts = tuple(parse_prompt_text(args.prompts))
            if not prompts:
                raise InputError(f"--prompts {args.prompts!r} holds no prompt; give e.g. --prompts \"cup, person\"")
        sources = [args.source] if isinstance(args.source, str) else list(args.source)
        return cls(source=sources[0], prompts=prompts, prompts_file=args.prompts_file,
                   prompts_poll_s=args.prompts_poll, threshold=args.threshold,
                   caption_every=parse_cadence(args.ask_every if getattr(args, "ask_every", None) is not None
                                               else args.caption_every),
                   max_new_tokens=args.max_new_tokens, ask=getattr(args, "ask", None),
                   ask_file=getattr(args, "ask_file", None),
                   headless=args.headless, output=args.output, force=args.force, max_frames=args.max_frames,
                   fps_limit=args.fps_limit, timeout_s=args.timeout, reconnect=args.reconnect,
                   backoff_s=args.backoff, backoff_max_s=args.backoff_max, queue_size=args.queue_size,
                   loop=getattr(args, "loop", False), serve=getattr(args, "serve", None),
                   token=getattr(args, "token", None), view_token=getattr(args, "view_token", None),
                   no_auth=getattr(args, "no_auth", False), allow_hosts=tuple(getattr(args, "allow_host", None) or ()),
                   mqtt=getattr(args, "mqtt", None), serve_fps=getattr(args, "serve_fps", 30.0))


def _positive(name: str, value: float, allow_zero: bool = False) -> None:
    ok = math.isfinite(value) and (value >= 0 if allow_zero else value > 0)
    if not ok:
        raise InputError(f"{name} must be {'>= 0' if allow_zero else '> 0'}, got {value}")


def add_run_arguments(p: argparse.ArgumentParser, *, bundles: bool = True) -> None:
    """The camera app's options (``edgevlp run`` and ``apps/camera_*.py``); ``bundles=False`` leaves out
    the positional bundle list for scripts that declare their own."""
    if bundles:
        p.add_argument("bundles", nargs="*", help="one captioner or VLM (vqa) bundle and/or one detector bundle "
                                                  "(decided by the manifest's task); none with --server")
    src = p.add_argument_group("source")
    src.add_argument("--source", required=True, action="append",
                     help="camera index (0), video file, rtsp://... or http://... URL, csi://N[?width=W&"
                          "height=H&fps=F] (Jetson CSI camera), or a GStreamer pipeline (contains '!'); "
                          "repeat it with --server for several cameras in one process")
    src.add_argument("--server", metavar="URL",
                     help="run as a Triton client (grpc://HOST:8001): the captioner and/or detector the "
                          "server holds (`edgevlp serve`), one pipeline per --source, outputs per source")
    src.add_argument("--timeout", type=float, default=10.0, metavar="S",
                     help="seconds allowed for each open and each read of the source (default 10)")
    src.add_argument("--reconnect", type=int, default=5, metavar="N",
                     help="retry a live source up to N times when it fails to open or stops sending, "
                          "then exit 1 (default 5)")
    src.add_argument("--backoff", type=float, default=0.5, metavar="S",
                     help="first wait between reconnect tries, doubling each time (default 0.5)")
    src.add_argument("--backoff-max", type=float, default=8.0, metavar="S",
                     help="longest wait between reconnect tries (default 8)")
    src.add_argument("--fps-limit", type=float, metavar="FPS", help="read at most FPS frames a second")
    src.add_argument("--max-frames", type=int, metavar="N", help="stop after N processed frames")
    src.add_argument("--loop", action="store_true", help="replay a file source from its start when it ends")
    src.add_argument("--queue-size", type=int, default=1, metavar="N",
                     help="frames waiting for inference at most; live sources drop the oldest (default 1)")
    mod = p.add_argument_group("models")
    mod.add_argument("--prompts", help='comma-separated detection prompts, e.g. "red circle, person"')
    mod.add_argument("--prompts-file", metavar="FILE",
                     help="prompts file (comma- or line-separated, # comments), re-read when it changes and "
                          "on the 'p' key")
    mod.add_argument("--prompts-poll", type=float, default=0.5, metavar="S",
                     help="how often to check the prompts file for changes (default 0.5)")
    mod.add_argument("--threshold", type=float, default=0.1, help="detection score threshold (default 0.1)")
    mod.add_argument("--caption-every", default="0.5", metavar="S|Nf",
                     help="caption a new frame every S seconds (0: continuously) or every N frames (10f); "
                          "default 0.5")
    mod.add_argument("--ask", metavar="QUESTION",
                     help='with a VLM (vqa) bundle: the question answered about the newest frame, e.g. '
                          '"is anyone at the door?" (default: its captioning prompt)')
    mod.add_argument("--ask-file", metavar="FILE",
                     help="a file holding the question, re-read when it changes (edit it while the app runs)")
    mod.add_argument("--ask-every", metavar="S|Nf", help="how often --ask is answered (as --caption-every)")
    mod.add_argument("--max-new-tokens", type=int, metavar="N", help="caption length limit (default: bundle's)")
    mod.add_argument("--backend", help="inference backend (default: the bundle target's first installed one)")
    mod.add_argument("--device", help="backend device, e.g. cpu or cuda")
    out = p.add_argument_group("output")
    out.add_argument("--headless", action="store_true", help="no window (use with --output to keep results)")
    out.add_argument("--output", metavar="DIR",
                     help="write DIR/annotated.mp4, DIR/log.jsonl (one line per frame) and DIR/summary.json")
    out.add_argument("--force", action="store_true", help="overwrite outputs of an earlier run in --output")
    web = p.add_argument_group("web viewer")
    web.add_argument("--serve", metavar="[HOST:]PORT",
                     help="watch and steer the app from a browser at http://HOST:PORT/ (default host 127.0.0.1; "
                          "any other host needs the printed token)")
    web.add_argument("--serve-fps", type=float, default=30.0, metavar="FPS",
                     help="frames a second each viewer gets at most (default 30; JPEG encoding follows it)")
    web.add_argument("--token", help="the control token (default: generated and printed when one is needed)")
    web.add_argument("--view-token", help="a watch-only token (default: generated with the control token)")
    web.add_argument("--no-auth", action="store_true", help="no token even off loopback (trusted networks only)")
    web.add_argument("--mqtt", metavar="URL", help="publish object events (new/update/end), caption changes "
                                                   "and a retained state to mqtt://HOST[:PORT][/PREFIX]; "
                                                   "PREFIX/prompts/set steers the prompts")
    web.add_argument("--allow-host", action="append", metavar="NAME",
                     help="a Host name the page may be reached by (behind a reverse proxy); repeatable")
