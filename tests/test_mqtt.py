"""Events from the camera app on a real MQTT broker (Debian's mosquitto, started here on a loopback port),
and the event tracker's hysteresis."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import threading
import time
from pathlib import Path

import cv2
import pytest

from _live_app import App, _free_port, detector, frames, get, wait_for  # noqa: F401 - fixtures
from edgevlp.app.events import CaptionEvents, EventTracker
from edgevlp.errors import InputError

OWL = "OwlViTForObjectDetection"
MOSQUITTO = shutil.which("mosquitto") or next((p for p in ("/usr/sbin/mosquitto",) if Path(p).exists()), None)


# ------------------------------------------------------------------------------ tracker (no broker)
def _det(label: str, x: float, score: float = 0.9) -> dict:
    return {"label": label, "score": score, "box": [x, 10.0, x + 20.0, 30.0]}


def test_tracker_sends_new_update_end_not_one_message_per_frame():
    tracker = EventTracker(min_hits=3, max_misses=3, update_every_s=0.5)
    events = []
    for f in range(40):  # a cup that stays, drifts right after frame 20, and leaves at frame 30
        dets = [_det("cup", 10 + (f - 20) * 3 if f > 20 else 10)] if f < 30 else []
        if f == 5:
            dets.append(_det("cat", 200))  # a one-frame blip
        events += tracker.update(dets, frame=f, t=f * 0.1)
    kinds = [e["type"] for e in events]
    assert kinds[0] == "new" and kinds[-1] == "end" and kinds.count("new") == 1 and kinds.count("end") == 1
    assert 1 <= kinds.count("update") <= 4, kinds  # the drift, rate-limited
    assert all(e["after"]["label"] == "cup" for e in events), "a blip never becomes an object"
    assert events[0]["after"]["start_time"] == 0.0 and events[-1]["after"]["end_time"] == pytest.approx(2.9)
    ids = {e["after"]["id"] for e in events}
    assert len(ids) == 1
    upd = next(e for e in events if e["type"] == "update")
    assert upd["before"]["box"] != upd["after"]["box"]


def test_tracker_keeps_two_objects_apart_and_finishes():
    tracker = EventTracker(min_hits=1, max_misses=5)
    new = tracker.update([_det("cup", 0), _det("cup", 100)], frame=0, t=0.0)
    assert [e["type"] for e in new] == ["new", "new"] and new[0]["after"]["id"] != new[1]["after"]["id"]
    assert tracker.update([_det("cup", 1), _det("cup", 101)], frame=1, t=0.1) == []
    assert [e["type"] for e in tracker.finish(0.2)] == ["end", "end"]
    captions = CaptionEvents()
    assert [e["text"] for t, text in enumerate(["a", "a", "b", None, "b"])
            for e in captions.update(text, frame=t, t=t)] == ["a", "b"]


def test_mqtt_url_and_prompt_payloads():
    from edgevlp.app.mqtt import parse_mqtt_url, parse_prompt_payload

    assert parse_mqtt_url("mqtt://127.0.0.1:1884/site/cam1") == ("127.0.0.1", 1884, "site/cam1")
    for bad in ("http://x", "mqtt://", "mqtt://h/a/#"):
        with pytest.raises(InputError):
            parse_mqtt_url(bad)
    assert parse_prompt_payload(b'["cup", "person"]') == ["cup", "person"]
    assert parse_prompt_payload(b"cup, red car") == ["cup", "red car"]
    for bad in (b"\xff\xfe", b'["unclosed', b"[1, 2]", json.dumps(["x"] * 10_000).encode(), b"x" * 70_000):
        with pytest.raises(InputError):
            parse_prompt_payload(bad)


# ------------------------------------------------------------------------------ a real broker
class Broker:
    def __init__(self, tmp: Path) -> None:
        self.port = _free_port()
        self.conf = tmp / "mosquitto.conf"
        self.conf.write_text(f"listener {self.port} 127.0.0.1\nallow_anonymous true\npersistence false\n")
        self.proc: subprocess.Popen | None = None

    def start(self) -> None:
        self.proc = subprocess.Popen([MOSQUITTO, "-c", str(self.conf)], stdout=subprocess.PIPE,
                                     stderr=subprocess.STDOUT)
        import socket

        def up() -> bool:
            with socket.socket() as s:
                return s.connect_ex(("127.0.0.1", self.port)) == 0

        wait_for(up, 10, "mosquitto to listen")

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)


@pytest.fixture
def broker(tmp_path):
    if MOSQUITTO is None:
        if os.environ.get("CI") == "true":
            pytest.fail("CI must test MQTT events against a real mosquitto (apt-get install mosquitto)")
        pytest.skip("Debian's mosquitto is not installed (apt-get install mosquitto)")
    pytest.importorskip("paho.mqtt.client", reason="paho-mqtt is not installed (pip install 'edgevlp[mqtt]')")
    b = Broker(tmp_path)
    b.start()
    yield b
    b.kill()


class Listener:
    """A subscriber to PREFIX/# that re-subscribes after reconnecting."""

    def __init__(self, port: int, prefix: str) -> None:
        import paho.mqtt.client as mqtt

        self.messages: list[tuple[str, dict, bool]] = []
        self.lock = threading.Lock()
        self.client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2)
        self.client.reconnect_delay_set(0.2, 1)
        self.client.on_connect = lambda c, u, f, r, p=None: c.subscribe(f"{prefix}/#")
        self.client.on_message = self._message
        self.client.connect_async("127.0.0.1", port)
        self.client.loop_start()

    def _message(self, client, userdata, msg) -> None:
        with self.lock:
            self.messages.append((msg.topic, json.loads(msg.payload) if msg.payload[:1] in b"[{" else msg.payload,
                                  bool(msg.retain)))

    def of(self, topic: str) -> list:
        with self.lock:
            return [m for t, m, _ in self.messages if t == topic]

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()




def test_events_state_and_prompts_over_a_real_broker(broker, detector, frames, tmp_path):
    import paho.mqtt.client as mqtt

    listen = Listener(broker.port, "site/cam1")
    app = App(detector, frames, mqtt=f"mqtt://127.0.0.1:{broker.port}/site/cam1", output=str(tmp_path / "run"))
    try:
        new = wait_for(lambda: [e for e in listen.of("site/cam1/events") if e["type"] == "new"], 20, "a new event")
        e = new[0]
        assert set(e) == {"type", "before", "after"} and e["before"] is None
        assert {"id", "label", "score", "top_score", "box", "start_time", "end_time", "frame"} <= set(e["after"])
        assert e["after"]["label"] in ("a person", "a cup") and len(e["after"]["box"]) == 4
        state = wait_for(lambda: listen.of("site/cam1/state"), 10, "the state")[-1]
        assert state["online"] is True and state["prompts"] == ["a person", "a cup"]
        wait_for(lambda: json.loads(get(app.base + "/api/state")[1])["stats"]["frames"] > 40, 20, "40 frames")
        per_object: dict[str, list[str]] = {}
        for ev in listen.of("site/cam1/events"):
            per_object.setdefault(ev["after"]["id"], []).append(ev["type"])
        for kinds in per_object.values():  # object events, not one message per frame
            assert kinds[0] == "new" and kinds.count("new") == 1 and kinds.count("end") <= 1
            assert kinds.count("update") <= 3, kinds  # at most one a second
        # prompts/set steers the detector; a bad message is refused, the app goes on
        pub = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2)
        pub.connect("127.0.0.1", broker.port)
        pub.loop_start()
        pub.publish("site/cam1/prompts/set", b"\xff not utf-8", qos=1).wait_for_publish(5)
        pub.publish("site/cam1/prompts/set", json.dumps(["a rocket", "a star"]), qos=1).wait_for_publish(5)
        wait_for(lambda: detector.prompts == ["a rocket", "a star"], 10, "prompts from MQTT")
        wait_for(lambda: [e for e in listen.of("site/cam1/events") if e["type"] == "new"
                          and e["after"]["label"] in ("a rocket", "a star")], 15, "events of the new prompts")
        wait_for(lambda: listen.of("site/cam1/state")[-1].get("prompts") == ["a rocket", "a star"], 10, "state")
        assert any("not UTF-8" in ev for ev in app.events)
        pub.loop_stop()
        pub.disconnect()
    finally:
        app.close()
        listen.close()
        detector.set_prompts(["a person", "a cup"])
    assert app.summary["mqtt"]["connects"] == 1 and app.summary["events"] > 0
    logged = [e for line in (tmp_path / "run" / "log.jsonl").read_text().splitlines()
              for e in json.loads(line)["events"]]
    assert len(logged) == app.summary["events"]  # the same events in the JSONL log
    # (the objects still tracked when the run ends get their "end" on the broker only: no frame follows)
    sent = {(e["type"], e["after"]["id"]) for e in listen.of("site/cam1/events") if e["type"] != "end"}
    assert sent and sent <= {(e["type"], e["after"]["id"]) for e in logged}


def test_broker_killed_and_restarted_mid_run(broker, detector, frames):
    import paho.mqtt.client as mqtt

    listen = Listener(broker.port, "cam")
    app = App(detector, frames, mqtt=f"mqtt://127.0.0.1:{broker.port}/cam")
    state = lambda: json.loads(get(app.base + "/api/state")[1])  # noqa: E731
    try:
        wait_for(lambda: listen.of("cam/events"), 20, "first events")
        broker.kill()
        before = state()["stats"]["frames"]
        time.sleep(2.0)
        during = state()["stats"]["frames"]
        assert during - before > 20, "the pipeline keeps running while the broker is away"
        assert any("lost" in e for e in app.events)
        broker.start()
        wait_for(lambda: sum("MQTT connected" in e for e in app.events) >= 2, 30, "the app to reconnect")
        count = len(listen.of("cam/events"))
        pub = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2)
        pub.connect("127.0.0.1", broker.port)
        pub.publish("cam/prompts/set", "a rocket, a star", qos=1).wait_for_publish(5)
        pub.disconnect()
        wait_for(lambda: detector.prompts == ["a rocket", "a star"], 15, "prompts after the restart")
        wait_for(lambda: len(listen.of("cam/events")) > count, 20, "events after the restart")
    finally:
        app.close()
        listen.close()
        detector.set_prompts(["a person", "a cup"])
    assert app.summary["mqtt"]["connects"] >= 2
