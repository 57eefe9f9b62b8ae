"""The ``prune`` stage: score attention heads and MLP neurons on calibration frames, remove the weakest.

Importance (``PruneConfig.importance``):

- ``taylor`` (default): the diagonal Fisher information of a gate on each unit, E[(dL/dg)^2] at g = 1,
  i.e. the second-order estimate of how much the loss grows when the unit is removed (Molchanov et
  al. 2019; Kwon et al. 2022 use it to prune transformers after training). No labels are needed: L is
  the model's own likelihood of its predictions - its greedy caption (captioners), and for detectors
  class labels and boxes sampled from its own outputs (Bernoulli per patch and prompt, Gaussian
  sigma = 0.05 on boxes). We chose it because it measures the effect on the *task output* through
  every later layer, which activation norms cannot, at the cost of one backward pass per batch.
- ``activation``: mean |activation| of the unit times the norm of the weights that read it (its
  average contribution to the residual stream); forward passes only.
- ``magnitude``: weight norms alone (no data), as a baseline.

``scope = "global"`` removes ``ratio`` of all heads (and of all neurons) of a part (vision / text)
wherever they score lowest, so layers end up with different widths; ``per_layer`` removes the same
fraction from every module. Every module keeps at least one head and one neuron.

Grouped-query attention (SmolVLM's Llama decoder) keeps every key/value head, so the KV cache and the
exported decoder's cache inputs keep their layout, and removes query heads in *slots*: slot j is the
j-th most important query head of every key/value group, scored by their sum, so each group keeps the
same number of query heads (what the attention's reshape needs).
"""

from __future__ import annotations

import dataclasses
import fnmatch
import time
from collections.abc import Callable
from typing import Any

import torch

from edgevlp.compress.recipe import PruneConfig
from edgevlp.compress.signals import Batch, load_batches, run_task
from edgevlp.compress.state import CompressState
from edgevlp.errors import InputError
from edgevlp.models.base import ModelAdapter
from edgevlp.models.pruning import (AttentionGroup, MlpGroup, attention_groups, head_output_linear, mlp_groups,
                                    neuron_output_linear, prune_heads, prune_neurons)
from edgevlp.tasks import get_task

__all__ = ["apply", "importance_scores", "select_units", "part_of", "query_slots", "heads_of_slots"]

_PART_KINDS = {"vision_encoder": "vision", "text_decoder": "text", "text_encoder": "text"}
BATCH = 8


def part_of(adapter: ModelAdapter, path: str) -> str | None:
    """``vision`` / ``text`` for a module path inside the adapter's vision or text part, else None."""
    for part in adapter.parts:
        if (path + ".").startswith(part.prefixes):
            return _PART_KINDS.get(part.kind)
    return None


Group = AttentionGroup | MlpGroup


def _units(g: Group) -> int:
    return g.heads if isinstance(g, AttentionGroup) else g.neurons


def _reader(model: torch.nn.Module, g: Group) -> tuple[torch.nn.Module, int]:
    """The linear layer whose input holds ``g``'s units, and how many input features each unit spans."""
    if isinstance(g, AttentionGroup):
        return head_output_linear(model, g), g.head_dim
    return neuron_output_linear(model, g), 1


def _gates(model: torch.nn.Module, groups: list[Group]) -> tuple[dict[str, torch.Tensor], list[Any]]:
    """A gate of ones per unit, multiplied into the input of the linear that reads the units."""
    gates, handles = {}, []
    for g in groups:
        gate = torch.ones(_units(g), requires_grad=True)
        gates[g.path] = gate
        layer, width = _reader(model, g)

        def hook(module: Any, args: tuple[Any, ...], gate: torch.Tensor = gate, width: int = width) -> Any:
            return (args[0] * gate.repeat_interleave(width), *args[1:])

        handles.append(layer.register_forward_pre_hook(hook))
    return gates, handles


def importance_scores(adapter: ModelAdapter, groups: list[Group], method: str, batches: list[Batch],
                      progress: Callable[[str], None] | None = None) -> dict[str, torch.Tensor]:
    """Importance of every unit of every group (path -> tensor of length heads / neurons)."""
    model = adapter.model
    if method == "magnitude":
        return {g.path: _weight_norms(model, g) for g in groups}
    scores = {g.path: torch.zeros(_units(g)) for g in groups}
    gates, handles = _gates(model, groups)
    gen = torch.Generator().manual_seed(0)
    try:
        for i, batch in enumerate(batches):
            if method == "taylor":
                loss = get_task(adapter.task).fisher_loss(adapter, batch, gen)
                grads = torch.autograd.grad(loss, [gates[g.path] for g in groups], allow_unused=True)
                for g, grad in zip(groups, grads):
                    if grad is not None:
                        scores[g.path] += grad.detach() ** 2
            else:
                _accumulate_activations(adapter, model, groups, batch, scores)
            if progress:
                progress(f"importance ({method}): batch {i + 1}/{len(batches)}")
    finally:
        for h in handles:
            h.remove()
    if method == "activation":
        scores = {g.path: scores[g.path] * _weight_norms(model, g) for g in groups}
    return scores


def _weight_norms(model: torch.nn.Module, g: Group) -> torch.Tensor:
    """L2 norm per unit of the weights that read it (its output's scale)."""
    from transformers.pytorch_utils import Conv1D

    layer, width = _reader(model, g)
    w = layer.weight.detach()
    w = w if isinstance(layer, Conv1D) else w.T  # (inputs = units x width, outputs)
    return w.reshape(_units(g), width * w.shape[1]).norm(dim=1)


def _accumulate_activations(adapter: ModelAdapter, model: torch.nn.Module, groups: list[Group], batch: Batch,
                            scores: dict[str, torch.Tensor]) -> None:
    handles = []
    for g in groups:
        layer, width = _reader(model, g)

        def hook(module: Any, args: tuple[Any, ...], path: str = g.path, n: int = _units(g), width: int = width) -> None:
            x = args[0].detach().abs().reshape(-1, n, width).mean(dim=(0, 2))
            scores[path] += x

        handles.append(layer.register_forward_pre_hook(hook))
    try:
        with torch.no_grad():
            run_task(adapter, batch)
    finally:
        for h in handles:
            h.remove()


def select_units(groups: list[Group], scores: dict[str, torch.Tensor], ratio: float, scope: str
                 ) -> dict[str, list[int]]:
    """Indices to keep per group: remove ``round(ratio * units)`` lowest-scoring units, globally over
    ``groups`` or per group; at least one unit stays in every group."""
    keep: dict[str, list[int]] = {}
    if scope == "per_layer":
        for g in groups:
            n = _units(g)
            drop = min(n - 1, int(round(ratio * n)))
            order = torch.argsort(scores[g.path], stable=True)
            keep[g.path] = sorted(order[drop:].tolist())
        return keep
    total = sum(_units(g) for g in groups)
    budget = int(round(ratio * total))
    candidates = sorted(((float(scores[g.path][i]), g.path, i) for g in groups for i in range(_units(g))))
    removed: dict[str, set[int]] = {g.path: set() for g in groups}
    size = {g.path: _units(g) for g in groups}
    for _, path, i in candidates:
        if budget == 0:
            break
        if len(removed[path]) < size[path] - 1:
            removed[path].add(i)
            budget -= 1
    return {g.path: [i for i in range(size[g.path]) if i not in removed[g.path]] for g in groups}


def query_slots(groups: list[Group], scores: dict[str, torch.Tensor]
                ) -> tuple[list[Group], dict[str, torch.Tensor]]:
    """Grouped-query modules as groups of query-head slots (heads per key/value head) with the slot
    scores; other groups unchanged."""
    out, out_scores = [], dict(scores)
    for g in groups:
        if isinstance(g, AttentionGroup) and g.kv_heads:
            per = g.heads // g.kv_heads
            out_scores[g.path] = scores[g.path].reshape(g.kv_heads, per).sort(dim=1, descending=True).values.sum(0)
            out.append(dataclasses.replace(g, heads=per, kv_heads=0))
        else:
            out.append(g)
    return out, out_scores


def heads_of_slots(g: AttentionGroup, slots: int, scores: torch.Tensor) -> list[int]:
    """The query heads a grouped-query module keeps for ``slots`` kept slots: the ``slots`` most
    important of every key/value group."""
    per = g.heads // g.kv_heads
    top = torch.argsort(scores.reshape(g.kv_heads, per), dim=1, descending=True, stable=True)[:, :slots]
    return sorted((top + torch.arange(g.kv_heads)[:, None] * per).reshape(-1).tolist())


def _select(groups: list[Group], scores: dict[str, torch.Tensor], ratio: float, scope: str) -> dict[str, list[int]]:
    """:func:`select_units` with grouped-query modules selected in slots."""
    slotted, slot_scores = query_slots(groups, scores)
    keep = select_units(slotted, slot_scores, ratio, scope)
    for g in groups:
        if isinstance(g, AttentionGroup) and g.kv_heads:
            keep[g.path] = heads_of_slots(g, len(keep[g.path]), scores[g.path])
    return keep


def apply(state: CompressState, cfg: PruneConfig) -> dict[str, Any]:
    """Prune ``state.adapter`` in place as ``cfg`` says; returns the stage's report."""
    adapter = state.adapter
    model = adapter.model
    t0 = time.perf_counter()
    params_before = sum(p.numel() for p in model.parameters())
    chosen: dict[tuple[str, str], list[Group]] = {}
    for target, found in (("heads", attention_groups(model)), ("neurons", mlp_groups(model))):
        if target not in cfg.targets:
            continue
        for g in found:
            part = part_of(adapter, g.path)
            if part in cfg.parts and not any(fnmatch.fnmatchcase(g.path, p) for p in cfg.exclude):
                chosen.setdefault((target, part), []).append(g)
    if not chosen:
        raise InputError(f"nothing to prune in {adapter.family}: no {'/'.join(cfg.targets)} in parts "
                         f"{'/'.join(cfg.parts)} (after exclude); check the recipe's targets, parts and exclude")
    report: dict[str, Any] = {"importance": cfg.importance, "scope": cfg.scope, "ratio": cfg.ratio, "parts": {}}
    if cfg.ratio == 0:
        report["note"] = "ratio 0: nothing removed"
        return {**report, "seconds_importance": 0.0}
    source = state.calib_override or cfg.calibration_source
    batches = [] if cfg.importance == "magnitude" else load_batches(adapter, source, cfg.calibration_size, BATCH)
    if cfg.importance != "magnitude" and not batches:
        raise InputError(f"calibration source {source!r} gave no frames")
    groups = [g for gs in chosen.values() for g in gs]
    log = state.log if state.progress else None
    scores = importance_scores(adapter, groups, cfg.importance, batches, log)
    seconds_importance = time.perf_counter() - t0
    keep: dict[tuple[str, str], dict[str, list[int]]] = {
        key: _select(gs, scores, cfg.ratio, cfg.scope) for key, gs in chosen.items()}
    for (target, part), kept in keep.items():
        changed = {p: k for p, k in kept.items()
                   if len(k) < _units(next(g for g in chosen[(target, part)] if g.path == p))}
        (prune_heads if target == "heads" else prune_neurons)(model, changed)
        before = [_units(g) for g in chosen[(target, part)]]
        after = [len(kept[g.path]) for g in chosen[(target, part)]]
        report["parts"].setdefault(part, {})[target] = {
            "before": sum(before), "after": sum(after), "removed_fraction": round(1 - sum(after) / sum(before), 4),
            "per_module": {g.path: [b, a] for g, b, a in zip(chosen[(target, part)], before, after)}}
    state.model_changed()
    params_after = sum(p.numel() for p in model.parameters())
    report.update(calibration={"source": source if batches else None,
                               "frames": sum(len(b.pixel_values) for b in batches)},
                  parameters={"before": params_before, "after": params_after,
                              "ratio": round(params_after / params_before, 4)},
                  seconds_importance=round(seconds_importance, 2))
    state.log("pruned " + "; ".join(f"{part} {t} {v['before']}->{v['after']}" for part, d in report["parts"].items()
                                     for t, v in d.items())
         + f"; parameters {params_before:,} -> {params_after:,}")
    return report
