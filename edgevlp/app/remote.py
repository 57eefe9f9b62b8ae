"""What remote controls (the web viewer, MQTT) may send, checked in one place (no aiohttp, no paho):
prompts, a threshold, a question, and the ``--serve`` / ``--mqtt`` addresses. Nothing else is accepted from them: never the
source, a file path or anything that runs."""

from __future__ import annotations

import math
from typing import Any
from urllib.parse import urlparse

from edgevlp.errors import InputError

__all__ = ["parse_serve_address", "parse_mqtt_url", "check_prompts", "check_threshold", "check_question",
           "check_serve_fps", "MAX_PROMPTS", "MAX_SERVE_FPS", "MAX_PROMPT_CHARS", "MAX_QUESTION_CHARS", "MAX_BODY_BYTES"]

MAX_PROMPTS = 64
MAX_PROMPT_CHARS = 200
MAX_BODY_BYTES = 64 * 1024
MAX_QUESTION_CHARS = 500
MAX_SERVE_FPS = 240.0


def parse_serve_address(text: str) -> tuple[str, int]:
    """``--serve`` text -> (host, port): ``8080``, ``0.0.0.0:8080``, ``[::1]:8080``.

    Example:
        >>> parse_serve_address("8080"), parse_serve_address("0.0.0.0:9000")
        (('127.0.0.1', 8080), ('0.0.0.0', 9000))
    """
    raw = str(text).strip()
    host, _, port = raw.rpartition(":") if ":" in raw else ("127.0.0.1", "", raw)
    host = host.strip("[]") or "127.0.0.1"
    if not port.isdigit() or not 1 <= int(port) <= 65535:
        raise InputError(f"--serve {text!r} must be PORT or HOST:PORT with a port in 1..65535, e.g. --serve 8080")
    return host, int(port)


def check_serve_fps(value: float) -> float:
    """``--serve-fps``: frames a second each web viewer gets at most, in (0, 240]."""
    fps = float(value)
    if not 0 < fps <= MAX_SERVE_FPS:
        raise InputError(f"--serve-fps must be in (0, {MAX_SERVE_FPS:g}], got {value}")
    return fps


def parse_mqtt_url(url: str) -> tuple[str, int, str]:
    """``mqtt://HOST[:PORT][/PREFIX]`` -> (host, port, prefix).

    Example:
        >>> parse_mqtt_url("mqtt://10.0.0.2/garage"), parse_mqtt_url("mqtt://broker:1884")
        (('10.0.0.2', 1883, 'garage'), ('broker', 1884, 'edgevlp'))
    """
    parsed = urlparse(url)
    if parsed.scheme != "mqtt" or not parsed.hostname:
        raise InputError(f"--mqtt {url!r} must look like mqtt://HOST[:PORT][/PREFIX], e.g. mqtt://127.0.0.1:1883/cam1")
    prefix = parsed.path.strip("/") or "edgevlp"
    if "#" in url or "+" in prefix or len(prefix) > 200:
        raise InputError(f"the MQTT topic prefix {prefix!r} must not hold '#' or '+' (at most 200 characters)")
    try:
        port = parsed.port or 1883
    except ValueError:
        raise InputError(f"--mqtt {url!r} has an invalid port") from None
    return parsed.hostname, port, prefix


def check_text(value: Any, what: str, limit: int) -> str:
    """One line of text a remote sent (a prompt, a question): non-empty, at most ``limit`` characters,
    no control characters; stripped."""
    if not isinstance(value, str) or not value.strip():
        raise InputError(f"{what} must be non-empty text")
    if len(value) > limit:
        raise InputError(f"{what} is {len(value)} characters long; at most {limit} are accepted")
    if any(ord(c) < 32 for c in value):
        raise InputError(f"{what} must not contain control characters")
    return value.strip()


def check_prompts(value: Any) -> list[str]:
    if not isinstance(value, list):
        raise InputError("prompts must be a JSON list of strings, e.g. [\"person\", \"red cup\"]")
    if not 1 <= len(value) <= MAX_PROMPTS:
        raise InputError(f"give 1 to {MAX_PROMPTS} prompts, got {len(value)}")
    return [check_text(p, "a prompt", MAX_PROMPT_CHARS) for p in value]


def check_threshold(value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) \
            or not 0.0 <= value <= 1.0:
        raise InputError(f"threshold must be a number in [0, 1], got {value!r}")
    return float(value)


def check_question(value: Any) -> str:
    """A question for the app's VLM: non-empty text of at most :data:`MAX_QUESTION_CHARS` characters,
    e.g. "is anyone at the door?"."""
    return check_text(value, "the question", MAX_QUESTION_CHARS)
