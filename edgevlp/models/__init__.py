"""Model-family adapters, looked up by the checkpoint's ``architectures[0]``.

Importing this package is torch-free; :func:`load_model` imports the family module (and torch) only
once the input has been validated.

Example:
    >>> from edgevlp.models import load_model, known_architectures
    >>> "BlipForConditionalGeneration" in known_architectures()
    True
    >>> adapter = load_model("path/to/blip-dir")        # doctest: +SKIP
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING

from edgevlp.models.registry import (ADAPTERS, ZOO_DIR, adapter_class, architecture_of,
                                     known_architectures, read_config, resolve_model_dir)

if TYPE_CHECKING:
    from edgevlp.models.base import ModelAdapter

__all__ = ["ADAPTERS", "ZOO_DIR", "adapter_class", "known_architectures", "load_model", "inspect_model",
           "resolve_model_dir", "read_config", "tiny_adapter"]


def inspect_model(model: str | os.PathLike[str]) -> tuple["os.PathLike[str]", str]:
    """Resolve ``model`` and validate its config without importing torch: ``(dir, architecture)``."""
    model_dir = resolve_model_dir(model)
    arch = architecture_of(read_config(model_dir), model_dir)
    adapter_class_name = ADAPTERS.get(arch)
    if adapter_class_name is None:
        adapter_class(arch)  # raises UnsupportedModelError listing the known architectures
    return model_dir, arch


def load_model(model: str | os.PathLike[str]) -> "ModelAdapter":
    """Load a model dir, demo-zoo name or cached hub id through its family's adapter."""
    model_dir, arch = inspect_model(model)
    return adapter_class(arch).from_pretrained(model_dir, source=os.fspath(model))


def tiny_adapter(architecture: str, seed: int = 0, **layout: str) -> "ModelAdapter":
    """A tiny random model of ``architecture`` (for tests and smoke demos); ``layout=...`` picks one of
    the family's structural variants (``TINY_LAYOUTS``), where it has several."""
    return adapter_class(architecture).tiny(seed=seed, **layout)
