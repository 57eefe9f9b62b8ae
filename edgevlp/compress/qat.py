"""Quantisation-aware training (``quant.method = "qat"``): fake-quant fine-tuning, then QDQ ONNX.

1. Every linear layer of the deployable parts gets INT8 fake quantisation exactly as onnxruntime's
   static QDQ quantiser will apply it: weights symmetric int8 (per output channel or per tensor, as
   the recipe says), inputs uint8/int8 per tensor with ranges calibrated on real frames (MinMax) and
   then tracked by an exponential moving average during training. Gradients pass straight through
   inside the range (``torch.fake_quantize_*``).
2. The fake-quantised model is distilled from the FP32 teacher with the recipe's ``[train]`` schedule
   (the ``distill`` stage's losses and loop: checkpoints, progress, ``--resume``).
3. The fake quantisation is removed - the trained FP32 weights round to the same int8 values the
   training saw - and the graphs are exported and quantised to QDQ by the ``ptq_static`` path
   (calibrated on real frames, fallback included), which onnxruntime runs as real INT8.

Example:
    >>> from edgevlp.compress.recipe import DistillConfig, QuantConfig
    >>> cfg = QuantConfig(method="qat", train=DistillConfig(steps=10))   # doctest: +SKIP
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn
from torch.nn.utils import parametrize
from transformers.pytorch_utils import Conv1D

from edgevlp.compress.recipe import QuantConfig
from edgevlp.compress.signals import load_batches, run_task
from edgevlp.compress.state import CompressState
from edgevlp.errors import InputError

__all__ = ["train", "attach_fake_quant", "detach_fake_quant"]

EMA = 0.01


class _WeightFakeQuant(nn.Module):
    """Symmetric int8 fake quantisation of a weight (per output channel or per tensor)."""

    def __init__(self, axis: int | None) -> None:
        super().__init__()
        self.axis = axis

    def forward(self, w: torch.Tensor) -> torch.Tensor:
        if self.axis is None:
            scale = (w.detach().abs().max() / 127.0).clamp(min=1e-8)
            return torch.fake_quantize_per_tensor_affine(w, float(scale), 0, -127, 127)
        dims = [d for d in range(w.dim()) if d != self.axis]
        scale = (w.detach().abs().amax(dim=dims) / 127.0).clamp(min=1e-8)
        zero = torch.zeros_like(scale, dtype=torch.int32)
        return torch.fake_quantize_per_channel_affine(w, scale, zero, self.axis, -127, 127)


class _InputFakeQuant:
    """Per-tensor fake quantisation of a layer's input with a tracked range (a forward pre-hook)."""

    def __init__(self, symmetric: bool) -> None:
        self.symmetric = symmetric
        self.lo: float | None = None
        self.hi: float | None = None
        self.observing = False

    def __call__(self, module: nn.Module, args: tuple[Any, ...]) -> Any:
        x = args[0]
        lo, hi = float(x.detach().min()), float(x.detach().max())
        if self.observing or self.lo is None:
            self.lo = lo if self.lo is None else min(self.lo, lo)
            self.hi = hi if self.hi is None else max(self.hi, hi)
            if self.observing:
                return None
        elif module.training:
            self.lo += EMA * (lo - self.lo)
            self.hi += EMA * (hi - self.hi)
        return (self._quantize(x), *args[1:])

    def _quantize(self, x: torch.Tensor) -> torch.Tensor:
        lo, hi = min(self.lo or 0.0, 0.0), max(self.hi or 0.0, 0.0)  # zero is always representable
        if self.symmetric:
            bound = max(-lo, hi, 1e-8)
            return torch.fake_quantize_per_tensor_affine(x, bound / 127.0, 0, -127, 127)
        scale = max(hi - lo, 1e-8) / 255.0
        zero = int(round(-lo / scale))
        return torch.fake_quantize_per_tensor_affine(x, scale, min(max(zero, 0), 255), 0, 255)


def _layers(state: CompressState) -> list[tuple[str, nn.Module]]:
    adapter = state.adapter
    prefixes = tuple(p for part in adapter.parts for p in part.prefixes)
    return [(name, m) for name, m in adapter.model.named_modules()
            if isinstance(m, (nn.Linear, Conv1D)) and (name + ".").startswith(prefixes)]


def attach_fake_quant(layers: list[tuple[str, nn.Module]], cfg: QuantConfig) -> list[Any]:
    """Fake-quantise the weights and inputs of ``layers``; returns the input quantisers' hook handles."""
    handles = []
    for _, layer in layers:
        axis = (1 if isinstance(layer, Conv1D) else 0) if cfg.weights.per_channel else None
        parametrize.register_parametrization(layer, "weight", _WeightFakeQuant(axis))
        quantizer = _InputFakeQuant(cfg.activations.symmetric)
        handles.append((quantizer, layer.register_forward_pre_hook(quantizer)))
    return handles


def detach_fake_quant(layers: list[tuple[str, nn.Module]], handles: list[Any]) -> None:
    """Remove the fake quantisation, keeping the trained FP32 weights."""
    for (_, layer), (_, handle) in zip(layers, handles):
        parametrize.remove_parametrizations(layer, "weight", leave_parametrized=False)
        handle.remove()


def train(state: CompressState, cfg: QuantConfig) -> dict[str, Any]:
    """QAT of ``state.adapter`` distilled from ``state.teacher``; returns the report's ``qat`` part.

    The quant stage (:func:`edgevlp.compress.ptq.apply`) then writes the QDQ graphs of the trained
    weights by the ``ptq_static`` path."""
    from edgevlp.compress import distill

    assert cfg.train is not None
    if cfg.backend != "onnxruntime":
        raise InputError("quant method 'qat' writes QDQ ONNX for backend 'onnxruntime'; for OpenVINO use "
                         "method 'ptq_static' with backend 'openvino' (NNCF) or export the QAT result")
    layers = _layers(state)
    if not layers:
        raise InputError(f"qat: {state.adapter.family} has no linear layers in its deployable parts")
    handles = attach_fake_quant(layers, cfg)
    try:
        quantizers = [q for q, _ in handles]
        for q in quantizers:
            q.observing = True
        with torch.no_grad():
            for batch in load_batches(state.adapter, cfg.calibration.source, cfg.calibration.size, 8):
                run_task(state.adapter, batch)
        for q in quantizers:
            q.observing = False
        state.log(f"qat: fake quantisation on {len(layers)} linear layers, ranges from "
                  f"{cfg.calibration.size} frames of {cfg.calibration.source}")
        trained = distill.apply(state, cfg.train)
    finally:
        detach_fake_quant(layers, handles)
    state.model_changed()
    return {"fake_quant_layers": len(layers), "training": trained,
            "export": "trained FP32 weights -> static QDQ (ptq_static path)"}

