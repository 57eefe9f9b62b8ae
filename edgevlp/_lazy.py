"""Lazy lookup for the registry tables ("module:attribute" strings), torch-free."""

from __future__ import annotations

import importlib
from typing import Any

__all__ = ["import_object"]


def import_object(target: str) -> Any:
    """Import ``module:attribute`` on first use (keeps heavy engines out of start-up)."""
    module_name, attr = target.split(":")
    return getattr(importlib.import_module(module_name), attr)
