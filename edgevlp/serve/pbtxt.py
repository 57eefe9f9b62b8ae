"""Triton ``config.pbtxt`` text from plain Python values (protobuf text format, no protobuf needed).

Example:
    >>> print(pbtxt({"name": "m", "max_batch_size": 8, "dynamic_batching": {}}), end="")
    name: "m"
    max_batch_size: 8
    dynamic_batching {
    }
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from typing import Any

__all__ = ["pbtxt", "Enum", "TRITON_DTYPES"]

#: bundle dtype (:data:`edgevlp.bundle.DTYPES`) -> Triton data type
TRITON_DTYPES: dict[str, str] = {"float32": "TYPE_FP32", "float16": "TYPE_FP16", "int64": "TYPE_INT64",
                                 "int32": "TYPE_INT32", "bool": "TYPE_BOOL", "uint8": "TYPE_UINT8",
                                 "int8": "TYPE_INT8", "bytes": "TYPE_STRING", "float64": "TYPE_FP64"}


class Enum(str):
    """An enum value (written bare: ``kind: KIND_CPU``)."""


def _scalar(value: Any) -> str:
    if isinstance(value, Enum):
        return str(value)
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    return json.dumps(str(value))  # protobuf text strings take JSON's escapes


def _lines(fields: Mapping[str, Any], indent: int) -> list[str]:
    pad = "  " * indent
    out: list[str] = []
    for key, value in fields.items():
        if value is None:
            continue
        items = value if isinstance(value, Sequence) and not isinstance(value, str) else [value]
        if items and all(not isinstance(v, Mapping) for v in items) and isinstance(value, list):
            out.append(f"{pad}{key}: [ {', '.join(_scalar(v) for v in items)} ]")
            continue
        for item in items:
            if isinstance(item, Mapping):
                out += [f"{pad}{key} {{", *_lines(item, indent + 1), f"{pad}}}"]
            else:
                out.append(f"{pad}{key}: {_scalar(item)}")
    return out


def pbtxt(fields: Mapping[str, Any]) -> str:
    """Text-format protobuf of ``fields``: a dict is a message, a list of dicts a repeated message, a
    list of scalars a repeated scalar (``dims: [ -1, 3 ]``), a tuple of dicts also repeated; None is
    left out."""
    return "\n".join(_lines(fields, 0)) + "\n"
