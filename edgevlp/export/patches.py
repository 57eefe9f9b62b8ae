"""Scoped, reversible changes needed while tracing (see STYLE.md point 7, optimum's ModelPatcher).

Every patch is a context manager that restores the original on exit, also when the export fails.
"""

from __future__ import annotations

import logging
import warnings
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager

import torch

__all__ = ["export_mode", "attention_implementation", "quiet_exporters"]


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
    """Switch every (sub-)config's attention implementation (e.g. to ``eager`` for TorchScript)."""
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
