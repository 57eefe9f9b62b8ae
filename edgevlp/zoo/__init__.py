"""The demo zoo: small vision-language models trained here on shape scenes and shipped in the repo.

Each folder ``edgevlp/zoo/<name>/`` is an ordinary Hugging Face model directory (``config.json``,
``model.safetensors``, tokenizer, ``preprocessor_config.json``) plus a model card (``README.md``) and
``metrics.json`` (measured metrics and how the weights were made). ``--model demo-blip`` works
wherever a model is accepted (see :func:`edgevlp.models.resolve_model_dir`).

Listing is torch-free; training (:func:`edgevlp.zoo.train.train`) imports torch.

Example:
    >>> from edgevlp.zoo import list_models
    >>> sorted(m.name for m in list_models())
    ['demo-blip', 'demo-owlvit', 'demo-smolvlm']
"""

from __future__ import annotations

import json
import struct
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from edgevlp.models.registry import ZOO_DIR

__all__ = ["ZOO_DIR", "ZOO_NAMES", "ZooModel", "list_models", "safetensors_parameter_count"]

#: Names ``edgevlp zoo train`` knows how to train (recipes in :mod:`edgevlp.zoo.train`).
ZOO_NAMES: tuple[str, ...] = ("demo-blip", "demo-owlvit", "demo-smolvlm")


@dataclass(frozen=True)
class ZooModel:
    """One shipped demo model as listed by ``edgevlp zoo``."""

    name: str
    path: Path
    family: str
    architecture: str
    parameters: int
    size_bytes: int
    metrics: dict[str, dict[str, float]] = field(default_factory=dict)


def safetensors_parameter_count(path: Path) -> int:
    """Number of parameters in a safetensors file, read from its header (no tensors loaded)."""
    with open(path, "rb") as f:
        (length,) = struct.unpack("<Q", f.read(8))
        header = json.loads(f.read(length))
    total = 0
    for key, info in header.items():
        if key == "__metadata__":
            continue
        n = 1
        for dim in info["shape"]:
            n *= int(dim)
        total += n
    return total


def list_models(zoo_dir: Path = ZOO_DIR) -> list[ZooModel]:
    """Every shipped model folder (one with a ``config.json``), sorted by name."""
    from edgevlp.models.registry import architecture_of, read_config

    families = {"BlipForConditionalGeneration": "blip", "OwlViTForObjectDetection": "owlvit",
                "Idefics3ForConditionalGeneration": "idefics3"}
    out = []
    for folder in sorted(p for p in Path(zoo_dir).iterdir() if (p / "config.json").is_file()):
        arch = architecture_of(read_config(folder), folder)
        weights = sorted(folder.glob("*.safetensors"))
        params = sum(safetensors_parameter_count(w) for w in weights)
        size = sum(f.stat().st_size for f in folder.iterdir() if f.is_file())
        metrics: dict[str, Any] = {}
        card = folder / "metrics.json"
        if card.is_file():
            metrics = json.loads(card.read_text()).get("metrics", {})
        out.append(ZooModel(folder.name, folder, families.get(arch, arch), arch, params, size, metrics))
    return out
