"""Scoped, reversible changes needed while tracing (see STYLE.md point 7, optimum's ModelPatcher).

Every patch is a context manager that restores the original on exit, also when the export fails.
"""

from __future__ import annotations

import logging
import warnings
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager

import torch

__all__ = ["export_mode", "attention_implementation", "quiet_exporters", "GROUPED_ATTENTION", "grouped_attention"]

#: the name :func:`grouped_attention` registers with transformers' attention and mask interfaces
GROUPED_ATTENTION = "edgevlp_grouped"


def grouped_attention(module: torch.nn.Module, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
                      attention_mask: torch.Tensor | None, scaling: float, dropout: float = 0.0,
                      **kwargs: object) -> tuple[torch.Tensor, None]:
    """Grouped-query attention without ``repeat_kv``: the query heads sharing a key/value head are one
    axis of a 5-D batched product, so the graph never materialises the cache once per query head
    (transformers' eager and SDPA paths copy it ``heads / kv_heads`` times at every step: at a 900-token
    SmolVLM-256M cache that copy, not the attention, was most of a decoder step). Same numbers as
    ``eager_attention_forward`` (inference: no dropout); returns ``(batch, seq, heads, head_dim)``."""
    b, heads, q_len, d = query.shape
    kv_heads = key.shape[1]
    q = query.reshape(b, kv_heads, heads // kv_heads, q_len, d)  # head i reads kv head i // group (repeat_kv)
    scores = torch.matmul(q, key.unsqueeze(2).transpose(-1, -2)) * scaling
    if attention_mask is not None:
        scores = scores + attention_mask[:, :, :, : key.shape[-2]].unsqueeze(1)
    probs = torch.softmax(scores, dim=-1, dtype=torch.float32).to(query.dtype)
    out = torch.matmul(probs, value.unsqueeze(2)).reshape(b, heads, q_len, d)
    return out.transpose(1, 2).contiguous(), None


def _register_grouped() -> None:
    from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS, eager_mask
    from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS

    if GROUPED_ATTENTION not in ALL_ATTENTION_FUNCTIONS:
        ALL_ATTENTION_FUNCTIONS.register(GROUPED_ATTENTION, grouped_attention)
        ALL_MASK_ATTENTION_FUNCTIONS.register(GROUPED_ATTENTION, eager_mask)


@contextmanager
def export_mode(module: torch.nn.Module) -> Iterator[torch.nn.Module]:
    """Eval mode and no autograd for the duration; the previous training flags come back."""
    flags = {m: m.training for m in module.modules()}
    module.eval()
    try:
        with torch.no_grad():
            yield module
    finally:
        for m, training in flags.items():
            m.training = training


def _configs(module: torch.nn.Module) -> list[object]:
    seen: dict[int, object] = {}
    for m in module.modules():
        cfg = getattr(m, "config", None)
        if cfg is not None and hasattr(cfg, "_attn_implementation"):
            stack = [cfg]
            while stack:
                c = stack.pop()
                if id(c) in seen:
                    continue
                seen[id(c)] = c
                for key in ("text_config", "vision_config", "encoder", "decoder"):
                    sub = getattr(c, key, None)
                    if sub is not None and hasattr(sub, "_attn_implementation"):
                        stack.append(sub)
    return list(seen.values())


@contextmanager
def attention_implementation(module: torch.nn.Module, impl: str) -> Iterator[None]:
    """Switch every (sub-)config's attention implementation (e.g. to ``eager`` for TorchScript, or to
    :data:`GROUPED_ATTENTION` for a grouped-query decoder)."""
    if impl == GROUPED_ATTENTION:
        _register_grouped()
    configs = _configs(module)
    old = [c._attn_implementation for c in configs]  # type: ignore[attr-defined]
    try:
        for c in configs:
            c._attn_implementation = impl  # type: ignore[attr-defined]
        yield
    finally:
        for c, value in zip(configs, old):
            c._attn_implementation = value  # type: ignore[attr-defined]


@contextmanager
def quiet_exporters() -> Iterator[None]:
    """Silence tracer warnings and the exporters' progress logging (restored on exit)."""
    loggers = [logging.getLogger(n) for n in ("torch.onnx", "torch.export", "torch._dynamo",
                                                "torch.fx.experimental.symbolic_shapes",
                                                "torch.onnx._internal.exporter._registration")]
    levels = [lg.level for lg in loggers]
    with ExitStack() as stack:
        stack.enter_context(warnings.catch_warnings())
        warnings.simplefilter("ignore")
        try:
            for lg in loggers:
                lg.setLevel(logging.ERROR)
            yield
        finally:
            for lg, level in zip(loggers, levels):
                lg.setLevel(level)
