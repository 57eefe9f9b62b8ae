"""VisionEncoderDecoderModel captioning/OCR (ViT->GPT2, TrOCR, ...): image encoder + causal decoder."""

from __future__ import annotations

from typing import Any

import torch
from transformers import (GPT2Config, ViTConfig, ViTImageProcessor, VisionEncoderDecoderConfig,
                          VisionEncoderDecoderModel)

from edgevlp.models._tokenizers import TINY_WORDS, byte_bpe_tokenizer
from edgevlp.models.base import CaptionerAdapter, PartSpec, reinit_

__all__ = ["VisionEncoderDecoderAdapter"]


class VisionEncoderDecoderAdapter(CaptionerAdapter):
    """Any ``VisionEncoderDecoderModel`` (ViT->GPT2 captioners, TrOCR).

    Example:
        >>> adapter = VisionEncoderDecoderAdapter.tiny()
        >>> sorted(p.name for p in adapter.parts)
        ['text_decoder', 'vision_encoder']
    """

    family = "vision-encoder-decoder"
    architecture = "VisionEncoderDecoderModel"
    parts = (
        PartSpec("vision_encoder", "vision_encoder", ("encoder.",),
                 description="image encoder: pixel_values -> encoder hidden states"),
        PartSpec("text_decoder", "text_decoder", ("decoder.", "enc_to_dec_proj."), kv_cache=True,
                 description="causal decoder with cross-attention and KV cache -> logits"),
    )

    @classmethod
    def model_class(cls) -> type[VisionEncoderDecoderModel]:
        return VisionEncoderDecoderModel

    #: tiny layouts: decoder width per layout. "projected": 48 != the encoder's 32, so the model has
    #: enc_to_dec_proj (like TrOCR); "equal": 32 = 32 and no projection (like vit-gpt2's 768 = 768)
    TINY_LAYOUTS = {"projected": 48, "equal": 32}

    @classmethod
    def tiny(cls, seed: int = 0, *, layout: str = "projected") -> "VisionEncoderDecoderAdapter":
        corpus = [" ".join(TINY_WORDS), "a photo of a red circle", "a small blue square left of a cat"]
        tokenizer = byte_bpe_tokenizer(corpus)
        eos = tokenizer.eos_token_id
        encoder = ViTConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                            num_attention_heads=4, image_size=32, patch_size=8)
        decoder = GPT2Config(vocab_size=len(tokenizer), n_embd=cls.TINY_LAYOUTS[layout], n_layer=2, n_head=4, n_positions=64,
                             bos_token_id=eos, eos_token_id=eos)
        config = VisionEncoderDecoderConfig.from_encoder_decoder_configs(encoder, decoder)
        config.decoder_start_token_id = eos
        config.pad_token_id = tokenizer.pad_token_id
        config.eos_token_id = eos
        config.architectures = [cls.architecture]
        torch.manual_seed(seed)
        model = reinit_(VisionEncoderDecoderModel(config=config), std=0.3, seed=seed)
        processor = ViTImageProcessor(size={"height": 32, "width": 32}).to_dict()
        return cls(model, processor_config=processor, tokenizer=tokenizer,
                   source=f"tiny-random-vit-gpt2(seed={seed}"
                   + ("" if layout == "projected" else f", layout={layout}") + ")")

    def generation_settings(self) -> dict[str, Any]:
        cfg = self.model.config
        dec = cfg.decoder
        start = cfg.decoder_start_token_id
        if start is None:
            start = dec.decoder_start_token_id if dec.decoder_start_token_id is not None else dec.bos_token_id
        eos = cfg.eos_token_id if cfg.eos_token_id is not None else dec.eos_token_id
        pad = cfg.pad_token_id if cfg.pad_token_id is not None else dec.pad_token_id
        max_len = getattr(dec, "n_positions", None) or getattr(dec, "max_position_embeddings", None)
        return {"decoder_start_token_id": start, "eos_token_id": eos, "pad_token_id": pad,
                "max_length": max_len}

    def forward(self, pixel_values: torch.Tensor, **inputs: Any) -> dict[str, torch.Tensor]:
        ids = inputs.get("decoder_input_ids")
        if ids is None:
            ids = self.start_ids(pixel_values.shape[0])
        with torch.no_grad():
            out = self.model(pixel_values=pixel_values, decoder_input_ids=ids)
        return {"encoder_hidden_states": out.encoder_last_hidden_state, "logits": out.logits}

    def encode_image(self, pixel_values: torch.Tensor) -> torch.Tensor:
        return self.model.encoder(pixel_values=pixel_values).last_hidden_state

    def project_encoder(self, encoder_hidden_states: torch.Tensor) -> torch.Tensor:
        # transformers creates enc_to_dec_proj only when the widths differ (not for vit-gpt2, 768 = 768)
        proj = getattr(self.model, "enc_to_dec_proj", None)
        return encoder_hidden_states if proj is None else proj(encoder_hidden_states)

    def decoder_call(self, input_ids: torch.Tensor, encoder_states: torch.Tensor,
                     cache: Any) -> tuple[torch.Tensor, Any]:
        out = self.model.decoder(input_ids=input_ids, encoder_hidden_states=encoder_states,
                                 past_key_values=cache, use_cache=True, return_dict=True)
        return out.logits, out.past_key_values

    def _gpt2_blocks(self) -> list[Any] | None:
        blocks = getattr(getattr(self.model.decoder, "transformer", None), "h", None)
        if blocks is None or not all(hasattr(b, "crossattention") and hasattr(b.crossattention, "c_attn")
                                     for b in blocks):
            return None
        return list(blocks)

    def cross_attention_kv(self, encoder_hidden_states: torch.Tensor
                           ) -> list[tuple[torch.Tensor, torch.Tensor]] | None:
        blocks = self._gpt2_blocks()
        if blocks is None:  # TrOCR, BERT decoders: layout unknown here, the decoder recomputes them
            return None
        states = self.project_encoder(encoder_hidden_states)
        out = []
        for block in blocks:  # GPT2Attention(is_cross_attention=True): c_attn -> key | value
            att = block.crossattention
            key, value = att.c_attn(states).split(att.split_size, dim=2)
            shape = (*key.shape[:-1], -1, att.head_dim)
            out.append((key.view(shape).transpose(1, 2), value.view(shape).transpose(1, 2)))
        return out

    def kv_layout(self) -> tuple[int, int, int]:
        dec = self.model.config.decoder
        layers = getattr(dec, "num_hidden_layers", None) or getattr(dec, "n_layer", None) or dec.decoder_layers
        heads = (getattr(dec, "num_attention_heads", None) or getattr(dec, "n_head", None)
                 or dec.decoder_attention_heads)
        hidden = getattr(dec, "hidden_size", None) or getattr(dec, "n_embd", None) or dec.d_model
        return int(layers), int(heads), int(hidden) // int(heads)

    def kv_heads(self) -> list[int]:
        blocks = getattr(getattr(self.model.decoder, "transformer", None), "h", None)
        if blocks is not None and all(hasattr(b.attn, "num_heads") for b in blocks):  # GPT-2 (prunable)
            return [int(b.attn.num_heads) for b in blocks]
        return super().kv_heads()
