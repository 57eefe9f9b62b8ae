"""The adapter table (torch-free): ``architectures[0]`` of a checkpoint -> its family's adapter class.

An adapter is registered by the checkpoint's ``architectures[0]``; the table maps it to
``module:Class`` and the module is imported only when that family is loaded.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from edgevlp._lazy import import_object
from edgevlp.errors import UnsupportedModelError

if TYPE_CHECKING:
    from edgevlp.models.base import ModelAdapter

__all__ = ["ADAPTERS", "known_architectures", "adapter_class"]

#: architectures[0] -> "module:Class". A new family is one file plus one row here.
ADAPTERS: dict[str, str] = {
    "BlipForConditionalGeneration": "edgevlp.models.blip:BlipAdapter",
    "VisionEncoderDecoderModel": "edgevlp.models.vision_encoder_decoder:VisionEncoderDecoderAdapter",
    "OwlViTForObjectDetection": "edgevlp.models.owlvit:OwlViTAdapter",
    "Owlv2ForObjectDetection": "edgevlp.models.owlvit:Owlv2Adapter",
    "SmolVLMForConditionalGeneration": "edgevlp.models.smolvlm:SmolVLMAdapter",
    "Idefics3ForConditionalGeneration": "edgevlp.models.smolvlm:Idefics3Adapter",
}


def known_architectures() -> list[str]:
    """Architectures that have an adapter, sorted."""
    return sorted(ADAPTERS)


def adapter_class(architecture: str) -> type["ModelAdapter"]:
    """The adapter class for ``architecture``.

    Example:
        >>> adapter_class("BlipForConditionalGeneration").family
        'blip'
    """
    target = ADAPTERS.get(architecture)
    if target is None:
        raise UnsupportedModelError(
            f"architecture {architecture!r} is not supported; known architectures: "
            f"{', '.join(known_architectures())}"
        )
    return import_object(target)
