"""OWL-ViT v1 (``OwlViTForObjectDetection``) and OWLv2 (``Owlv2ForObjectDetection``) detectors.

Both have an image graph (ViT + per-patch class embeddings and boxes; objectness for v2), a text
graph (prompt -> text embedding) and a class head (normalised dot product with logit shift/scale),
so prompts stay editable after export.
"""

from __future__ import annotations

from typing import Any

import torch
from transformers import (OwlViTConfig, OwlViTForObjectDetection, OwlViTImageProcessor, Owlv2Config,
                          Owlv2ForObjectDetection, Owlv2ImageProcessor, PreTrainedModel)

from edgevlp.models._tokenizers import TINY_WORDS, clip_like_tokenizer
from edgevlp.models.base import DetectorAdapter, PartSpec, reinit_

__all__ = ["OwlViTAdapter", "Owlv2Adapter"]



def _parts(backbone: str) -> tuple[PartSpec, ...]:
    """Parts of an OWL detector whose CLIP backbone is the attribute ``backbone``."""
    return (
        PartSpec("vision_encoder", "vision_encoder", (f"{backbone}.vision_model.", "layer_norm."),
                 description="ViT: pixel_values -> per-patch image embeddings"),
        PartSpec("text_encoder", "text_encoder",
                 (f"{backbone}.text_model.", f"{backbone}.text_projection."),
                 description="CLIP text encoder: prompt ids -> text embeddings"),
        PartSpec("detection_heads", "detection_heads", ("class_head.", "box_head.", "objectness_head."),
                 description="class head (normalised dot product, logit shift/scale), box head"
                             " and objectness (v2)"),
    )


class OwlViTAdapter(DetectorAdapter):
    """OWL-ViT v1 open-vocabulary detection.

    Example:
        >>> adapter = OwlViTAdapter.tiny()
        >>> [p.name for p in adapter.parts]
        ['vision_encoder', 'text_encoder', 'detection_heads']
    """

    family = "owlvit"
    architecture = "OwlViTForObjectDetection"
    parts = _parts("owlvit")
    backbone = "owlvit"
    _config_class: Any = OwlViTConfig
    _processor_class: Any = OwlViTImageProcessor

    @classmethod
    def model_class(cls) -> type[PreTrainedModel]:
        return OwlViTForObjectDetection

    @classmethod
    def tiny(cls, seed: int = 0) -> "OwlViTAdapter":
        tokenizer = clip_like_tokenizer(TINY_WORDS)
        vocab = tokenizer.get_vocab()
        text = dict(vocab_size=len(vocab), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                    num_attention_heads=4, max_position_embeddings=16, pad_token_id=vocab["!"],
                    bos_token_id=vocab["<|startoftext|>"], eos_token_id=vocab["<|endoftext|>"])
        vision = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                      image_size=32, patch_size=8)
        config = cls._config_class(text_config=text, vision_config=vision, projection_dim=32)
        config.architectures = [cls.architecture]
        torch.manual_seed(seed)
        model = reinit_(cls.model_class()(config), std=0.3, seed=seed)
        processor = cls._processor_class(size={"height": 32, "width": 32},
                                         crop_size={"height": 32, "width": 32}).to_dict()
        return cls(model, processor_config=processor, tokenizer=tokenizer,
                   source=f"tiny-random-{cls.family}(seed={seed})")


class Owlv2Adapter(OwlViTAdapter):
    """OWLv2: OWL-ViT plus an objectness head; images padded to a square before resizing."""

    family = "owlv2"
    architecture = "Owlv2ForObjectDetection"
    parts = _parts("owlv2")
    backbone = "owlv2"
    _config_class = Owlv2Config
    _processor_class = Owlv2ImageProcessor

    @classmethod
    def model_class(cls) -> type[PreTrainedModel]:
        return Owlv2ForObjectDetection
