"""The camera app's web viewer (edgevlp run --serve): the real aiohttp server beside a running pipeline on
a tiny detector, driven over HTTP / WebSocket and from Debian's chromium through Playwright."""

from __future__ import annotations

import json
import os
import shutil
import time
import urllib.error
import urllib.request
from pathlib import Path

import cv2
import numpy as np
import pytest

from edgevlp.app.config import parse_cadence
from _live_app import App, _free_port, detector, frames, get, post, wait_for  # noqa: F401 - fixtures

OWL = "OwlViTForObjectDetection"
ROOT = Path(__file__).resolve().parents[1]
CHROMIUM = next((p for p in ("/usr/bin/chromium", "/usr/bin/chromium-browser") if Path(p).exists()), None)




async def _read_viewer(ws, got: dict, name: str, ack: bool, until: float) -> None:
    """Read a viewer's WebSocket until ``until``: count its frames in ``got[name]`` (and its errors),
    acknowledging each JPEG as the page does after drawing it when ``ack``."""
    import asyncio

    import aiohttp

    last = None
    while time.monotonic() < until:
        try:
            msg = await asyncio.wait_for(ws.receive(), timeout=max(0.05, until - time.monotonic()))
        except asyncio.TimeoutError:
            break
        if msg.type == aiohttp.WSMsgType.TEXT:
            data = json.loads(msg.data)
            if data["type"] == "frame":
                got[name] = got.get(name, 0) + 1
                last = data
            elif data["type"] == "error":
                got.setdefault(f"{name}_errors", []).append(data["message"])
        elif msg.type == aiohttp.WSMsgType.BINARY and ack:
            await ws.send_str(json.dumps({"type": "ack", "seq": last["seq"]}))
        elif msg.type in (aiohttp.WSMsgType.CLOSED, aiohttp.WSMsgType.ERROR):
            break


@pytest.fixture
def app(detector, frames):
    running = App(detector, frames)
    yield running
    running.close()


def test_http_api_snapshot_stream_and_prompts(app, frames):
    state = wait_for(lambda: (s := app.state())["frame"] is not None and s, what="a first frame")
    assert state["prompts"] == ["a person", "a cup"] and state["detector"] and not state["paused"]
    status, jpeg = get(app.base + "/snapshot.jpg")
    assert status == 200
    assert cv2.imdecode(np.frombuffer(jpeg, np.uint8), cv2.IMREAD_COLOR).shape == frames[0].shape
    with urllib.request.urlopen(app.base + "/stream.mjpg", timeout=10) as r:
        assert r.headers["Content-Type"].startswith("multipart/x-mixed-replace")
        chunk = r.read(4096)
    assert chunk.startswith(b"--frame\r\nContent-Type: image/jpeg") and b"\xff\xd8" in chunk
    status, body = post(app.base + "/api/prompts", json.dumps(["a rocket", "a star"]).encode())
    assert status == 202 and body["pending_prompts"] == ["a rocket", "a star"]
    wait_for(lambda: app.detector.prompts == ["a rocket", "a star"], what="the detector's new prompts")
    assert app.state()["prompts"] == ["a rocket", "a star"] and app.state()["pending_prompts"] is None


def test_bad_input_is_refused_and_the_pipeline_goes_on(app):
    wait_for(lambda: app.state()["frame"] is not None, what="a first frame")
    url = app.base + "/api/prompts"
    for body, status, words in ((json.dumps(["x"] * 10_000).encode(), 400, "give 1 to"),
                                (json.dumps(["y" * 1_000_000]).encode(), 413, "over 65536 bytes"),
                                (b'["\xff\xfe"]', 400, "not UTF-8"),
                                (b'["unclosed', 400, "not UTF-8 JSON"),
                                (b'{"prompts": "cup"}', 400, "JSON list"),
                                (b'[""]', 400, "non-empty")):
        got, answer = post(url, body)
        assert got == status, (body[:40], got, answer)
        assert words in answer.get("error", words)
    got, _ = post(url, b'["cup"]', headers={"Content-Type": "text/plain"})
    assert got == 400
    before = app.state()["frame"]
    wait_for(lambda: app.state()["frame"] > before + 3, what="frames after the bad requests")
    assert app.detector.prompts == ["a person", "a cup"]


def test_websocket_credit_flow_threshold_nan_and_a_stalled_viewer(app):
    import asyncio

    import aiohttp

    async def scenario():
        async with aiohttp.ClientSession() as session:
            stalled = await session.ws_connect(app.base.replace("http", "ws") + "/ws")
            live = await session.ws_connect(app.base.replace("http", "ws") + "/ws")
            got = {"stalled": 0, "live": 0}

            until = time.monotonic() + 3.0
            await live.send_str(json.dumps({"type": "threshold", "value": float("nan")}))
            await live.send_str("not json")
            await live.send_str(json.dumps({"type": "source", "value": "/etc/passwd"}))
            await asyncio.gather(_read_viewer(stalled, got, "stalled", False, until),
                                 _read_viewer(live, got, "live", True, until))
            await stalled.close()
            await live.close()
            return got

    got = asyncio.run(scenario())
    assert got["stalled"] == 1, "a viewer that never acknowledges gets one frame, not a backlog"
    assert got["live"] > 10, got
    errors = got.get("live_errors", [])
    assert any("threshold must be a number" in e for e in errors)
    assert any("unknown message type 'source'" in e for e in errors) and len(errors) == 3
    assert app.state()["threshold"] == 0.0
    app.close()
    web = app.summary["web"]
    assert web["frames_sent"] > web["frames_encoded"] > 0, "a frame both viewers got is encoded once"


def test_viewers_share_the_frames_they_are_served(detector, frames):
    """Three viewers on their own phases, a pipeline faster than their 10 fps: they are served the same
    frames, so the JPEGs encoded follow the viewers' rate, not one per viewer per frame."""
    import asyncio

    import aiohttp

    app = App(detector, frames, serve_fps=10.0)
    wait_for(lambda: (s := app.state())["stats"].get("fps", 0) > 20 and s, what="a pipeline over 20 FPS")

    async def scenario():
        got: dict = {}
        async with aiohttp.ClientSession() as session:
            viewers = []
            for _ in range(3):
                viewers.append(await session.ws_connect(app.base.replace("http", "ws") + "/ws"))
                await asyncio.sleep(0.037)  # different phases
            until = time.monotonic() + 3.0
            await asyncio.gather(*(_read_viewer(ws, got, f"v{i}", True, until) for i, ws in enumerate(viewers)))
            for ws in viewers:
                await ws.close()
        return got

    got = asyncio.run(scenario())
    app.close()
    web = app.summary["web"]
    assert all(got.get(f"v{i}", 0) >= 15 for i in range(3)), got
    assert web["frames_encoded"] <= 0.5 * web["frames_sent"], (web, got)


def test_tokens_origin_and_host_checks(detector, frames):
    app = App(detector, frames, token="s3cret-control", view_token="s3cret-view")
    try:
        assert app.url.endswith("?token=s3cret-control")
        assert get(app.base + "/api/state")[0] == 401
        assert get(app.base + "/api/state", token="wrong")[0] == 401
        assert get(app.base + "/", token="wrong")[0] == 401
        assert get(app.base + "/api/state", token="s3cret-view")[0] == 200
        assert get(app.base + "/static/app.js")[0] == 200  # assets are public, data is not
        assert post(app.base + "/api/prompts", b'["cup"]', token="s3cret-view")[0] == 403
        assert post(app.base + "/api/prompts", b'["cup"]', token="s3cret-control",
                    headers={"Origin": "http://evil.example"})[0] == 403
        assert get(app.base + "/api/state", token="s3cret-control", headers={"Host": "evil.example"})[0] == 421
        assert get(app.base + "/ws?token=s3cret-control", headers={
            "Origin": "http://evil.example", "Connection": "Upgrade", "Upgrade": "websocket",
            "Sec-WebSocket-Version": "13", "Sec-WebSocket-Key": "dGhlIHNhbXBsZSBub25jZQ=="})[0] == 403
        assert post(app.base + "/api/prompts", b'["a cup"]', token="s3cret-control",
                    headers={"Origin": app.base})[0] == 202
        wait_for(lambda: detector.prompts == ["a cup"], what="the control token's change")
    finally:
        app.close()
        detector.set_prompts(["a person", "a cup"])


def test_non_loopback_bind_needs_a_token():
    from edgevlp.app.web.server import WebViewer

    viewer = WebViewer("0.0.0.0", _free_port())
    assert viewer.token and viewer.view_token and "?token=" in viewer.url
    assert WebViewer("127.0.0.1", 1).token is None
    assert WebViewer("0.0.0.0", 1, no_auth=True).token is None


def _browser():
    sync_api = pytest.importorskip("playwright.sync_api", reason="playwright is not installed")
    if CHROMIUM is None:
        if os.environ.get("CI") == "true":
            pytest.fail("CI must test the web viewer in a real chromium (apt-get install chromium)")
        pytest.skip("Debian's chromium is not installed (apt-get install chromium)")
    return sync_api


def test_the_page_in_a_real_chromium(app, tmp_path):
    sync_api = _browser()
    origin = app.base
    outside: list[str] = []
    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox", "--disable-gpu"])
        try:
            context = browser.new_context(viewport={"width": 1100, "height": 700}, bypass_csp=True)  # test probes only
            context.on("request", lambda r: None if r.url.startswith((origin, "ws://127.0.0.1")) else outside.append(r.url))
            one, two = context.new_page(), context.new_page()
            for page in (one, two):
                page.goto(app.url)
            one.wait_for_function("window.edgevlp.framesDrawn > 3 && window.edgevlp.boxesDrawn > 0", timeout=20000)
            two.wait_for_function("window.edgevlp.framesDrawn > 3", timeout=20000)
            # a prompt typed in one page changes the detections and shows in the other
            one.fill("#prompt-input", "a rocket, a star")
            one.press("#prompt-input", "Enter")
            two.wait_for_function("JSON.stringify(window.edgevlp.prompts) === '[\"a rocket\",\"a star\"]'", timeout=15000)
            assert two.inner_text("#chips").count("×") == 2 and "a rocket" in two.inner_text("#chips")
            wait_for(lambda: app.detector.prompts == ["a rocket", "a star"], what="the detector's new prompts")
            one.wait_for_function("window.edgevlp.labels.length > 0 && window.edgevlp.labels.every("
                                  "l => ['a rocket', 'a star'].includes(l))", timeout=15000)
            one.screenshot(path=str(tmp_path / "web-viewer.png"))
            # pause stops the frames for every viewer, resume brings them back
            one.click("#pause")
            two.wait_for_function("window.edgevlp.paused === true", timeout=10000)
            time.sleep(0.5)
            frozen = two.evaluate("window.edgevlp.framesDrawn")
            time.sleep(1.0)
            assert two.evaluate("window.edgevlp.framesDrawn") <= frozen + 1
            two.click("#pause")
            one.wait_for_function(f"window.edgevlp.paused === false && window.edgevlp.framesDrawn > {frozen + 3}",
                                  timeout=15000)
            # a cross-origin POST from a page of another origin (localhost vs 127.0.0.1) changes nothing
            other = context.new_page()
            other.goto(app.base.replace("127.0.0.1", "localhost") + "/static/app.css")
            for mode, kind in (("no-cors", "text/plain"), ("cors", "application/json")):
                other.evaluate(f"fetch('{app.base}/api/prompts', {{method: 'POST', mode: '{mode}', headers: "
                               f"{{'Content-Type': '{kind}'}}, body: '[\"evil\"]'}}).catch(() => null)")
            time.sleep(1.0)
            assert app.detector.prompts == ["a rocket", "a star"] and app.state()["pending_prompts"] is None
        finally:
            browser.close()
    assert not [u for u in outside if not u.startswith(origin.replace("127.0.0.1", "localhost"))], \
        f"requests left the machine: {outside}"
    shot = os.environ.get("EDGEVLP_SCREENSHOT")
    if shot:
        shutil.copyfile(tmp_path / "web-viewer.png", shot)


def test_a_wrong_token_is_refused_by_the_page(detector, frames):
    sync_api = _browser()
    app = App(detector, frames, token="tok-1")
    try:
        with sync_api.sync_playwright() as p:
            browser = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox", "--disable-gpu"])
            try:
                page = browser.new_page(bypass_csp=True)
                assert page.goto(app.base + "/?token=wrong").status == 401
                assert page.goto(app.base + "/").status == 401
                assert page.goto(app.url).status == 200
                page.wait_for_function("window.edgevlp.framesDrawn > 1", timeout=20000)
                status = page.evaluate("fetch('/api/prompts', {method: 'POST', headers: {'Content-Type': "
                                       "'application/json'}, body: '[\"cup\"]'}).then(r => r.status)")
                assert status == 401  # the page's own origin, but no token
            finally:
                browser.close()
    finally:
        app.close()


def test_the_question_box_drives_a_vlm(exported, frames):
    sync_api = _browser()
    from edgevlp.runtime import load

    app = App(None, frames, assistant=load(exported("SmolVLMForConditionalGeneration")), ask="what is this?",
              caption_every=parse_cadence("0.2"))
    try:
        with sync_api.sync_playwright() as p:
            browser = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox", "--disable-gpu"])
            try:
                page = browser.new_page(bypass_csp=True)
                page.goto(app.url)
                page.wait_for_function("window.edgevlp.framesDrawn > 2 && window.edgevlp.question === 'what is this?'",
                                       timeout=20000)
                assert page.is_visible("#question-input") and not page.is_visible("#prompt-input")
                page.fill("#question-input", "how many cups are there?")
                page.press("#question-input", "Enter")
                page.wait_for_function("window.edgevlp.question === 'how many cups are there?'", timeout=10000)
                page.wait_for_function("document.getElementById('caption').textContent.length > 0", timeout=20000)
            finally:
                browser.close()
        assert app.state()["question"] == "how many cups are there?"
    finally:
        app.close()
    assert app.summary["question"] == "how many cups are there?" and app.summary["question_changes"] == 1
