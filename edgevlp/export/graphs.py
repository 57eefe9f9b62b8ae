"""The graphs a model is exported as, built from its adapter: modules, example inputs, I/O contract.

Captioners: ``vision_encoder`` (pixel_values -> encoder_hidden_states), ``cross_kv`` (encoder states ->
every decoder layer's cross-attention keys/values, once per image) and one ``text_decoder`` step with a
KV cache. Detectors: ``image_encoder`` (pixel_values -> per-patch class embeddings, logit shift/scale,
boxes, objectness) and ``text_encoder`` (prompt ids -> text embeddings); the class head (a normalised dot
product) runs in the runtime so prompts stay editable.

Why one decoder graph instead of a first-step/with-past pair: the graph takes a self-attention cache of
length ``past_sequence >= 0``; an empty cache (length 0) *is* the first step, since concatenating an empty
past is the identity. One graph means the decoder weights are stored once (a pair doubles them, which
hurts on an 8 GB Jetson), no ``If`` node (TensorRT handles control flow poorly) and one engine to build.

Cross-attention keys/values depend only on the image, so they are computed once per image by a small
graph of their own, ``cross_kv`` (encoder states -> ``cross_attention.{i}.key/value`` per layer), and
fed to every decoder step: the step graph holds no cross-attention key/value projection (at BLIP-base
size those are ~8 GMAC per token, ~60x the rest of the step). Families whose decoder layout the adapter
does not know (``cross_attention_kv`` is None) keep a step graph that takes ``encoder_hidden_states``.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from transformers.cache_utils import DynamicCache, EncoderDecoderCache

from edgevlp.bundle import TensorSpec
from edgevlp.models.base import CaptionerAdapter, DetectorAdapter, ModelAdapter

__all__ = ["GraphExport", "graphs_for", "captioner_graphs", "detector_graphs", "decoder_past_names", "cross_kv_names",
           "CROSS_PREFIX"]

#: Name prefix of the cross-attention key/value tensors (outputs of ``cross_kv``, inputs of the decoder).
CROSS_PREFIX = "cross_attention"


@dataclass
class GraphExport:
    """One graph to export: a module, example inputs for tracing and its declared I/O."""

    role: str
    module: torch.nn.Module
    example_inputs: tuple[torch.Tensor, ...]
    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]

    @property
    def input_names(self) -> list[str]:
        return [t.name for t in self.inputs]

    @property
    def output_names(self) -> list[str]:
        return [t.name for t in self.outputs]


def decoder_past_names(num_layers: int, prefix: str = "past_key_values") -> list[str]:
    """``past_key_values.0.key, past_key_values.0.value, ...`` (or ``present.*``)."""
    return [f"{prefix}.{i}.{kv}" for i in range(num_layers) for kv in ("key", "value")]


def cross_kv_names(num_layers: int) -> list[str]:
    """``cross_attention.0.key, cross_attention.0.value, ...``."""
    return decoder_past_names(num_layers, CROSS_PREFIX)


class _VisionEncoder(torch.nn.Module):
    def __init__(self, adapter: CaptionerAdapter) -> None:
        super().__init__()
        self.model = adapter.model
        self._encode = adapter.encode_image

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        return self._encode(pixel_values)


class _CrossKV(torch.nn.Module):
    """Encoder states -> every decoder layer's cross-attention key and value, flat."""

    def __init__(self, adapter: CaptionerAdapter) -> None:
        super().__init__()
        self.model = adapter.model
        self._kv = adapter.cross_attention_kv

    def forward(self, encoder_hidden_states: torch.Tensor) -> tuple[torch.Tensor, ...]:
        return tuple(t for kv in self._kv(encoder_hidden_states) for t in kv)  # type: ignore[union-attr]


def _self_cache(past: tuple[torch.Tensor, ...], num_layers: int) -> DynamicCache:
    cache = DynamicCache()
    for i in range(num_layers):
        cache.update(past[2 * i], past[2 * i + 1], i)
    return cache


def _present(cache: EncoderDecoderCache, num_layers: int) -> list[torch.Tensor]:
    present: list[torch.Tensor] = []
    for layer in cache.self_attention_cache.layers[:num_layers]:
        present += [layer.keys, layer.values]
    return present


class _KVDecoder(torch.nn.Module):
    """Flat-tensor wrapper around ``adapter.decode_step`` with an explicit self-attention cache; the
    cross-attention keys/values are recomputed from ``encoder_hidden_states`` (legacy layout)."""

    def __init__(self, adapter: CaptionerAdapter) -> None:
        super().__init__()
        self.model = adapter.model
        self._step = adapter.decode_step
        self.num_layers = adapter.kv_layout()[0]

    def forward(self, input_ids: torch.Tensor, encoder_hidden_states: torch.Tensor,
                *past: torch.Tensor) -> tuple[torch.Tensor, ...]:
        logits, cache = self._step(input_ids, encoder_hidden_states,
                                   EncoderDecoderCache(_self_cache(past, self.num_layers), DynamicCache()))
        return (logits, *_present(cache, self.num_layers))


class _CrossKVDecoder(torch.nn.Module):
    """One decoder step: token ids + self-attention cache + precomputed cross-attention keys/values
    (inputs after the ``2 * num_layers`` cache tensors) -> logits + grown self-attention cache."""

    def __init__(self, adapter: CaptionerAdapter) -> None:
        super().__init__()
        self.model = adapter.model
        self._step = adapter.decode_with_cross_kv
        self.num_layers = adapter.kv_layout()[0]

    def forward(self, input_ids: torch.Tensor, *kv: torch.Tensor) -> tuple[torch.Tensor, ...]:
        n = self.num_layers
        cache = EncoderDecoderCache(_self_cache(kv[: 2 * n], n), _self_cache(kv[2 * n:], n))
        for i in range(n):  # the cross cache is filled: every layer reuses it
            cache.is_updated[i] = True
        logits, cache = self._step(input_ids, cache)
        return (logits, *_present(cache, n))


class _ImageHeads(torch.nn.Module):
    def __init__(self, adapter: DetectorAdapter, names: list[str]) -> None:
        super().__init__()
        self.model = adapter.model
        self._heads = adapter.image_heads
        self.names = names

    def forward(self, pixel_values: torch.Tensor) -> tuple[torch.Tensor, ...]:
        out = self._heads(pixel_values)
        return tuple(out[n] for n in self.names)


class _TextEncoder(torch.nn.Module):
    def __init__(self, adapter: DetectorAdapter) -> None:
        super().__init__()
        self.model = adapter.model
        self._embed = adapter.text_embeddings

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        return self._embed(input_ids, attention_mask)


def _example_pixels(adapter: ModelAdapter, batch: int = 2) -> torch.Tensor:
    _, c, h, w = adapter.preprocess_spec().input_shape
    return torch.randn(batch, c, h, w, generator=torch.Generator().manual_seed(0))


def captioner_graphs(adapter: CaptionerAdapter) -> list[GraphExport]:
    """The ``caption`` task's graphs: vision encoder, cross-attention keys/values (when the adapter knows
    its decoder layout) and one decoder step."""
    pixels = _example_pixels(adapter)
    _, c, h, w = pixels.shape
    with torch.no_grad():
        enc = adapter.encode_image(pixels)
        cross = adapter.cross_attention_kv(enc)
    _, enc_len, enc_dim = enc.shape
    layers, _, head_dim = adapter.kv_layout()
    heads = [h for h in adapter.kv_heads() for _ in ("key", "value")]  # per layer (pruning may differ)
    vocab = adapter.model.get_output_embeddings().weight.shape[0] if \
        adapter.model.get_output_embeddings() is not None else None
    vision = GraphExport(
        role="vision_encoder",
        module=_VisionEncoder(adapter),
        example_inputs=(pixels,),
        inputs=(TensorSpec("pixel_values", "float32", ("batch", c, h, w)),),
        outputs=(TensorSpec("encoder_hidden_states", "float32", ("batch", enc_len, enc_dim)),),
    )
    # Trace with batch 2, 2 new tokens and 3 cached ones: sizes 0/1 would be specialised away.
    gen = torch.Generator().manual_seed(1)
    start = adapter.generation_settings()["decoder_start_token_id"] or 0
    ids = torch.full((2, 2), int(start), dtype=torch.long)
    past = tuple(torch.randn(2, h, 3, head_dim, generator=gen) for h in heads)
    kv_in = tuple(TensorSpec(n, "float32", ("batch", h, "past_sequence", head_dim))
                  for n, h in zip(decoder_past_names(layers), heads))
    kv_out = tuple(TensorSpec(n, "float32", ("batch", h, "total_sequence", head_dim))
                   for n, h in zip(decoder_past_names(layers, "present"), heads))
    ids_in = TensorSpec("input_ids", "int64", ("batch", "sequence"))
    outputs = (TensorSpec("logits", "float32", ("batch", "sequence", vocab or "vocab")), *kv_out)
    if cross is None:
        decoder = GraphExport(
            role="text_decoder", module=_KVDecoder(adapter), example_inputs=(ids, enc, *past),
            inputs=(ids_in, TensorSpec("encoder_hidden_states", "float32",
                                       ("batch", "encoder_sequence", enc_dim)), *kv_in),
            outputs=outputs)
        return [vision, decoder]
    cross_flat = tuple(t for kv in cross for t in kv)
    cross_specs = tuple(TensorSpec(n, "float32", ("batch", int(t.shape[1]), "encoder_sequence", int(t.shape[3])))
                        for n, t in zip(cross_kv_names(layers), cross_flat))
    cross_graph = GraphExport(
        role="cross_kv", module=_CrossKV(adapter), example_inputs=(enc,),
        inputs=(TensorSpec("encoder_hidden_states", "float32", ("batch", "encoder_sequence", enc_dim)),),
        outputs=cross_specs)
    decoder = GraphExport(
        role="text_decoder", module=_CrossKVDecoder(adapter), example_inputs=(ids, *past, *cross_flat),
        inputs=(ids_in, *kv_in, *cross_specs), outputs=outputs)
    return [vision, cross_graph, decoder]


def detector_graphs(adapter: DetectorAdapter) -> list[GraphExport]:
    """The ``detect`` task's graphs: image encoder (per-patch heads) and text encoder."""
    pixels = _example_pixels(adapter)
    _, c, h, w = pixels.shape
    with torch.no_grad():
        heads = adapter.image_heads(pixels)
    names = list(heads)
    image = GraphExport(
        role="image_encoder",
        module=_ImageHeads(adapter, names),
        example_inputs=(pixels,),
        inputs=(TensorSpec("pixel_values", "float32", ("batch", c, h, w)),),
        outputs=tuple(TensorSpec(n, "float32", ("batch", *heads[n].shape[1:])) for n in names),
    )
    prompts = ["a red circle", "a small blue square", "cat"]
    enc = adapter.encode_prompts(prompts)
    with torch.no_grad():
        text_dim = adapter.text_embeddings(**enc).shape[-1]
    seq = enc["input_ids"].shape[1]
    text = GraphExport(
        role="text_encoder",
        module=_TextEncoder(adapter),
        example_inputs=(enc["input_ids"], enc["attention_mask"]),
        inputs=(TensorSpec("input_ids", "int64", ("num_queries", seq)),
                TensorSpec("attention_mask", "int64", ("num_queries", seq))),
        outputs=(TensorSpec("text_embeds", "float32", ("num_queries", text_dim)),),
    )
    return [image, text]


def graphs_for(adapter: ModelAdapter) -> list[GraphExport]:
    """The graphs ``adapter``'s model is exported as, in execution order (its task's, see
    :meth:`edgevlp.tasks.Task.graphs`)."""
    from edgevlp.tasks import get_task

    return get_task(adapter.task).graphs(adapter)
