"""The ``vqa`` task's graphs (LLM-based VLMs such as SmolVLM), with the input/output names of HF's
published SmolVLM ONNX files (transformers.js), so tools written for those read ours:

* ``vision_encoder``: ``pixel_values (batch, num_images, 3, T, T)`` + ``pixel_attention_mask (batch,
  num_images, T, T)`` -> ``image_features (batch * num_images, image_seq_len, hidden)``: every tile and the
  global image through the vision tower and the connector;
* ``embed_tokens``: ``input_ids`` -> ``inputs_embeds``; the runtime writes the image features over the
  embeddings of the prompt's ``<image>`` tokens (as ``inputs_merger`` does);
* ``decoder``: ``inputs_embeds``, ``attention_mask (batch, past + sequence)``, ``position_ids`` and the
  grouped-query cache ``past_key_values.{i}.key/value (batch, kv_heads, past_sequence, head_dim)`` ->
  ``logits`` + ``present.{i}.key/value``. One graph for prefill (past length 0) and for every decoded
  token, as for the captioners (:mod:`edgevlp.export.graphs`).

Their dynamic dimensions are named ``tokens`` / ``past_tokens`` / ``total_tokens`` and ``num_images``
(not the captioners' ``sequence``): a prompt with its image tokens is ~100-1200 tokens long, so the
TensorRT profiles give these their own ranges (``[shapes]`` in ``export/targets/*.toml``).
"""

from __future__ import annotations

import torch
from transformers.cache_utils import DynamicCache

from edgevlp.bundle import TensorSpec
from edgevlp.export.graphs import GraphExport, decoder_past_names
from edgevlp.export.patches import GROUPED_ATTENTION, attention_implementation
from edgevlp.models.base import AssistantAdapter

__all__ = ["assistant_graphs"]


class _Vision(torch.nn.Module):
    def __init__(self, adapter: AssistantAdapter) -> None:
        super().__init__()
        self.model = adapter.model
        self._features = adapter.image_features

    def forward(self, pixel_values: torch.Tensor, pixel_attention_mask: torch.Tensor) -> torch.Tensor:
        return self._features(pixel_values, pixel_attention_mask)


class _Embed(torch.nn.Module):
    def __init__(self, adapter: AssistantAdapter) -> None:
        super().__init__()
        self.model = adapter.model
        self._embed = adapter.embed_tokens

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        return self._embed(input_ids)


class _Decoder(torch.nn.Module):
    """Flat tensors around ``adapter.decoder_call`` with an explicit ``DynamicCache``."""

    def __init__(self, adapter: AssistantAdapter) -> None:
        super().__init__()
        self.model = adapter.model
        self._call = adapter.decoder_call
        self.num_layers = adapter.kv_layout()[0]

    def forward(self, inputs_embeds: torch.Tensor, attention_mask: torch.Tensor, position_ids: torch.Tensor,
                *past: torch.Tensor) -> tuple[torch.Tensor, ...]:
        cache = DynamicCache()
        for i in range(self.num_layers):
            cache.update(past[2 * i], past[2 * i + 1], i)
        # the cache is read once per kv head, not copied per query head (edgevlp.export.patches)
        with attention_implementation(self.model.model.text_model, GROUPED_ATTENTION):
            logits, cache = self._call(inputs_embeds, attention_mask, position_ids, cache)
        present = [t for layer in cache.layers[: self.num_layers] for t in (layer.keys, layer.values)]
        return (logits, *present)


def assistant_graphs(adapter: AssistantAdapter) -> list[GraphExport]:
    """``vision_encoder``, ``embed_tokens`` and ``decoder`` (see the module docstring)."""
    tile = adapter.preprocess_spec().height
    gen = torch.Generator().manual_seed(0)
    # Trace with batch 1 x 3 images, 2 new tokens after 3 cached ones: sizes 0/1 would be specialised away.
    pixels = torch.randn(1, 3, 3, tile, tile, generator=gen)
    mask = torch.ones(1, 3, tile, tile, dtype=torch.bool)
    with torch.no_grad():
        feats = adapter.image_features(pixels, mask)
    _, seq_len, hidden = feats.shape
    vision = GraphExport(
        role="vision_encoder", module=_Vision(adapter), example_inputs=(pixels, mask),
        inputs=(TensorSpec("pixel_values", "float32", ("batch", "num_images", 3, tile, tile)),
                TensorSpec("pixel_attention_mask", "bool", ("batch", "num_images", tile, tile))),
        outputs=(TensorSpec("image_features", "float32", ("batch_images", seq_len, hidden)),))
    ids = torch.tensor([[1, 2, 3]], dtype=torch.long).repeat(2, 1)
    embed = GraphExport(
        role="embed_tokens", module=_Embed(adapter), example_inputs=(ids,),
        inputs=(TensorSpec("input_ids", "int64", ("batch", "tokens")),),
        outputs=(TensorSpec("inputs_embeds", "float32", ("batch", "tokens", hidden)),))
    layers, kv_heads, head_dim = adapter.kv_layout()
    past = tuple(torch.randn(2, kv_heads, 3, head_dim, generator=gen) for _ in range(2 * layers))
    embeds = torch.randn(2, 2, hidden, generator=gen)
    attention = torch.ones(2, 5, dtype=torch.long)
    positions = torch.tensor([[3, 4], [3, 4]], dtype=torch.long)
    vocab = adapter.model.get_output_embeddings().weight.shape[0]
    decoder = GraphExport(
        role="decoder", module=_Decoder(adapter), example_inputs=(embeds, attention, positions, *past),
        inputs=(TensorSpec("inputs_embeds", "float32", ("batch", "tokens", hidden)),
                TensorSpec("attention_mask", "int64", ("batch", "total_tokens")),
                TensorSpec("position_ids", "int64", ("batch", "tokens")),
                *(TensorSpec(n, "float32", ("batch", kv_heads, "past_tokens", head_dim))
                  for n in decoder_past_names(layers))),
        outputs=(TensorSpec("logits", "float32", ("batch", "tokens", vocab)),
                 *(TensorSpec(n, "float32", ("batch", kv_heads, "total_tokens", head_dim))
                   for n in decoder_past_names(layers, "present"))))
    return [vision, embed, decoder]
