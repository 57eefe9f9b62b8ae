"""``tomllib`` from the standard library (Python 3.11+), else its ``tomli`` backport (a 3.10 dependency)."""

from __future__ import annotations

import sys

if sys.version_info >= (3, 11):
    import tomllib
else:
    import tomli as tomllib

__all__ = ["tomllib"]
