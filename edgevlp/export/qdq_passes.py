"""Rewrites of quantised (QDQ) graphs at export, for onnxruntime (the ``cpu`` target).

**Scales into the dequantisation** (:func:`fold_matmul_scales`): attention multiplies its scores by
``1 / sqrt(head_dim)`` after ``Q @ K^T``. In an FP32 graph onnxruntime folds that constant into the
matrix product (``FusedMatMul``'s alpha); in a QDQ graph the product's inputs are ``DequantizeLinear``
outputs, the fusion does not apply, and a 12 x 577 x 577 float ``Mul`` runs per layer (BLIP-base
vision encoder: 9.8 ms of 155 ms on this CPU). ``(A @ DQ(B, s)) * c == A @ DQ(B, s * c)``, so the
constant moves into the scale of the product's second dequantisation when that feeds only this product:
the same int8 kernel then writes the scaled scores. (A ``Div`` by a constant is a ``Mul`` by its
inverse.) The graph's outputs differ from the unfolded graph's by float rounding only; export parity
checks the result as for any INT8 graph.

**GELU as one kernel** (:func:`fuse_gelu`): the exported exact GELU is five float ops over the MLP's
577 x 3072 activations (``x / sqrt 2``, ``Erf``, ``+ 1``, two ``Mul``), after the bias ``Add`` of the
product before it; onnxruntime's own GELU fusion does not match the order our exporter writes them in.
They become one ``com.microsoft`` ``BiasGelu(y, bias)`` (``Gelu(x)`` where no constant bias precedes):
BLIP-base vision encoder, INT8, ~18 ms of float ops per image -> one pass.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import onnx
from onnx import numpy_helper

from edgevlp.export.optimize import is_quantised

__all__ = ["fold_matmul_scales", "fuse_gelu", "optimize_qdq_graph", "optimize_quantised_graphs"]


def _index(g: onnx.GraphProto) -> tuple[dict[str, onnx.TensorProto], dict[str, onnx.NodeProto],
                                        dict[str, list[onnx.NodeProto]], set[str]]:
    """A graph's initializers by name, the node making each tensor, the nodes reading it, its outputs."""
    consumers: dict[str, list[onnx.NodeProto]] = {}
    for n in g.node:
        for i in n.input:
            consumers.setdefault(i, []).append(n)
    return ({t.name: t for t in g.initializer}, {o: n for n in g.node for o in n.output}, consumers,
            {o.name for o in g.output})


def _scalar(inits: dict[str, onnx.TensorProto], name: str) -> float | None:
    t = inits.get(name)
    if t is None or int(np.prod(t.dims)) != 1 or t.data_type != onnx.TensorProto.FLOAT:
        return None
    return float(numpy_helper.to_array(t).reshape(()))


def fold_matmul_scales(model: onnx.ModelProto) -> int:
    """Fold ``MatMul(DQ(a), DQ(b)) * c`` (or ``/ c``, c a float constant) into ``b``'s dequantisation
    scale, in place; returns how many products were folded."""
    g = model.graph
    inits, producer, consumers, outputs = _index(g)
    dropped: set[int] = set()
    folded = 0
    for node in list(g.node):
        if node.op_type not in ("Mul", "Div") or len(node.input) != 2:
            continue
        x, c = node.input
        value = _scalar(inits, c)
        if value is None and node.op_type == "Mul":
            x, c = c, x
            value = _scalar(inits, c)
        if value is None or value == 0.0:
            continue
        factor = value if node.op_type == "Mul" else 1.0 / value
        matmul = producer.get(x)
        if matmul is None or matmul.op_type != "MatMul" or len(consumers.get(x, [])) != 1 or x in outputs:
            continue
        dq = producer.get(matmul.input[1])
        if (dq is None or dq.op_type != "DequantizeLinear" or len(consumers.get(matmul.input[1], [])) != 1
                or dq.input[1] not in inits):
            continue
        scale = numpy_helper.to_array(inits[dq.input[1]]).astype(np.float32)
        new = numpy_helper.from_array((scale * np.float32(factor)).astype(np.float32),
                                      f"{dq.input[1]}::scaled_by::{node.name or node.output[0]}")
        g.initializer.append(new)
        inits[new.name] = new
        dq.input[1] = new.name
        # the product now writes what the Mul wrote
        matmul.output[0] = node.output[0]
        producer[node.output[0]] = matmul
        dropped.add(id(node))
        folded += 1
    if dropped:
        keep = [n for n in g.node if id(n) not in dropped]
        del g.node[:]
        g.node.extend(keep)
        used = {i for n in g.node for i in n.input} | {i.name for i in g.input}
        live = [t for t in g.initializer if t.name in used]
        del g.initializer[:]
        g.initializer.extend(live)
    return folded


def _close(value: float | None, want: float) -> bool:
    return value is not None and abs(value - want) <= 1e-4 * abs(want)


def fuse_gelu(model: onnx.ModelProto) -> int:
    """Replace each exact GELU subgraph ``x * 0.5 * (1 + erf(x / sqrt(2)))`` (any order of the two
    products, ``/ sqrt 2`` or ``* (1 / sqrt 2)``) with ``com.microsoft`` ``BiasGelu`` / ``Gelu``, in
    place; returns how many were fused."""
    g = model.graph
    inits, producer, consumers, outputs = _index(g)

    def only(name: str, node: onnx.NodeProto) -> bool:
        return name not in outputs and [id(c) for c in consumers.get(name, [])] == [id(node)]

    def other(node: onnx.NodeProto, name: str) -> str:
        return node.input[1] if node.input[0] == name else node.input[0]

    dropped: set[int] = set()
    new_nodes: dict[int, onnx.NodeProto] = {}  # id of the pattern's last node -> its replacement
    fused = 0
    for erf in [n for n in g.node if n.op_type == "Erf"]:
        scale = producer.get(erf.input[0])
        if scale is None or scale.op_type not in ("Div", "Mul") or not only(erf.input[0], erf):
            continue
        x = scale.input[0]
        c = _scalar(inits, scale.input[1])
        if not (_close(c, 2 ** 0.5) if scale.op_type == "Div" else _close(c, 2 ** -0.5)):
            continue
        adds = consumers.get(erf.output[0], [])
        if len(adds) != 1 or adds[0].op_type != "Add" or not _close(_scalar(inits, other(adds[0], erf.output[0])), 1.0):
            continue
        add = adds[0]
        # two Muls combine {x, 1 + erf, 0.5}, in either order
        first = consumers.get(add.output[0], [])
        if len(first) != 1 or first[0].op_type != "Mul":
            continue
        m1 = first[0]
        partner = other(m1, add.output[0])
        if _close(_scalar(inits, partner), 0.5):              # 0.5 * (1 + erf), then * x
            nxt = consumers.get(m1.output[0], [])
            if len(nxt) != 1 or nxt[0].op_type != "Mul" or other(nxt[0], m1.output[0]) != x:
                continue
            pattern, last = [scale, erf, add, m1, nxt[0]], nxt[0]
        elif partner == x:                                       # x * (1 + erf), then * 0.5
            nxt = consumers.get(m1.output[0], [])
            if len(nxt) != 1 or nxt[0].op_type != "Mul" or not _close(_scalar(inits, other(nxt[0], m1.output[0])), 0.5):
                continue
            pattern, last = [scale, erf, add, m1, nxt[0]], nxt[0]
        elif producer.get(partner) is not None and producer[partner].op_type == "Mul":  # (x * 0.5) * (1 + erf)
            half = producer[partner]
            if other(half, x) == x or x not in half.input or not _close(_scalar(inits, other(half, x)), 0.5) \
                    or not only(partner, m1):
                continue
            pattern, last = [scale, erf, add, half, m1], m1
        else:
            continue
        inner = [o for n in pattern if n is not last for o in n.output]
        if any(o in outputs for o in inner) or any(
                any(id(c) not in {id(n) for n in pattern} for c in consumers.get(o, [])) for o in inner):
            continue
        bias_add = producer.get(x)
        users = {id(c) for c in consumers.get(x, [])}
        if (bias_add is not None and bias_add.op_type == "Add" and x not in outputs
                and users <= {id(n) for n in pattern}
                and any(i in inits and len(inits[i].dims) == 1 for i in bias_add.input)):
            bias = next(i for i in bias_add.input if i in inits and len(inits[i].dims) == 1)
            node = onnx.helper.make_node("BiasGelu", [other(bias_add, bias), bias], [last.output[0]],
                                         name=f"BiasGelu::{last.name or last.output[0]}", domain="com.microsoft")
            pattern.append(bias_add)
        else:
            node = onnx.helper.make_node("Gelu", [x], [last.output[0]], name=f"Gelu::{last.name or last.output[0]}",
                                         domain="com.microsoft")
        dropped |= {id(n) for n in pattern}
        new_nodes[id(last)] = node
        fused += 1
    if fused:
        keep = []
        for n in g.node:
            if id(n) in new_nodes:
                keep.append(new_nodes[id(n)])
            elif id(n) not in dropped:
                keep.append(n)
        del g.node[:]
        g.node.extend(keep)
        if not any(o.domain == "com.microsoft" for o in model.opset_import):
            model.opset_import.append(onnx.helper.make_opsetid("com.microsoft", 1))
    return fused


def optimize_qdq_graph(path: Path) -> dict[str, int] | None:
    """:func:`fold_matmul_scales` and :func:`fuse_gelu` on the quantised ONNX file ``path`` (rewritten
    only when something changed); returns the counts, or None for a graph that is not quantised (FP32
    graphs get :mod:`edgevlp.export.optimize`'s fusions instead)."""
    model = onnx.load(str(path))
    if not is_quantised(model):
        return None
    counts = {"scales_folded": fold_matmul_scales(model), "gelu_fused": fuse_gelu(model)}
    if any(counts.values()):
        onnx.checker.check_model(model)
        onnx.save(model, str(path))
    return counts


def optimize_quantised_graphs(ctx: Any) -> dict[str, dict[str, int]]:
    """:func:`optimize_qdq_graph` on every quantised ONNX graph of the export context ``ctx``; the counts
    go to ``ctx.notes["graph_optimization"][role]["quantised"]``."""
    record: dict[str, dict[str, int]] = {}
    for graph in ctx.graphs:
        if graph.format == "onnx":
            counts = optimize_qdq_graph(ctx.root / graph.file)
            if counts is not None:
                record[graph.role] = counts
    for role, counts in record.items():
        ctx.note_graph(role, "quantised", counts)
    return record
