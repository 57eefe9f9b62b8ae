"""Mixed-precision fallback: keep in FP32 the fewest layer groups needed to stay within tolerance.

Layer groups come from the module scopes the torch exporter writes on every node
(``pkg.torch.onnx.name_scopes``): a leaf module with at most one MatMul/Gemm/Conv (a ``Linear`` with its
bias ``Add``, an activation, a norm) joins its parent, so a group is e.g. one attention block (q/k/v/out projections, scores,
softmax) or one MLP (fc1, activation, fc2). Keeping a whole block in FP32 keeps the tensors inside it
in FP32 too, which is what an outlier-carrying activation (fc1 -> GELU -> fc2) needs. Graphs without
scope metadata fall back to one group per MatMul/Gemm/Conv node (other ops: one top-level group).

Algorithm (greedy, measured, not estimated):

1. score the fully quantised graph (worst output cosine vs FP32 on held-out calibration samples);
2. order the groups by how much they hurt: with an ``order`` (the backend's attribution: the
   quantisation noise each group adds between its inputs and its outputs, from one run of the FP32
   and the INT8 graph), by it; without one, by the score with only that group kept in FP32 (one
   evaluation per group: fine on a tiny graph, ~25 evaluations on a ViT-B);
3. keep groups in that order until the tolerance is met (or ``max_layers``);
4. drop again every kept group whose removal still meets the tolerance (so the set is minimal for
   this order), and report the kept groups with their numbers.

With an order the search costs at most ``1 + 2 * max_layers`` evaluations (usually a few), each a
candidate derived from the all-INT8 graph with the same activation ranges.
"""

from __future__ import annotations

import ast
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import onnx

__all__ = ["COMPUTE_OPS", "TOP_LEVEL", "node_groups", "FallbackResult", "select_fallback", "evaluations_bound"]

TOP_LEVEL = "(graph top level)"

COMPUTE_OPS = frozenset({"MatMul", "Gemm", "Conv", "ConvTranspose"})
_SCOPES = "pkg.torch.onnx.name_scopes"


def _module_path(node: onnx.NodeProto) -> tuple[str, ...] | None:
    for prop in node.metadata_props:
        if prop.key == _SCOPES:
            try:
                scopes = ast.literal_eval(prop.value)
            except (ValueError, SyntaxError):
                return None
            # The last entry is the function called (linear, conv2d, matmul); the rest are modules.
            mods = tuple(s for s in scopes[:-1] if s)
            return mods or None
    return None


def node_groups(model: onnx.ModelProto) -> dict[str, list[str]]:
    """Every node in one layer group: group name -> node names (graph order).

    Nodes outside any module (the graph wrapper's own ops) form the group :data:`TOP_LEVEL`; a
    module's own ops outside its sub-modules (a layer's residual adds and norms) form its group.

    Example:
        >>> import onnx.helper as h
        >>> g = h.make_graph([h.make_node("MatMul", ["x", "w"], ["y"], name="mm")], "g", [], [])
        >>> node_groups(h.make_model(g))
        {'mm': ['mm']}
    """
    nodes = [n for n in model.graph.node if n.name]
    paths = {n.name: _module_path(n) for n in nodes}
    parents = {p[:i] for p in paths.values() if p for i in range(1, len(p))}
    compute_per_scope: dict[tuple[str, ...], int] = {}
    for n in nodes:
        if n.op_type in COMPUTE_OPS and paths[n.name]:
            compute_per_scope[paths[n.name]] = compute_per_scope.get(paths[n.name], 0) + 1

    def key(n: onnx.NodeProto) -> str:
        path = paths[n.name]
        if not path:
            return n.name if n.op_type in COMPUTE_OPS else TOP_LEVEL
        leaf = path not in parents and compute_per_scope.get(path, 0) <= 1
        if leaf and len(path) > 1:
            path = path[:-1]
        return path[-1]

    groups: dict[str, list[str]] = {}
    for n in nodes:
        groups.setdefault(key(n), []).append(n.name)
    return groups


@dataclass
class FallbackResult:
    """What the fallback kept in FP32 and why."""

    tolerance: float
    score_quantized: float
    score_final: float
    met: bool
    kept: list[dict[str, Any]] = field(default_factory=list)
    sensitivity: list[dict[str, Any]] = field(default_factory=list)
    evaluations: int = 0
    metric: str = "min output cosine vs FP32 (held-out samples)"

    @property
    def excluded_nodes(self) -> set[str]:
        return {n for k in self.kept for n in k["nodes"]}

    def to_dict(self) -> dict[str, Any]:
        return {"metric": self.metric, "tolerance": self.tolerance,
                "score_all_int8": round(self.score_quantized, 6), "score_final": round(self.score_final, 6),
                "met": self.met, "kept_fp32": [{k: v for k, v in g.items() if k != "nodes"} | {"nodes": len(g["nodes"])}
                                               for g in self.kept],
                "sensitivity": self.sensitivity, "evaluations": self.evaluations}


def evaluations_bound(n_groups: int, max_layers: int, ordered: bool) -> int:
    """The most evaluations :func:`select_fallback` makes (for a progress bar)."""
    k = min(n_groups, max_layers)
    return 1 + (0 if ordered else n_groups) + 2 * k


def select_fallback(groups: dict[str, list[str]], evaluate: Callable[[set[str]], float], *,
                    min_score: float, max_layers: int, base: float | None = None,
                    order: Callable[[], dict[str, float]] | None = None,
                    progress: Callable[[int, float], None] | None = None,
                    metric: tuple[str, str] = ("cosine", "min output cosine vs FP32 (held-out samples)")
                    ) -> FallbackResult:
    """Greedy selection (see the module docstring); ``evaluate(excluded node names) -> score``.

    ``base``: the all-INT8 score when already measured; ``order()``: the noise each group adds (larger
    first), called only when the all-INT8 score misses the tolerance; ``progress(evaluations, score)``
    after each evaluation; ``metric``: (short label, description) of what ``evaluate`` scores.
    """
    calls = 0

    def score(excluded: set[str]) -> float:
        nonlocal calls
        calls += 1
        value = evaluate(excluded)
        if progress is not None:
            progress(calls, value)
        return value

    base = score(set()) if base is None else base
    label = metric[0]
    result = FallbackResult(tolerance=min_score, score_quantized=base, score_final=base, met=base >= min_score,
                            metric=metric[1])
    if result.met or max_layers == 0 or not groups:
        result.evaluations = calls
        return result
    attribution = order() if order is not None else None
    if attribution is not None:
        solo = {g: base + max(0.0, attribution.get(g, 0.0)) for g in groups}  # for "least useful first"
        ranked = sorted(groups, key=lambda g: -attribution.get(g, 0.0))
        result.sensitivity = [{"group": g, "noise_added": round(attribution.get(g, 0.0), 6)} for g in ranked]
    else:
        solo = {g: score(set(nodes)) for g, nodes in groups.items()}
        ranked = sorted(groups, key=lambda g: -solo[g])
        result.sensitivity = [{"group": g, "score_if_fp32": round(solo[g], 6), "gain": round(solo[g] - base, 6)}
                              for g in ranked]
    kept: list[str] = []
    current = base
    for g in ranked:
        if len(kept) >= max_layers or current >= min_score:
            break
        kept.append(g)
        current = score({n for k in kept for n in groups[k]})
    if current >= min_score:  # minimality: drop what is not needed, least useful first
        for g in sorted(kept, key=lambda g: solo[g]):
            trial = [k for k in kept if k != g]
            if not trial:  # all INT8 again: known to miss the tolerance
                continue
            s = score({n for k in trial for n in groups[k]})
            if s >= min_score:
                kept, current = trial, s
    if attribution is not None:
        result.kept = [{"group": g, "nodes": groups[g], "noise_added": round(attribution.get(g, 0.0), 6),
                        "why": f"all-INT8 {label} {base:.4f} < {min_score}; this group adds relative noise "
                               f"energy {attribution.get(g, 0.0):.3g} between its inputs and outputs"}
                       for g in kept]
    else:
        result.kept = [{"group": g, "nodes": groups[g], "score_if_only_this_fp32": round(solo[g], 6),
                        "gain": round(solo[g] - base, 6),
                        "why": f"all-INT8 {label} {base:.4f}; keeping this group in FP32 alone gives "
                               f"{solo[g]:.4f} (tolerance {min_score})"} for g in kept]
    result.score_final = current
    result.met = current >= min_score
    result.evaluations = calls
    return result
