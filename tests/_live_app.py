"""The camera app running live on its own thread, for the web viewer and MQTT tests."""

from __future__ import annotations

import json
import socket
import threading
import time
import urllib.error
import urllib.request

import cv2
import numpy as np
import pytest

from edgevlp.app import AppConfig
from edgevlp.app.pipeline import run_app

OWL = "OwlViTForObjectDetection"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class PhotoCamera:
    """A live source of real photos, ~30 fps, until the test ends."""

    name, live = "photo camera", True

    def __init__(self, frames: list[np.ndarray]) -> None:
        self.frames, self.i = frames, 0

    def open(self) -> None:
        pass

    def read(self) -> np.ndarray:
        time.sleep(1 / 30)
        self.i += 1
        return self.frames[(self.i // 15) % len(self.frames)].copy()

    def release(self) -> None:
        pass

    fps = 30.0


class App:
    """run_app on its own thread with --serve; stopped at teardown."""

    def __init__(self, detector, frames, *, assistant=None, **serve) -> None:
        self.port = _free_port()
        self.detector, self.assistant = detector, assistant
        self.stop = threading.Event()
        self.events: list[str] = []
        prompts = ("a person", "a cup") if detector is not None else ()
        self.config = AppConfig(source="photo camera", prompts=prompts, threshold=0.0, headless=True,
                                serve=f"127.0.0.1:{self.port}", **serve)
        self.summary = None
        self.error: BaseException | None = None
        self.thread = threading.Thread(target=self._run, args=(frames,), daemon=True)
        self.thread.start()
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and not any("web viewer:" in e for e in self.events):
            assert self.error is None, self.error
            time.sleep(0.05)
        self.url = next(e for e in self.events if "web viewer:" in e).split("web viewer: ", 1)[1].split()[0]
        self.base = f"http://127.0.0.1:{self.port}"

    def _run(self, frames) -> None:
        try:
            self.summary = run_app(self.config, detector=self.detector, assistant=self.assistant,
                                   source=PhotoCamera(frames),
                                   on_event=self.events.append, stop=self.stop)
        except BaseException as err:  # noqa: BLE001
            self.error = err

    def close(self) -> None:
        self.stop.set()
        self.thread.join(30)
        assert self.error is None, self.error

    def state(self, token: str | None = None) -> dict:
        return json.loads(get(self.base + "/api/state", token=token)[1])


def get(url: str, *, token: str | None = None, headers: dict | None = None) -> tuple[int, bytes]:
    req = urllib.request.Request(url, headers={**({"X-EdgeVLP-Token": token} if token else {}), **(headers or {})})
    try:
        with urllib.request.urlopen(req, timeout=10) as r:
            return r.status, r.read()
    except urllib.error.HTTPError as err:
        return err.code, err.read()


def post(url: str, body: bytes, *, token: str | None = None, headers: dict | None = None) -> tuple[int, dict]:
    req = urllib.request.Request(url, data=body, method="POST", headers={
        "Content-Type": "application/json", **({"X-EdgeVLP-Token": token} if token else {}), **(headers or {})})
    try:
        with urllib.request.urlopen(req, timeout=10) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as err:
        return err.code, json.loads(err.read() or b"{}")


def wait_for(check, timeout: float = 15.0, what: str = "condition"):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


@pytest.fixture(scope="module")
def frames(photos_bgr):
    return [cv2.resize(photos_bgr["astronaut"], (320, 240)), cv2.resize(photos_bgr["coffee"], (320, 240))]


@pytest.fixture(scope="module")
def detector(exported):
    from edgevlp.runtime import load

    return load(exported(OWL))
