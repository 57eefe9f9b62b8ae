"""``--mqtt mqtt://HOST:1883/PREFIX``: the app's events on an MQTT broker, and prompts steered from it.

Topics (Frigate's layout, under PREFIX, default ``edgevlp``):

- ``PREFIX/events``: one JSON message per object event (``new`` / ``update`` / ``end``, see
  :mod:`edgevlp.app.events`), QoS 0;
- ``PREFIX/caption``: ``{"type": "caption", "text", "frame", "time"}`` when the caption changes;
- ``PREFIX/state``: retained JSON (``online``, prompts, threshold, fps), refreshed every few seconds
  and on changes; the broker sets ``{"online": false}`` when the app goes away (last will);
- ``PREFIX/prompts/set``: the app subscribes; a JSON list of strings (or comma-separated text) replaces
  the detector's prompts between two frames.

The client runs on its own network thread (paho-mqtt) and reconnects with a doubling backoff; the
pipeline only queues messages (at most ``max_queued`` wait while the broker is away, the oldest are
dropped first), so it never blocks on the broker.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable
from typing import Any

from edgevlp.app.remote import parse_mqtt_url
from edgevlp.errors import DependencyError, InputError

__all__ = ["MqttEvents", "parse_mqtt_url", "parse_prompt_payload"]


def parse_prompt_payload(payload: bytes) -> list[str]:
    """A ``prompts/set`` message -> prompts: a JSON list of strings, or comma-separated UTF-8 text."""
    from edgevlp.app.config import parse_prompt_text
    from edgevlp.app.remote import check_prompts

    if len(payload) > 64 * 1024:
        raise InputError(f"the prompts message is {len(payload)} bytes; at most 65536 are read")
    try:
        text = payload.decode("utf-8")
    except UnicodeDecodeError:
        raise InputError("the prompts message is not UTF-8 text") from None
    stripped = text.strip()
    if stripped.startswith("["):
        try:
            value = json.loads(stripped)
        except json.JSONDecodeError as err:
            raise InputError(f"the prompts message is not valid JSON: {err}") from None
    else:
        value = parse_prompt_text(text)
    return check_prompts(value)


class MqttEvents:
    """The app's MQTT connection (see the module). ``take_changes`` / ``applied`` as the web viewer's."""

    def __init__(self, url: str, *, client_id: str | None = None, max_queued: int = 1000,
                 on_event: Callable[[str], None] | None = None) -> None:
        try:
            import paho.mqtt.client as mqtt
        except ImportError:
            raise DependencyError("--mqtt needs paho-mqtt: pip install 'edgevlp[mqtt]'") from None
        self.host, self.port, self.prefix = parse_mqtt_url(url)
        self.on_event = on_event or (lambda message: None)
        self._mqtt = mqtt
        self.client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=client_id or "", clean_session=True)
        self.client.max_queued_messages_set(max_queued)
        self.client.reconnect_delay_set(min_delay=1, max_delay=16)
        self.client.will_set(self.topic("state"), json.dumps({"online": False}), qos=1, retain=True)
        self.client.on_connect = self._connected
        self.client.on_disconnect = self._disconnected
        self.client.on_message = self._message
        self._lock = threading.Lock()
        self._changes: dict[str, Any] = {}
        self.state: dict[str, Any] = {"online": True}
        self.connected = threading.Event()
        self.connects = 0
        self.published = 0
        self.refused: list[str] = []
        self._last_state = 0.0

    def topic(self, name: str) -> str:
        return f"{self.prefix}/{name}"

    def start(self) -> "MqttEvents":
        self.client.connect_async(self.host, self.port, keepalive=10)
        self.client.loop_start()
        return self

    def stop(self) -> None:
        self.publish_state(online=False)
        time.sleep(0.05)
        self.client.disconnect()
        self.client.loop_stop()

    # ---------------------------------------------------------------------------------- callbacks
    def _connected(self, client: Any, userdata: Any, flags: Any, reason: Any, properties: Any = None) -> None:
        if getattr(reason, "is_failure", False):
            self.on_event(f"MQTT broker {self.host}:{self.port} refused the connection: {reason}")
            return
        self.connects += 1
        self.connected.set()
        client.subscribe(self.topic("prompts/set"), qos=1)
        self.on_event(f"MQTT connected to {self.host}:{self.port} (topics {self.prefix}/...)")
        self.publish_state(force=True)

    def _disconnected(self, client: Any, userdata: Any, flags: Any, reason: Any, properties: Any = None) -> None:
        if self.connected.is_set():
            self.on_event(f"MQTT broker {self.host}:{self.port} lost ({reason}); reconnecting")
        self.connected.clear()

    def _message(self, client: Any, userdata: Any, message: Any) -> None:
        try:
            prompts = parse_prompt_payload(message.payload)
        except InputError as err:
            self.refused.append(str(err))
            self.on_event(f"MQTT prompts/set refused: {err}")
            return
        with self._lock:
            self._changes["prompts"] = prompts

    # ---------------------------------------------------------------------------------- pipeline side
    def take_changes(self) -> dict[str, Any]:
        with self._lock:
            changes, self._changes = self._changes, {}
        return changes

    def applied(self, *, prompts: list[str] | None = None, error: str | None = None,
                threshold: float | None = None, paused: bool | None = None, question: str | None = None) -> None:
        if question is not None:
            self.state["question"] = question
        if prompts is not None:
            self.state["prompts"] = list(prompts)
        if threshold is not None:
            self.state["threshold"] = threshold
        if paused is not None:
            self.state["paused"] = paused
        self.state["last_error"] = error
        self.publish_state(force=True)

    def _send(self, topic: str, payload: dict[str, Any], *, retain: bool = False, qos: int = 0) -> None:
        info = self.client.publish(self.topic(topic), json.dumps(payload), qos=qos, retain=retain)
        if info.rc == self._mqtt.MQTT_ERR_SUCCESS or info.rc == self._mqtt.MQTT_ERR_NO_CONN:
            self.published += 1

    def publish(self, events: list[dict[str, Any]]) -> None:
        """Queue this frame's events (never blocks)."""
        for e in events:
            self._send("caption" if e["type"] == "caption" else "events", e)

    def publish_state(self, *, force: bool = False, online: bool = True, **stats: Any) -> None:
        """The retained state (at most every 5 s unless ``force``)."""
        now = time.monotonic()
        self.state.update(stats)
        if not force and now - self._last_state < 5.0:
            return
        self._last_state = now
        self._send("state", {**self.state, "online": online}, retain=True, qos=1)
