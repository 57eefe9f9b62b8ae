"""``--serve [HOST:]PORT`` parsing (no aiohttp needed: the app's options are checked before it loads)."""

from __future__ import annotations

from edgevlp.errors import InputError

__all__ = ["parse_serve_address"]


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
