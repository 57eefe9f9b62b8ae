"""The web viewer's server: one page (assets shipped in the package, nothing from a CDN), a WebSocket per
viewer with credit flow control, MJPEG and snapshot endpoints for VLC / OBS / Home Assistant, and a
small JSON API for scripts.

Transport. Each frame is JPEG-encoded once, by the first viewer that needs it, and shared by all;
viewers share a ``max_fps`` clock, so they are served the same frames and the encodes follow that rate. A
WebSocket viewer gets a frame (a JSON ``frame`` message with the frame's results, then the JPEG as a
binary message) only after it acknowledged the previous one, and then always the newest: a slow viewer
skips frames, never builds a backlog, and never slows the pipeline or the other viewers.

Security. Binds 127.0.0.1 unless a host is given; any other bind needs a token (generated and printed,
or ``token=``) unless ``no_auth``. Two tokens: the control token may change prompts, the threshold,
pause; the view token only watches. Requests carry it as ``?token=`` (the page's URL), an
``Authorization: Bearer`` or ``X-EdgeVLP-Token`` header. State-changing requests also need a
matching ``Origin`` when one is sent (browsers do: cross-site requests and WebSocket hijacking are
refused) and a JSON body; every request's ``Host`` must be a loopback name, an IP literal, the bound
host or one given by ``allow_hosts`` (DNS rebinding). Nothing the web sends can change the source,
a file path or anything that runs.
"""

from __future__ import annotations

import asyncio
import hmac
import ipaddress
import json
import secrets
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from aiohttp import WSMsgType, web

from edgevlp.app.remote import MAX_BODY_BYTES, check_prompts, check_question, check_serve_fps, check_threshold
from edgevlp.errors import InputError, ServerError

__all__ = ["WebViewer"]

STATIC = Path(__file__).with_name("static")
_LOOPBACK_NAMES = ("127.0.0.1", "localhost", "::1")


def _is_loopback(host: str) -> bool:
    if host in _LOOPBACK_NAMES:
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


@dataclass
class _Published:
    seq: int
    image: np.ndarray
    results: dict[str, Any]
    published: float
    jpeg: bytes | None = None
    encoding: Any = None  # the one encode of this frame in flight (an asyncio future)
    served: float | None = None  # when a viewer first got it (the viewers' shared clock)


@dataclass
class _State:
    prompts: list[str] = field(default_factory=list)
    pending_prompts: list[str] | None = None
    threshold: float = 0.1
    paused: bool = False
    question: str | None = None
    caption: str | None = None
    last_error: str | None = None
    stats: dict[str, Any] = field(default_factory=dict)
    viewers: int = 0


class WebViewer:
    """The web server beside one camera pipeline.

    Example:
        >>> viewer = WebViewer(port=8080).start()         # doctest: +SKIP
        >>> viewer.url                                      # doctest: +SKIP
        'http://127.0.0.1:8080/'
    """

    def __init__(self, host: str = "127.0.0.1", port: int = 8080, *, token: str | None = None,
                 view_token: str | None = None, no_auth: bool = False, allow_hosts: Sequence[str] = (),
                 jpeg_quality: int = 80, prompts: Sequence[str] = (), threshold: float = 0.1,
                 detector: bool = True, assistant: bool = False, question: str | None = None,
                 max_fps: float = 30.0) -> None:
        if not 1 <= int(jpeg_quality) <= 100:
            raise InputError(f"JPEG quality must be in 1..100, got {jpeg_quality}")
        #: frames a second a viewer gets at most (a pipeline at 200 FPS is watched at this rate; the
        #: JPEG encoding, the viewers' only cost to the pipeline, follows it)
        self.max_fps = check_serve_fps(max_fps)
        self.host, self.port = host, int(port)
        self.loopback = _is_loopback(host)
        if no_auth:
            token = view_token = None
        elif token is None and (not self.loopback or view_token is not None):
            token = secrets.token_urlsafe(18)
        if token is not None and view_token is None:
            view_token = secrets.token_urlsafe(12)
        self.token, self.view_token, self.no_auth = token, view_token, no_auth
        self.allow_hosts = {h.lower() for h in allow_hosts}
        self.jpeg_quality = int(jpeg_quality)
        self.detector, self.assistant = detector, assistant
        self.state = _State(prompts=list(prompts), threshold=float(threshold), question=question)
        self._latest: _Published | None = None
        self._served: _Published | None = None  # the frame of the viewers' current tick
        self._lock = threading.Lock()
        self._changes: dict[str, Any] = {}
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._started = threading.Event()
        self._start_error: BaseException | None = None
        self._frame_event: asyncio.Event | None = None
        self._state_event: asyncio.Event | None = None
        self._runner: Any = None
        self._sockets: set[Any] = set()
        self.frames_encoded = 0
        self.frames_sent = 0
        self._frame_waiters = 0  # viewers waiting for a newer frame: publish wakes the loop only for them

    # ------------------------------------------------------------------------------ life cycle
    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        shown = "127.0.0.1" if host in ("0.0.0.0", "[::]") else host
        return f"http://{shown}:{self.port}/" + (f"?token={self.token}" if self.token else "")

    @property
    def view_url(self) -> str | None:
        if self.view_token is None:
            return None
        return self.url.split("?", 1)[0] + f"?token={self.view_token}"

    def start(self, timeout: float = 10.0) -> "WebViewer":
        self._thread = threading.Thread(target=self._serve, name="edgevlp-web", daemon=True)
        self._thread.start()
        if not self._started.wait(timeout):
            raise ServerError(f"the web viewer did not start on {self.host}:{self.port} within {timeout:.0f} s")
        if self._start_error is not None:
            raise ServerError(f"the web viewer cannot listen on {self.host}:{self.port}: {self._start_error}; "
                              "pick another --serve port") from None
        return self

    def stop(self) -> None:
        loop = self._loop
        if loop is None or self._thread is None:
            return
        fut = asyncio.run_coroutine_threadsafe(self._shutdown(), loop)
        try:
            fut.result(5)
        except Exception:  # noqa: BLE001 - stopping anyway
            pass
        loop.call_soon_threadsafe(loop.stop)
        self._thread.join(5)
        self._loop = None

    def _serve(self) -> None:
        loop = asyncio.new_event_loop()
        self._loop = loop
        asyncio.set_event_loop(loop)
        self._frame_event, self._state_event = asyncio.Event(), asyncio.Event()
        @web.middleware
        async def guard(request: Any, handler: Any) -> Any:
            return await self._guard(request, handler)

        app = web.Application(client_max_size=MAX_BODY_BYTES, middlewares=[guard])
        app.router.add_get("/", self._index)
        app.router.add_get("/static/{name}", self._static)
        app.router.add_get("/ws", self._ws)
        app.router.add_get("/stream.mjpg", self._mjpeg)
        app.router.add_get("/snapshot.jpg", self._snapshot)
        app.router.add_get("/api/state", self._api_state)
        app.router.add_post("/api/prompts", self._api_prompts)
        self._runner = web.AppRunner(app, access_log=None)
        try:
            loop.run_until_complete(self._runner.setup())
            site = web.TCPSite(self._runner, self.host, self.port, reuse_address=True)
            loop.run_until_complete(site.start())
        except Exception as err:  # noqa: BLE001 - reported by start()
            self._start_error = err
            self._started.set()
            return
        self._started.set()
        try:
            loop.run_forever()
        finally:
            loop.close()

    async def _shutdown(self) -> None:
        for ws in list(self._sockets):
            await ws.close()
        if self._runner is not None:
            await self._runner.cleanup()

    # ------------------------------------------------------------------------------ pipeline side
    def publish(self, image: np.ndarray, results: dict[str, Any], stats: dict[str, Any]) -> None:
        """The pipeline's newest frame (BGR, not annotated: the page draws the boxes) and its results.
        Returns at once; nothing here waits for a viewer."""
        with self._lock:
            seq = (self._latest.seq + 1) if self._latest is not None else 0
            self._latest = _Published(seq, image, results, time.monotonic())
            self.state.stats = stats
            if results.get("caption") is not None:
                self.state.caption = results["caption"]
            wake = self._frame_waiters > 0
        if wake:  # at 200 FPS most frames find every viewer busy: no wake-up, no GIL hand-over
            self._notify(frame=True)

    def take_changes(self) -> dict[str, Any]:
        """Changes the viewers asked for since the last call (``prompts``, ``threshold``, ``paused``);
        the pipeline applies them and reports back with :meth:`applied`."""
        with self._lock:
            changes, self._changes = self._changes, {}
        return changes

    def applied(self, *, prompts: list[str] | None = None, error: str | None = None,
                threshold: float | None = None, paused: bool | None = None, question: str | None = None) -> None:
        """What the pipeline did with :meth:`take_changes`; every viewer sees the new state."""
        with self._lock:
            if question is not None:
                self.state.question = question
            if prompts is not None:
                self.state.prompts = list(prompts)
            if error is not None or prompts is not None:
                self.state.pending_prompts = None
            self.state.last_error = error
            if threshold is not None:
                self.state.threshold = threshold
            if paused is not None:
                self.state.paused = paused
        self._notify(state=True)

    def _notify(self, frame: bool = False, state: bool = False) -> None:
        loop = self._loop
        if loop is None:
            return

        def wake() -> None:
            if frame and self._frame_event is not None:
                self._frame_event.set()
                self._frame_event = asyncio.Event()
            if state and self._state_event is not None:
                self._state_event.set()
                self._state_event = asyncio.Event()

        try:
            loop.call_soon_threadsafe(wake)
        except RuntimeError:  # the loop closed while stopping
            pass

    def _request_change(self, **change: Any) -> None:
        with self._lock:
            self._changes.update(change)
            if "prompts" in change:
                self.state.pending_prompts = change["prompts"]
        self._notify(state=True)

    # ------------------------------------------------------------------------------ security
    def _role(self, request: Any) -> str | None:
        """"control", "view" or None (no valid token)."""
        if self.token is None:
            return "control"
        given = request.query.get("token") or request.headers.get("X-EdgeVLP-Token") or ""
        auth = request.headers.get("Authorization", "")
        if auth.startswith("Bearer "):
            given = auth[7:]
        if given and hmac.compare_digest(given, self.token):
            return "control"
        if given and self.view_token and hmac.compare_digest(given, self.view_token):
            return "view"
        return None

    def _host_ok(self, host_header: str) -> bool:
        host = host_header.lower()
        name = host.rsplit(":", 1)[0] if not host.startswith("[") else host.split("]")[0][1:]
        if name in _LOOPBACK_NAMES or name == self.host.lower() or host in self.allow_hosts or name in self.allow_hosts:
            return True
        try:
            ipaddress.ip_address(name)
            return True  # an IP literal cannot be rebound
        except ValueError:
            return False

    def _origin_ok(self, request: Any) -> bool:
        origin = request.headers.get("Origin")
        return origin is None or origin == f"http://{request.host}" or origin == f"https://{request.host}"

    async def _guard(self, request: Any, handler: Any) -> Any:
        if not self._host_ok(request.host or ""):
            return web.json_response({"error": f"Host {request.host!r} is not served here (DNS rebinding "
                                               "guard); add it with --allow-host"}, status=421)
        if request.path.startswith("/static/"):
            return await handler(request)
        role = self._role(request)
        if role is None:
            return web.json_response({"error": "a valid token is needed: open the URL the app printed "
                                               "(…/?token=…)"}, status=401)
        request["role"] = role
        if request.method not in ("GET", "HEAD"):
            if role != "control":
                return web.json_response({"error": "this is a view-only token: changes need the control token"},
                                         status=403)
            if not self._origin_ok(request):
                return web.json_response({"error": "cross-origin request refused"}, status=403)
        if request.path == "/ws" and not self._origin_ok(request):
            return web.json_response({"error": "cross-origin WebSocket refused"}, status=403)
        return await handler(request)

    # ------------------------------------------------------------------------------ handlers
    def state_json(self) -> dict[str, Any]:
        with self._lock:
            s = self.state
            return {"prompts": list(s.prompts), "pending_prompts": s.pending_prompts, "threshold": s.threshold,
                    "paused": s.paused, "question": s.question, "assistant": self.assistant, "caption": s.caption, "last_error": s.last_error, "stats": dict(s.stats),
                    "viewers": len(self._sockets), "detector": self.detector,
                    "frame": self._latest.seq if self._latest is not None else None}

    async def _index(self, request: Any) -> Any:
        return web.Response(text=(STATIC / "index.html").read_text(encoding="utf-8"), content_type="text/html",
                            headers={"Content-Security-Policy": "default-src 'self'; img-src 'self' blob: data:; "
                                                                "connect-src 'self'; style-src 'self'",
                                     "Cache-Control": "no-store", "Referrer-Policy": "no-referrer"})

    async def _static(self, request: Any) -> Any:
        name = request.match_info["name"]
        files = {p.name: p for p in STATIC.iterdir() if p.suffix in (".js", ".css")}
        if name not in files:
            raise web.HTTPNotFound()
        kind = "application/javascript" if name.endswith(".js") else "text/css"
        return web.Response(body=files[name].read_bytes(), content_type=kind)

    async def _frame_after(self, last: int, sent_at: float) -> tuple[_Published, bytes]:
        """The newest frame (and its JPEG) once it is newer than ``last`` and ``1 / max_fps`` s have
        passed since ``sent_at``: what a viewer gets next. Viewers share a clock: within ``1 /
        max_fps`` s of a frame being first served, every viewer gets that frame, so the frames
        encoded follow ``max_fps`` however many viewers there are (each on its own phase would pick a
        different newest frame from a 200 FPS pipeline: an encode per viewer per frame)."""
        wait = sent_at + 1.0 / self.max_fps - time.monotonic()
        if wait > 0:
            await asyncio.sleep(wait)
        while True:
            served = self._served
            if (served is not None and served.seq != last and served.jpeg is not None
                    and time.monotonic() - served.served < 1.0 / self.max_fps):  # type: ignore[operator]
                return served, served.jpeg  # the frame of this tick, already encoded: shared
            got = await self._jpeg()
            if got is not None and got[0].seq != last:
                if got[0].served is None:
                    got[0].served = time.monotonic()
                    self._served = got[0]
                return got
            await self._next_frame(last)

    async def _next_frame(self, last: int) -> None:
        """Wait until the pipeline publishes a frame newer than ``last`` (at most a second)."""
        assert self._frame_event is not None
        event = self._frame_event
        with self._lock:
            self._frame_waiters += 1
            newer = self._latest is not None and self._latest.seq != last
        try:
            if not newer:
                await asyncio.wait_for(event.wait(), timeout=1.0)
        except asyncio.TimeoutError:
            pass
        finally:
            with self._lock:
                self._frame_waiters -= 1

    async def _jpeg(self) -> tuple[_Published, bytes] | None:
        with self._lock:
            latest = self._latest
        if latest is None:
            return None
        if latest.jpeg is None:
            import cv2

            def encode() -> bytes:
                ok, buf = cv2.imencode(".jpg", latest.image, [cv2.IMWRITE_JPEG_QUALITY, self.jpeg_quality])
                return buf.tobytes() if ok else b""

            if latest.encoding is None:  # encoded once per frame, shared by every viewer
                latest.encoding = asyncio.get_running_loop().run_in_executor(None, encode)
                self.frames_encoded += 1
            data = await latest.encoding
            latest.jpeg = data
        return latest, latest.jpeg

    async def _snapshot(self, request: Any) -> Any:
        got = await self._jpeg()
        if got is None:
            return web.json_response({"error": "no frame yet"}, status=503)
        return web.Response(body=got[1], content_type="image/jpeg", headers={"Cache-Control": "no-store"})

    async def _mjpeg(self, request: Any) -> Any:
        resp = web.StreamResponse(headers={"Content-Type": "multipart/x-mixed-replace; boundary=frame",
                                           "Cache-Control": "no-store"})
        await resp.prepare(request)
        last, sent_at = -1, 0.0
        try:
            while True:
                got = await self._frame_after(last, sent_at)
                last, sent_at = got[0].seq, time.monotonic()
                await resp.write(b"--frame\r\nContent-Type: image/jpeg\r\nContent-Length: "
                                 + str(len(got[1])).encode() + b"\r\n\r\n" + got[1] + b"\r\n")
        except (ConnectionResetError, asyncio.CancelledError):
            pass
        return resp

    async def _api_state(self, request: Any) -> Any:
        return web.json_response(self.state_json())

    async def _api_prompts(self, request: Any) -> Any:
        try:
            if request.content_type != "application/json":
                raise InputError("send the prompts as JSON (Content-Type: application/json)")
            try:
                body = await request.read()
            except web.HTTPRequestEntityTooLarge:
                return web.json_response({"error": f"the request body is over {MAX_BODY_BYTES} bytes; send a "
                                                   "JSON list of short prompts"}, status=413)
            try:
                value = json.loads(body.decode("utf-8"))
            except (UnicodeDecodeError, json.JSONDecodeError) as err:
                raise InputError(f"the body is not UTF-8 JSON: {err}") from None
            prompts = check_prompts(value)
            if not self.detector:
                raise InputError("this app runs no detector: there are no prompts to set")
        except InputError as err:
            return web.json_response({"error": str(err)}, status=400)
        self._request_change(prompts=prompts)
        return web.json_response({"pending_prompts": prompts}, status=202)

    async def _ws(self, request: Any) -> Any:
        ws = web.WebSocketResponse(max_msg_size=MAX_BODY_BYTES, heartbeat=20)
        await ws.prepare(request)
        self._sockets.add(ws)
        self._notify(state=True)
        credit = asyncio.Event()
        credit.set()
        control = request["role"] == "control"

        async def send_frames() -> None:
            last, sent_at = -1, 0.0
            while not ws.closed:
                await credit.wait()
                pub, data = await self._frame_after(last, sent_at)
                last, sent_at = pub.seq, time.monotonic()
                credit.clear()
                await ws.send_str(json.dumps({"type": "frame", "seq": pub.seq, "results": pub.results,
                                              "stats": self.state_json()["stats"],
                                              "age_ms": round((time.monotonic() - pub.published) * 1e3, 1)}))
                await ws.send_bytes(data)
                self.frames_sent += 1

        async def send_state() -> None:
            while not ws.closed:
                await ws.send_str(json.dumps({"type": "state", **self.state_json()}))
                assert self._state_event is not None
                await self._state_event.wait()

        tasks = [asyncio.ensure_future(send_frames()), asyncio.ensure_future(send_state())]
        try:
            async for msg in ws:
                if msg.type != WSMsgType.TEXT:
                    await ws.send_str(json.dumps({"type": "error", "message": "send JSON text messages"}))
                    continue
                try:
                    data = json.loads(msg.data)
                    if not isinstance(data, dict):
                        raise InputError("messages are JSON objects with a type")
                    kind = data.get("type")
                    if kind == "ack":
                        credit.set()
                        continue
                    if kind not in ("prompts", "threshold", "pause", "question"):
                        raise InputError(f"unknown message type {kind!r}")
                    if not control:
                        raise InputError("this is a view-only token: changes need the control token")
                    if kind == "prompts":
                        if not self.detector:
                            raise InputError("this app runs no detector: there are no prompts to set")
                        self._request_change(prompts=check_prompts(data.get("prompts")))
                    elif kind == "question":
                        if not self.assistant:
                            raise InputError("this app runs no VLM (vqa bundle): there is no question to set")
                        self._request_change(question=check_question(data.get("text")))
                    elif kind == "threshold":
                        self._request_change(threshold=check_threshold(data.get("value")))
                    else:
                        self._request_change(paused=bool(data.get("value")))
                except (InputError, json.JSONDecodeError, ValueError) as err:
                    await ws.send_str(json.dumps({"type": "error", "message": str(err)}))
        finally:
            for t in tasks:
                t.cancel()
            self._sockets.discard(ws)
            self._notify(state=True)
        return ws
