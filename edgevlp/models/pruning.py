"""Physical structured pruning of transformer blocks: attention heads and MLP neurons.

Which modules can be pruned, and how, is a table keyed by the module's class name (one row per
attention or MLP layout in the families we support). Pruning replaces the linear layers with smaller
ones and updates the module's head count, so the pruned model is smaller and faster, not masked.

A pruned model records its shapes in ``config.edgevlp_pruning`` (``{"heads": {module path: kept
heads}, "neurons": {module path: kept neurons}}``); :func:`rebuild_pruned` re-applies them to a freshly
built model before its weights are loaded, which is how non-uniform head counts load again
(``transformers`` configs can only say "n heads per layer").

Example:
    >>> from edgevlp.models.blip import BlipAdapter
    >>> model = BlipAdapter.tiny().model
    >>> groups = attention_groups(model)
    >>> groups[0].path, groups[0].heads, groups[0].head_dim
    ('vision_model.encoder.layers.0.self_attn', 4, 8)
    >>> prune_heads(model, {groups[0].path: [0, 2]})
    >>> attention_groups(model)[0].heads
    2
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn
from transformers.pytorch_utils import Conv1D, prune_conv1d_layer, prune_linear_layer

__all__ = ["AttentionGroup", "MlpGroup", "attention_groups", "mlp_groups", "prune_heads", "prune_neurons",
           "pruned_shapes", "rebuild_pruned", "even_heads", "CONFIG_KEY"]

#: key of the pruning record in a model's (top-level) config.
CONFIG_KEY = "edgevlp_pruning"


# ------------------------------------------------------------------------------------------ layouts
@dataclass(frozen=True)
class _AttnLayout:
    """Where an attention module keeps its per-head weights.

    ``head_out``: (child linear, number of blocks) whose *outputs* are grouped by head (a fused q/k/v
    linear has 3 blocks); ``out``: the linear whose *inputs* are grouped by head; ``heads``/``width``:
    attributes holding the head count (None: read off the first ``head_out`` linear) and heads x
    head_dim; ``head_dim``: how to read the head size.

    Grouped-query attention (``kv_proj``: the key projection, whose outputs are the key/value heads):
    only query heads are pruned, the same number from every key/value group, so the KV cache keeps its
    layout; ``kv_groups`` holds the query heads per key/value head.
    """

    head_out: Callable[[nn.Module], tuple[tuple[str, int], ...]]
    out: str
    heads: str | None
    width: tuple[str, ...]
    head_dim: str
    forward: Callable[..., Any] | None = None  # replacement forward where the original assumes full width
    kv_proj: str | None = None
    kv_groups: str | None = None


def _blip_vision_forward(self: Any, hidden_states: torch.Tensor, head_mask: torch.Tensor | None = None,
                         **kwargs: Any) -> tuple[torch.Tensor, torch.Tensor]:
    """``BlipAttention.forward`` with the head size taken from the module, not from the input width."""
    bsz, tgt_len, _ = hidden_states.size()
    qkv = self.qkv(hidden_states).reshape(bsz, tgt_len, 3, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4)
    scores = torch.matmul(qkv[0], qkv[1].transpose(-1, -2)) * self.scale
    probs = self.dropout(nn.functional.softmax(scores, dim=-1))
    if head_mask is not None:
        probs = probs * head_mask
    context = torch.matmul(probs, qkv[2]).permute(0, 2, 1, 3).reshape(bsz, tgt_len, self.num_heads * self.head_dim)
    return self.projection(context), probs


def _clip_forward(self: Any, hidden_states: torch.Tensor, attention_mask: torch.Tensor | None = None,
                  causal_attention_mask: torch.Tensor | None = None, output_attentions: bool | None = False
                  ) -> tuple[torch.Tensor, torch.Tensor | None]:
    """OWL-ViT/OWLv2 (CLIP) attention with the output width taken from the module's head count."""
    bsz, tgt_len, _ = hidden_states.size()

    def heads(x: torch.Tensor) -> torch.Tensor:
        return x.view(bsz, -1, self.num_heads, self.head_dim).transpose(1, 2)

    q, k, v = heads(self.q_proj(hidden_states) * self.scale), heads(self.k_proj(hidden_states)), \
        heads(self.v_proj(hidden_states))
    weights = torch.matmul(q, k.transpose(-1, -2))
    for mask in (causal_attention_mask, attention_mask):
        if mask is not None:
            weights = weights + mask
    weights = nn.functional.softmax(weights, dim=-1)
    probs = nn.functional.dropout(weights, p=self.dropout, training=self.training).to(v.dtype)
    out = torch.matmul(probs, v).transpose(1, 2).reshape(bsz, tgt_len, self.num_heads * self.head_dim)
    return self.out_proj(out), (weights if output_attentions else None)


def _siglip_forward(self: Any, hidden_states: torch.Tensor, attention_mask: torch.Tensor | None = None,
                    **kwargs: Any) -> tuple[torch.Tensor, torch.Tensor | None]:
    """SigLIP-style attention (SmolVLM / Idefics3 vision) with its output width taken from the module's
    head count (the original reshapes to the input width); the model's own attention function."""
    import sys

    from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS

    bsz, seq, _ = hidden_states.shape

    def heads(x: torch.Tensor) -> torch.Tensor:
        return x.view(bsz, seq, self.num_heads, self.head_dim).transpose(1, 2)

    attention = sys.modules[type(self).__mro__[1].__module__].eager_attention_forward
    if self.config._attn_implementation != "eager":
        attention = ALL_ATTENTION_FUNCTIONS[self.config._attn_implementation]
    out, weights = attention(self, heads(self.q_proj(hidden_states)), heads(self.k_proj(hidden_states)),
                             heads(self.v_proj(hidden_states)), attention_mask, is_causal=self.is_causal,
                             scaling=self.scale, dropout=0.0 if not self.training else self.dropout)
    return self.out_proj(out.reshape(bsz, seq, self.num_heads * self.head_dim).contiguous()), weights


def _gpt2_head_out(m: nn.Module) -> tuple[tuple[str, int], ...]:
    return (("q_attn", 1), ("c_attn", 2)) if getattr(m, "is_cross_attention", False) else (("c_attn", 3),)


_QKV = (("q_proj", 1), ("k_proj", 1), ("v_proj", 1))
_CLIP = _AttnLayout(lambda m: _QKV, "out_proj", "num_heads", ("embed_dim",), "head_dim", _clip_forward)
_SIGLIP = _AttnLayout(lambda m: _QKV, "out_proj", "num_heads", ("embed_dim",), "head_dim", _siglip_forward)
_BERT_SELF = (("self.query", 1), ("self.key", 1), ("self.value", 1))
_VIT_SELF = (("attention.query", 1), ("attention.key", 1), ("attention.value", 1))

#: attention class name -> layout. BERT-style modules (BLIP text, ViT) already size everything from
#: their attributes; BLIP vision and CLIP attention get a forward that does.
ATTENTION: dict[str, _AttnLayout] = {
    "BlipAttention": _AttnLayout(lambda m: (("qkv", 3),), "projection", "num_heads", ("embed_dim",), "head_dim",
                                 _blip_vision_forward),
    "OwlViTAttention": _CLIP,
    "Owlv2Attention": _CLIP,
    "BlipTextAttention": _AttnLayout(lambda m: _BERT_SELF, "output.dense", "self.num_attention_heads",
                                     ("self.all_head_size",), "self.attention_head_size"),
    "ViTAttention": _AttnLayout(lambda m: _VIT_SELF, "output.dense", "attention.num_attention_heads",
                                ("attention.all_head_size",), "attention.attention_head_size"),
    "GPT2Attention": _AttnLayout(_gpt2_head_out, "c_proj", "num_heads", ("split_size",), "head_dim"),
    "Idefics3VisionAttention": _SIGLIP,
    "SmolVLMVisionAttention": _SIGLIP,
    # SmolVLM / Idefics3 decoder (Llama): sizes itself from its linears; grouped-query
    "LlamaAttention": _AttnLayout(lambda m: (("q_proj", 1),), "o_proj", None, (), "head_dim",
                                  kv_proj="k_proj", kv_groups="num_key_value_groups"),
}
#: MLP class name -> (linears whose outputs are the neurons, linear whose inputs are); a gated MLP
#: (Llama's ``down(act(gate(x)) * up(x))``) has two of the first kind.
MLP: dict[str, tuple[tuple[str, ...], str]] = {
    "BlipMLP": (("fc1",), "fc2"),
    "OwlViTMLP": (("fc1",), "fc2"),
    "Owlv2MLP": (("fc1",), "fc2"),
    "BlipTextLayer": (("intermediate.dense",), "output.dense"),
    "ViTLayer": (("intermediate.dense",), "output.dense"),
    "GPT2MLP": (("c_fc",), "c_proj"),
    "Idefics3VisionMLP": (("fc1",), "fc2"),
    "SmolVLMVisionMLP": (("fc1",), "fc2"),
    "LlamaMLP": (("gate_proj", "up_proj"), "down_proj"),
}


def _get(module: nn.Module, dotted: str) -> Any:
    for name in dotted.split("."):
        module = getattr(module, name)
    return module


def _set(module: nn.Module, dotted: str, value: Any) -> None:
    *parents, last = dotted.split(".")
    for name in parents:
        module = getattr(module, name)
    setattr(module, last, value)


def _keep(layer: nn.Module, index: torch.Tensor, side: str) -> nn.Module:
    """``layer`` with only the outputs (``side='out'``) or inputs (``'in'``) at ``index``."""
    if isinstance(layer, Conv1D):  # GPT-2: weight is (in, out)
        return prune_conv1d_layer(layer, index, dim=1 if side == "out" else 0)
    if isinstance(layer, nn.Linear):
        return prune_linear_layer(layer, index, dim=0 if side == "out" else 1)
    raise TypeError(f"cannot prune a {type(layer).__name__}")


def _width(layer: nn.Module, side: str) -> int:
    w = layer.weight
    if isinstance(layer, Conv1D):
        return int(w.shape[1] if side == "out" else w.shape[0])
    return int(w.shape[0] if side == "out" else w.shape[1])


# ------------------------------------------------------------------------------------------- groups
@dataclass(frozen=True)
class AttentionGroup:
    """One attention module: ``heads`` (query) heads of ``head_dim`` each, at ``path`` in the model;
    ``kv_heads`` key/value heads where it is grouped-query attention (0: one per head, pruned with it)."""

    path: str
    heads: int
    head_dim: int
    layout: str
    kv_heads: int = 0


@dataclass(frozen=True)
class MlpGroup:
    """One MLP: ``neurons`` hidden units between ``path``'s two linear layers."""

    path: str
    neurons: int
    layout: str


def attention_groups(model: nn.Module) -> list[AttentionGroup]:
    """Every prunable attention module of ``model``, in module order."""
    out = []
    for path, m in model.named_modules():
        layout = ATTENTION.get(_layout_name(m))
        if layout is not None:
            d = int(_get(m, layout.head_dim))
            kv = _width(_get(m, layout.kv_proj), "out") // d if layout.kv_proj else 0
            out.append(AttentionGroup(path, _head_count(m, layout), d, _layout_name(m), kv))
    return out


def _head_count(m: nn.Module, layout: _AttnLayout) -> int:
    if layout.heads is not None:
        return int(_get(m, layout.heads))
    child, blocks = layout.head_out(m)[0]
    return _width(_get(m, child), "out") // blocks // int(_get(m, layout.head_dim))


def mlp_groups(model: nn.Module) -> list[MlpGroup]:
    """Every prunable MLP of ``model``, in module order."""
    out = []
    for path, m in model.named_modules():
        names = MLP.get(_layout_name(m))
        if names is not None:
            out.append(MlpGroup(path, _width(_get(m, names[0][0]), "out"), _layout_name(m)))
    return out


def _layout_name(m: nn.Module) -> str:
    """The class name a module was built as (pruned modules are subclasses named ``Pruned<Name>``)."""
    return getattr(type(m), "_edgevlp_base", type(m).__name__)


def head_output_linear(model: nn.Module, group: AttentionGroup) -> nn.Module:
    """The linear whose inputs are the concatenated heads (where a head mask is applied)."""
    return _get(model.get_submodule(group.path), ATTENTION[group.layout].out)


def neuron_output_linear(model: nn.Module, group: MlpGroup) -> nn.Module:
    """The linear whose inputs are the MLP's neurons."""
    return _get(model.get_submodule(group.path), MLP[group.layout][1])


def even_heads(group: AttentionGroup, kept: int) -> list[int]:
    """``kept`` heads of ``group`` spread evenly over its key/value groups (the first ones of each):
    the shape a grouped-query module has after pruning to ``kept`` heads (how :func:`rebuild_pruned`
    rebuilds it); the first ``kept`` heads where the module is not grouped."""
    if not group.kv_heads:
        return list(range(kept))
    per = group.heads // group.kv_heads
    if kept % group.kv_heads:
        raise ValueError(f"{group.path}: {kept} heads do not divide over its {group.kv_heads} key/value heads")
    return [g * per + j for g in range(group.kv_heads) for j in range(kept // group.kv_heads)]


# ------------------------------------------------------------------------------------------ pruning
def _index(keep: Sequence[int], total: int, what: str, path: str) -> torch.Tensor:
    idx = sorted(set(int(i) for i in keep))
    if not idx or idx[0] < 0 or idx[-1] >= total:
        raise ValueError(f"{path}: keep between 1 and {total} {what} with indices in [0, {total}); got {list(keep)}")
    return torch.tensor(idx, dtype=torch.long)


def prune_heads(model: nn.Module, keep: Mapping[str, Sequence[int]]) -> None:
    """Keep only the heads ``keep[path]`` of each listed attention module (in place, weights removed)."""
    for path, heads in keep.items():
        m = model.get_submodule(path)
        name = _layout_name(m)
        layout = ATTENTION[name]
        n, d = _head_count(m, layout), int(_get(m, layout.head_dim))
        idx = _index(heads, n, "heads", path)
        if layout.kv_proj is not None:
            kv = _width(_get(m, layout.kv_proj), "out") // d
            counts = torch.bincount(idx // (n // kv), minlength=kv)
            if len(set(counts.tolist())) != 1:
                raise ValueError(f"{path}: grouped-query attention keeps the same number of query heads per "
                                 f"key/value head; got {counts.tolist()} of {n // kv} in its {kv} groups")
            _set(m, layout.kv_groups, int(counts[0]))
        cols = (idx[:, None] * d + torch.arange(d)).reshape(-1)
        for child, blocks in layout.head_out(m):
            block = _width(_get(m, child), "out") // blocks
            rows = torch.cat([cols + b * block for b in range(blocks)])
            _set(m, child, _keep(_get(m, child), rows, "out"))
        _set(m, layout.out, _keep(_get(m, layout.out), cols, "in"))
        if layout.heads is not None:
            _set(m, layout.heads, len(idx))
        for attr in layout.width:
            _set(m, attr, len(idx) * d)
        if layout.forward is not None and type(m).__name__ == name:
            m.__class__ = type(f"Pruned{name}", (type(m),), {"forward": layout.forward, "_edgevlp_base": name})
        _record(model, "heads", path, len(idx))


def prune_neurons(model: nn.Module, keep: Mapping[str, Sequence[int]]) -> None:
    """Keep only the hidden units ``keep[path]`` of each listed MLP (in place, weights removed)."""
    for path, neurons in keep.items():
        m = model.get_submodule(path)
        fc_ins, fc_out = MLP[_layout_name(m)]
        idx = _index(neurons, _width(_get(m, fc_ins[0]), "out"), "neurons", path)
        for fc_in in fc_ins:
            _set(m, fc_in, _keep(_get(m, fc_in), idx, "out"))
        _set(m, fc_out, _keep(_get(m, fc_out), idx, "in"))
        _record(model, "neurons", path, len(idx))


def _record(model: nn.Module, kind: str, path: str, kept: int) -> None:
    config = getattr(model, "config", None)
    if config is None:
        return
    record = dict(getattr(config, CONFIG_KEY, None) or {})
    record.setdefault("heads", {})
    record.setdefault("neurons", {})
    record[kind] = {**record[kind], path: kept}
    setattr(config, CONFIG_KEY, record)


def pruned_shapes(model: nn.Module) -> dict[str, dict[str, int]]:
    """The pruning record of ``model`` (empty dicts when it was never pruned)."""
    record = getattr(getattr(model, "config", None), CONFIG_KEY, None) or {}
    return {"heads": dict(record.get("heads", {})), "neurons": dict(record.get("neurons", {}))}


def rebuild_pruned(model: nn.Module, record: Mapping[str, Mapping[str, int]]) -> None:
    """Give a freshly built model the pruned shapes of ``record`` (its weights are loaded afterwards)."""
    groups = {g.path: g for g in attention_groups(model)}
    prune_heads(model, {p: even_heads(groups[p], n) for p, n in record.get("heads", {}).items()})
    prune_neurons(model, {p: range(n) for p, n in record.get("neurons", {}).items()})
