"""Video sources and the capture thread: a bounded frame slot, timeouts, reconnects with backoff.

A source is a camera index (``"0"``), a video file, an ``rtsp://``/``http://`` URL, a GStreamer pipeline
(any string with ``!``) or ``csi://N``, which expands to the Jetson ``nvarguscamerasrc`` pipeline of
:func:`csi_pipeline`. Live sources (cameras, streams, pipelines) drop the oldest frame when inference
falls behind and are re-opened after a fault; files are read frame by frame and end cleanly.

Example:
    >>> from edgevlp.app.capture import csi_pipeline, parse_source
    >>> parse_source("rtsp://cam.local/stream").live
    True
    >>> csi_pipeline(0, width=640, height=480, fps=30).split(" ! ")[0]
    'nvarguscamerasrc sensor-id=0'
"""

from __future__ import annotations

import collections
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Generic, Protocol, TypeVar
from urllib.parse import parse_qs, urlsplit

import numpy as np

from edgevlp.errors import InputError, SourceError

__all__ = ["csi_pipeline", "parse_source", "SourceSpec", "VideoSource", "OpenCVSource", "open_source",
           "Frame", "FrameSlot", "Capture", "Backoff"]

_URL_SCHEMES = ("rtsp", "rtsps", "rtmp", "http", "https", "udp", "tcp", "srt")
_CSI_KEYS = {"width", "height", "fps", "flip"}
T = TypeVar("T")


def csi_pipeline(sensor_id: int = 0, *, width: int = 1280, height: int = 720, fps: int = 30,
                 flip: int = 0) -> str:
    """The GStreamer pipeline reading Jetson CSI camera ``sensor_id`` as BGR frames for OpenCV.

    ``flip`` is nvvidconv's ``flip-method`` (0: none, 2: rotate 180). ``appsink drop=1 max-buffers=1``
    keeps only the newest frame, so a slow consumer never builds a backlog inside GStreamer.

    Example:
        >>> print(csi_pipeline(1, width=1920, height=1080, fps=30))    # doctest: +NORMALIZE_WHITESPACE
        nvarguscamerasrc sensor-id=1 ! video/x-raw(memory:NVMM),width=1920,height=1080,framerate=30/1 !
        nvvidconv ! video/x-raw,format=BGRx ! videoconvert ! video/x-raw,format=BGR !
        appsink drop=1 max-buffers=1
    """
    for name, value, low in (("sensor id", sensor_id, 0), ("width", width, 1), ("height", height, 1),
                             ("fps", fps, 1), ("flip", flip, 0)):
        if not isinstance(value, int) or isinstance(value, bool) or value < low:
            raise InputError(f"csi:// {name} must be a whole number >= {low}, got {value!r}")
    convert = "nvvidconv" + (f" flip-method={flip}" if flip else "")
    return (f"nvarguscamerasrc sensor-id={sensor_id} ! video/x-raw(memory:NVMM),width={width},"
            f"height={height},framerate={fps}/1 ! {convert} ! video/x-raw,format=BGRx ! videoconvert ! "
            "video/x-raw,format=BGR ! appsink drop=1 max-buffers=1")


@dataclass(frozen=True)
class SourceSpec:
    """What ``--source`` names: ``kind`` camera | file | url | gstreamer, the ``target`` OpenCV opens,
    whether it is ``live`` (reconnect, drop old frames) and the user's ``text`` (for messages)."""

    kind: str
    target: int | str
    live: bool
    text: str


def parse_source(text: str) -> SourceSpec:
    """Classify ``--source``; a file that does not exist raises :class:`SourceError` at once.

    Example:
        >>> parse_source("0")
        SourceSpec(kind='camera', target=0, live=True, text='0')
        >>> parse_source("csi://0?width=640&height=480").target.split(" ! ")[1]
        'video/x-raw(memory:NVMM),width=640,height=480,framerate=30/1'
    """
    raw = str(text).strip()
    if raw.isdigit():
        return SourceSpec("camera", int(raw), True, raw)
    if raw.startswith("/dev/video"):
        return SourceSpec("camera", raw, True, raw)
    if raw.lower().startswith("csi://"):
        return SourceSpec("gstreamer", _csi_from_url(raw), True, raw)
    if "!" in raw:
        return SourceSpec("gstreamer", raw, True, raw)
    scheme = urlsplit(raw).scheme.lower()
    if scheme in _URL_SCHEMES:
        return SourceSpec("url", raw, True, raw)
    if scheme == "file":
        raw = urlsplit(raw).path
    path = Path(raw).expanduser()
    if not path.exists():
        raise SourceError(f"no such video file: {raw} (a source is a camera index like 0, a file, "
                          "rtsp://..., csi://N or a GStreamer pipeline)")
    if not path.is_file():
        raise SourceError(f"source {raw} is not a video file")
    return SourceSpec("file", str(path), False, str(text))


def _csi_from_url(raw: str) -> str:
    parts = urlsplit(raw)
    sensor = parts.netloc or parts.path.strip("/") or "0"
    if not sensor.isdigit():
        raise InputError(f"{raw}: the CSI sensor id must be a number, e.g. csi://0")
    query = {k: v[-1] for k, v in parse_qs(parts.query, keep_blank_values=True).items()}
    unknown = sorted(set(query) - _CSI_KEYS)
    if unknown:
        raise InputError(f"{raw}: unknown csi:// option(s) {unknown}; known: {sorted(_CSI_KEYS)}")
    values: dict[str, int] = {}
    for key, value in query.items():
        if not value.isdigit():
            raise InputError(f"{raw}: csi:// option {key}={value!r} must be a whole number")
        values[key] = int(value)
    return csi_pipeline(int(sensor), **values)


class VideoSource(Protocol):
    """What the capture thread reads. ``open`` raises :class:`SourceError`; ``read`` returns a BGR
    frame, or None at the end of a file or on a stream fault (it may also raise)."""

    name: str
    live: bool

    def open(self) -> None: ...

    def read(self) -> np.ndarray | None: ...

    def release(self) -> None: ...

    @property
    def fps(self) -> float | None: ...


class OpenCVSource:
    """A :class:`SourceSpec` read with ``cv2.VideoCapture``; files and URLs go through FFmpeg with
    open/read timeouts of ``timeout_s``.

    Example:
        >>> src = OpenCVSource(parse_source("clip.mp4"), timeout_s=5)      # doctest: +SKIP
        >>> src.open(); frame = src.read(); src.release()                 # doctest: +SKIP
    """

    def __init__(self, spec: SourceSpec, timeout_s: float = 10.0, loop: bool = False) -> None:
        self.spec = spec
        self.loop = loop  # a file starts over when it ends
        self.name = spec.text if spec.kind != "gstreamer" or spec.text.startswith("csi") else "GStreamer pipeline"
        self.live = spec.live
        self.timeout_s = float(timeout_s)
        self._cap = None

    def open(self) -> None:
        import cv2

        self.release()
        ms = int(self.timeout_s * 1000)
        if self.spec.kind in ("file", "url"):
            params = [cv2.CAP_PROP_OPEN_TIMEOUT_MSEC, ms, cv2.CAP_PROP_READ_TIMEOUT_MSEC, ms]
            cap = cv2.VideoCapture(self.spec.target, cv2.CAP_FFMPEG, params)
        elif self.spec.kind == "gstreamer":
            cap = cv2.VideoCapture(self.spec.target, cv2.CAP_GSTREAMER)
        else:
            cap = cv2.VideoCapture(self.spec.target)
        if not cap.isOpened():
            cap.release()
            raise SourceError(f"could not open {self.name}: {_HINTS[self.spec.kind]}")
        self._cap = cap

    def read(self) -> np.ndarray | None:
        if self._cap is None:
            return None
        ok, frame = self._cap.read()
        if not ok and self.loop:
            import cv2

            self._cap.set(cv2.CAP_PROP_POS_FRAMES, 0)
            ok, frame = self._cap.read()
        return frame if ok and frame is not None and frame.size else None

    def release(self) -> None:
        cap, self._cap = self._cap, None
        if cap is not None:
            cap.release()

    @property
    def fps(self) -> float | None:
        import cv2

        if self._cap is None:
            return None
        fps = float(self._cap.get(cv2.CAP_PROP_FPS))
        return fps if 0.0 < fps < 1000.0 else None


_HINTS = {
    "camera": "check the camera index (ls /dev/video*) and that no other program holds the camera",
    "file": "the file is not a video OpenCV's FFmpeg can decode",
    "url": "check the address, credentials and that the stream is up (try it with ffplay)",
    "gstreamer": "check the pipeline with gst-launch-1.0 (it must end in appsink)",
}


def open_source(text: str, timeout_s: float = 10.0, loop: bool = False) -> OpenCVSource:
    """The :class:`OpenCVSource` for ``--source`` text, after the checks that need no open: the file
    exists, and OpenCV has GStreamer for pipelines and ``csi://``.

    Example:
        >>> source = open_source("0", timeout_s=5)     # doctest: +SKIP
    """
    spec = parse_source(text)
    if loop and spec.kind != "file":
        raise SourceError(f"--loop replays a video file; {text} is a {spec.kind} source")
    if spec.kind == "gstreamer":
        import cv2

        if not cv2.videoio_registry.hasBackend(cv2.CAP_GSTREAMER):
            raise SourceError(f"{text} needs OpenCV built with GStreamer, which this one ({cv2.__version__}) "
                              "is not (pip wheels never are); on a Jetson use JetPack's python3-opencv, e.g. "
                              "a venv made with --system-site-packages and no opencv-python wheel")
    return OpenCVSource(spec, timeout_s=timeout_s, loop=loop)


@dataclass(frozen=True)
class Frame:
    """A captured frame: running ``index`` from the source, ``timestamp`` (Unix seconds), ``t`` (seconds
    since the capture started), ``image`` BGR uint8 and ``monotonic`` (``time.monotonic()`` at capture)."""

    index: int
    timestamp: float
    t: float
    image: np.ndarray = field(repr=False)
    monotonic: float = 0.0


class FrameSlot(Generic[T]):
    """A bounded hand-over between threads: never more than ``capacity`` items.

    With ``drop=True`` a full slot drops its oldest item (counted in :attr:`dropped`) and ``put`` never
    blocks; with ``drop=False`` ``put`` waits for room. :attr:`max_depth` is the most items ever held.

    Example:
        >>> slot = FrameSlot(capacity=1, drop=True)
        >>> slot.put("a"), slot.put("b"), slot.get(timeout=0), slot.dropped
        (True, True, 'b', 1)
    """

    def __init__(self, capacity: int = 1, *, drop: bool = True) -> None:
        if capacity < 1:
            raise InputError(f"queue capacity must be >= 1, got {capacity}")
        self.capacity, self.drop = capacity, drop
        self.dropped = 0
        self.max_depth = 0
        self.closed = False
        self._items: collections.deque[T] = collections.deque()
        self._cond = threading.Condition()

    def put(self, item: T) -> bool:
        """Hand over ``item``; False if the slot was closed (the item is discarded)."""
        with self._cond:
            while not self.drop and len(self._items) >= self.capacity and not self.closed:
                self._cond.wait(0.1)
            if self.closed:
                return False
            if len(self._items) >= self.capacity:
                self._items.popleft()
                self.dropped += 1
            self._items.append(item)
            self.max_depth = max(self.max_depth, len(self._items))
            self._cond.notify_all()
            return True

    def get(self, timeout: float | None = None) -> T | None:
        """The oldest item, or None after ``timeout`` seconds or once the slot is closed and empty."""
        with self._cond:
            deadline = None if timeout is None else time.monotonic() + timeout
            while not self._items and not self.closed:
                remaining = None if deadline is None else deadline - time.monotonic()
                if remaining is not None and remaining <= 0:
                    return None
                self._cond.wait(remaining)
            if not self._items:
                return None
            item = self._items.popleft()
            self._cond.notify_all()
            return item

    def __len__(self) -> int:
        return len(self._items)

    def close(self) -> None:
        """No more puts; ``get`` drains what is left, then returns None."""
        with self._cond:
            self.closed = True
            self._cond.notify_all()


@dataclass(frozen=True)
class Backoff:
    """Reconnect policy: up to ``tries`` re-opens, waiting ``first_s`` doubling up to ``max_s``.

    Example:
        >>> [Backoff(tries=4, first_s=0.5, max_s=1.5).delay(i) for i in range(4)]
        [0.5, 1.0, 1.5, 1.5]
    """

    tries: int = 5
    first_s: float = 0.5
    max_s: float = 8.0

    def delay(self, attempt: int) -> float:
        return min(self.first_s * (2.0 ** attempt), self.max_s)


class Capture(threading.Thread):
    """Reads ``source`` on its own thread into a :class:`FrameSlot`; iterate :meth:`frames` to consume.

    Live sources drop the oldest frame when the consumer is slower (``drop`` defaults to
    ``source.live``) and are re-opened per ``backoff`` after a failed read; when every try fails the
    consumer gets a :class:`SourceError`. A file ends cleanly at its last frame. A blocking open or read
    that outlives ``timeout_s`` (plus a grace) also raises :class:`SourceError` in the consumer.

    Example:
        >>> capture = Capture(open_source("clip.mp4"), fps_limit=15)       # doctest: +SKIP
        >>> for frame in capture.frames(): ...                            # doctest: +SKIP
    """

    def __init__(self, source: VideoSource, *, queue_size: int = 1, drop: bool | None = None,
                 fps_limit: float | None = None, timeout_s: float = 10.0, backoff: Backoff = Backoff(),
                 on_event: object = None) -> None:
        super().__init__(name="edgevlp-capture", daemon=True)
        self.source = source
        self.slot: FrameSlot[Frame] = FrameSlot(queue_size, drop=source.live if drop is None else drop)
        self.fps_limit = fps_limit
        self.timeout_s = float(timeout_s)
        self.backoff = backoff
        self.on_event = on_event if callable(on_event) else (lambda message: None)
        self.captured = 0
        self.opens = 0
        self.source_fps: float | None = None  # the source's own frame rate, once open
        self.error: BaseException | None = None
        self.end_reason = ""
        self.opened = threading.Event()
        self._halt = threading.Event()
        self._blocking_since: float | None = None
        self._blocking_what = ""

    @property
    def reconnects(self) -> int:
        """Opens tried after the first one (retries and re-opens after a lost stream)."""
        return max(0, self.opens - 1)

    @property
    def dropped(self) -> int:
        return self.slot.dropped


    # ---------------------------------------------------------------------------- thread side
    def run(self) -> None:
        try:
            self._loop()
        except BaseException as err:  # noqa: BLE001 - handed to the consumer, which raises it
            self.error = err
        finally:
            self.slot.close()
            try:
                self.source.release()
            except Exception:  # noqa: BLE001 - releasing a broken source must not hide the first error
                pass

    def _call(self, what: str, fn):  # type: ignore[no-untyped-def]
        self._blocking_what, self._blocking_since = what, time.monotonic()
        try:
            return fn()
        finally:
            self._blocking_since = None

    def _open(self, after_frames: int | None) -> None:
        attempt = 0
        last = ""
        while not self._halt.is_set():
            try:
                self.opens += 1
                self._call("open", self.source.open)
                try:
                    self.source_fps = self.source.fps
                except Exception:  # noqa: BLE001 - a source that does not know its rate
                    self.source_fps = None
                self.opened.set()
                return
            except SourceError as err:
                last = str(err)
            except Exception as err:  # noqa: BLE001 - a driver or fake source raising on open
                last = f"{type(err).__name__}: {err}"
            if not self.source.live or attempt >= self.backoff.tries:
                break
            wait = self.backoff.delay(attempt)
            attempt += 1
            self.on_event(f"{last}; retry {attempt}/{self.backoff.tries} in {wait:.1f} s")
            if self._halt.wait(wait):
                return
        if self._halt.is_set():
            return
        tries = f"; tried {attempt + 1} times" if attempt else ""
        if after_frames is None:
            raise SourceError((last if last.startswith("could not open") else
                               f"could not open {self.source.name}: {last}") + tries)
        raise SourceError(f"lost {self.source.name} after {after_frames} frames and could not re-open it "
                          f"(last error: {last}{tries}); check the camera or stream, or raise --reconnect")

    def _loop(self) -> None:
        self._open(after_frames=None)
        start_mono, start_wall = time.monotonic(), time.time()
        next_due = start_mono
        while not self._halt.is_set():
            if self.fps_limit:
                delay = next_due - time.monotonic()
                if delay > 0 and self._halt.wait(delay):
                    break
                next_due = max(next_due + 1.0 / self.fps_limit, time.monotonic())
            try:
                image = self._call("read", self.source.read)
                fault = "end of stream" if image is None else ""
            except Exception as err:  # noqa: BLE001 - cv2.error or a driver fault: a failed read
                image, fault = None, f"read failed: {type(err).__name__}: {err}"
            if image is None:
                if not self.source.live:
                    if fault != "end of stream":
                        raise SourceError(f"reading {self.source.name} failed after {self.captured} frames "
                                          f"({fault})")
                    self.end_reason = "end of stream"
                    return
                self.on_event(f"{self.source.name}: no frame ({fault}); reconnecting")
                try:
                    self.source.release()
                except Exception:  # noqa: BLE001 - re-opened below anyway
                    pass
                self._open(after_frames=self.captured)
                continue
            now = time.monotonic()
            frame = Frame(self.captured, start_wall + (now - start_mono), now - start_mono, image, now)
            self.captured += 1
            if not self.slot.put(frame):
                break

    # -------------------------------------------------------------------------- consumer side
    def blocked_for(self) -> float:
        """Seconds the current open or read has been blocking (0 when none is running)."""
        since = self._blocking_since
        return 0.0 if since is None else time.monotonic() - since

    def frames(self, poll_s: float = 0.1):  # type: ignore[no-untyped-def]
        """Yield :class:`Frame` objects until the end of a file or :meth:`stop`; raise
        :class:`SourceError` when the source cannot be opened, is lost, or hangs past the timeout."""
        if not self.is_alive() and not self.slot.closed:
            self.start()
        grace = max(self.timeout_s, 1.0)
        while True:
            frame = self.slot.get(timeout=poll_s)
            if frame is not None:
                yield frame
                continue
            if self.slot.closed and not len(self.slot):
                if self.error is not None:
                    raise self.error
                return
            if self.blocked_for() > self.timeout_s + grace:
                raise SourceError(f"{self.source.name}: {self._blocking_what} did not finish within "
                                  f"{self.timeout_s:g} s (--timeout); check the camera or stream")

    def stop(self, join_s: float = 2.0) -> None:
        """Stop reading and wait up to ``join_s`` for the thread (a hung driver call is abandoned)."""
        self._halt.set()
        self.slot.close()
        if self.is_alive():
            self.join(join_s)
