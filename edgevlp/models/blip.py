"""BLIP captioning (``BlipForConditionalGeneration``): ViT encoder + BERT-style decoder with KV cache."""

from __future__ import annotations

from typing import Any

import torch
from transformers import BlipConfig, BlipForConditionalGeneration, BlipImageProcessor

from edgevlp.models._tokenizers import TINY_WORDS, wordpiece_tokenizer
from edgevlp.models.base import CaptionerAdapter, PartSpec, reinit_

__all__ = ["BlipAdapter"]


class BlipAdapter(CaptionerAdapter):
    """BLIP image captioning.

    Example:
        >>> adapter = BlipAdapter.tiny()
        >>> adapter.preprocess_spec().height
        32
    """

    family = "blip"
    architecture = "BlipForConditionalGeneration"
    parts = (
        PartSpec("vision_encoder", "vision_encoder", ("vision_model.",),
                 description="ViT: pixel_values -> image embeddings"),
        PartSpec("text_decoder", "text_decoder", ("text_decoder.",), kv_cache=True,
                 description="BERT decoder with cross-attention and KV cache -> logits"),
    )

    @classmethod
    def model_class(cls) -> type[BlipForConditionalGeneration]:
        return BlipForConditionalGeneration

    #: tiny layouts: "base" (vision as wide as text, like blip-base) and "large" (vision wider than the
    #: text decoder, so cross-attention maps 48 -> 32 like blip-large's 1024 -> 768)
    TINY_LAYOUTS = {"base": 32, "large": 48}

    @classmethod
    def tiny(cls, seed: int = 0, *, layout: str = "base") -> "BlipAdapter":
        tokenizer = wordpiece_tokenizer(TINY_WORDS)
        vocab = tokenizer.get_vocab()
        width = cls.TINY_LAYOUTS[layout]
        vision = dict(hidden_size=width, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                      image_size=32, patch_size=8,
                      # BLIP's default vision initializer_range (1e-10) makes random outputs constant.
                      initializer_range=0.02)
        text = dict(vocab_size=len(vocab), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                    num_attention_heads=4, encoder_hidden_size=width, max_position_embeddings=64,
                    pad_token_id=vocab["[PAD]"], bos_token_id=vocab["[DEC]"],
                    sep_token_id=vocab["[SEP]"], eos_token_id=vocab["[SEP]"], initializer_range=0.02)
        config = BlipConfig(text_config=text, vision_config=vision, projection_dim=32,
                            initializer_range=0.02)
        config.architectures = [cls.architecture]
        torch.manual_seed(seed)
        model = reinit_(BlipForConditionalGeneration(config), std=0.3, seed=seed)
        processor = BlipImageProcessor(size={"height": 32, "width": 32}).to_dict()
        return cls(model, processor_config=processor, tokenizer=tokenizer,
                   source=f"tiny-random-blip(seed={seed}" + ("" if layout == "base" else f", layout={layout}") + ")")

    def generation_settings(self) -> dict[str, Any]:
        text = self.model.config.text_config
        return {
            "decoder_start_token_id": text.bos_token_id,
            "eos_token_id": text.sep_token_id,
            "pad_token_id": text.pad_token_id,
            "max_length": text.max_position_embeddings,
        }

    def forward(self, pixel_values: torch.Tensor, **inputs: Any) -> dict[str, torch.Tensor]:
        input_ids = inputs.get("input_ids")
        if input_ids is None:
            input_ids = self.start_ids(pixel_values.shape[0])
        with torch.no_grad():
            out = self.model(pixel_values=pixel_values, input_ids=input_ids)
        return {"image_embeds": out.image_embeds, "logits": out.logits}

    def encode_image(self, pixel_values: torch.Tensor) -> torch.Tensor:
        return self.model.vision_model(pixel_values=pixel_values).last_hidden_state

    def decoder_call(self, input_ids: torch.Tensor, encoder_states: torch.Tensor,
                     cache: Any) -> tuple[torch.Tensor, Any]:
        out = self.model.text_decoder(input_ids=input_ids, encoder_hidden_states=encoder_states,
                                      past_key_values=cache, use_cache=True, return_dict=True)
        return out.logits, out.past_key_values

    def cross_attention_kv(self, encoder_hidden_states: torch.Tensor
                           ) -> list[tuple[torch.Tensor, torch.Tensor]]:
        # BlipTextSelfAttention (cross): key/value Linear, heads sized from the module (pruning-safe)
        batch = encoder_hidden_states.shape[0]
        out = []
        for layer in self.model.text_decoder.bert.encoder.layer:
            att = layer.crossattention.self

            def heads(x: torch.Tensor) -> torch.Tensor:
                return x.view(batch, -1, att.num_attention_heads, att.attention_head_size).transpose(1, 2)

            out.append((heads(att.key(encoder_hidden_states)), heads(att.value(encoder_hidden_states))))
        return out

    def kv_layout(self) -> tuple[int, int, int]:
        text = self.model.config.text_config
        return (text.num_hidden_layers, text.num_attention_heads,
                text.hidden_size // text.num_attention_heads)

    def kv_heads(self) -> list[int]:
        return [int(layer.attention.self.num_attention_heads)
                for layer in self.model.text_decoder.bert.encoder.layer]
