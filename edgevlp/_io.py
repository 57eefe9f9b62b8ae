"""Small shared I/O helpers (torch-free)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from edgevlp.errors import EdgeVLPError

__all__ = ["read_json_object"]


def read_json_object(path: Path, error: type[EdgeVLPError], fix: str) -> dict[str, Any]:
    """Parse a JSON file that must hold an object; any problem raises ``error`` naming the file and ``fix``."""
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise error(f"{path} is not valid JSON ({err}); {fix}") from None
    except OSError as err:
        raise error(f"cannot read {path} ({err.strerror}); {fix}") from None
    if not isinstance(data, dict):
        raise error(f"{path} must hold a JSON object, got {type(data).__name__}; {fix}")
    return data
