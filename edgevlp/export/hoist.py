"""Step-invariant work out of the decoder step: nodes of a decoder graph that depend only on its
per-image context inputs move into the graph that makes that context, so they run once per image
instead of once per token.

A captioner's ``text_decoder`` step reads the cross-attention keys/values that its ``cross_kv`` graph
computes once per image (:data:`STEP_CONTEXT`: consumer role -> producer role). What the step then does
to them is the same at every step: in an INT8 (QDQ) graph every key is transposed and every key and
value quantised (``Transpose`` -> ``QuantizeLinear``), 12 layers x 2 tensors of 577 x 768 values at
BLIP-base size, ~3 ms of a ~12 ms step on this CPU. :func:`hoist_step_invariants` moves such nodes
(:data:`HOISTABLE`: transposes that keep the batch axis first, per-tensor quantisation with constant
scales -- element-wise or batch-preserving, so the runtime's per-beam row repeat and Triton's request
batching stay right) to the end of ``cross_kv``. Its new outputs (the transposed, quantised keys and
values, uint8) replace the step's inputs of the same values; the step keeps its ``DequantizeLinear``
nodes, which onnxruntime fuses with the matrix products into its int8 kernels as before. The outputs are
bit for bit what the step computed (same ops, same constants), checked on the export's sample feeds
before the graphs replace the exported ones.

Used by the ``cpu`` target only (onnxruntime): TensorRT's parser takes QDQ graphs with float inputs, and
OpenVINO converts the graphs as exported.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import onnx
from onnx import helper, numpy_helper

from edgevlp.bundle import GraphSpec, TensorSpec

__all__ = ["STEP_CONTEXT", "HOISTABLE", "hoist_step_invariants", "hoist_graphs"]

#: decoder-step role -> the role of the graph that computes its per-image context inputs
STEP_CONTEXT: dict[str, str] = {"text_decoder": "cross_kv"}
#: op types that may move out of the step (each also passes :func:`_movable`)
HOISTABLE = ("Transpose", "QuantizeLinear")
#: the prefix of every tensor the pass moves (no clash with the producer's own names)
PREFIX = "step_invariant."

_ONNX_DTYPES = {onnx.TensorProto.FLOAT: "float32", onnx.TensorProto.UINT8: "uint8",
                onnx.TensorProto.INT8: "int8", onnx.TensorProto.FLOAT16: "float16"}


def _movable(node: onnx.NodeProto, consts: dict[str, onnx.TensorProto]) -> bool:
    """Batch-preserving and computable once: a transpose keeping axis 0 first, or a quantisation with
    a constant per-tensor scale and zero point."""
    if node.op_type == "Transpose":
        perm = next((list(a.ints) for a in node.attribute if a.name == "perm"), None)
        return bool(perm) and perm[0] == 0
    if node.op_type == "QuantizeLinear":
        params = list(node.input[1:3])
        return all(p in consts and int(np.prod(consts[p].dims)) == 1 for p in params if p)
    return False


def _shape_of(tensor: onnx.ValueInfoProto) -> list[int | str]:
    return [d.dim_param if d.dim_param else int(d.dim_value) for d in tensor.type.tensor_type.shape.dim]


def hoist_step_invariants(producer: Path, consumer: Path) -> list[TensorSpec]:
    """Move the consumer's step-invariant nodes (inputs: the producer's outputs and constants only) to
    the end of the producer, in place. Returns the new tensors the producer outputs and the consumer
    takes in place of what it computed (empty: nothing moved, files untouched)."""
    prod = onnx.load(str(producer))
    cons = onnx.load(str(consumer))
    context = {o.name: o for o in prod.graph.output}
    consts = {t.name: t for t in cons.graph.initializer}
    known: dict[str, tuple[int, list[int | str]]] = {  # invariant tensor -> (onnx dtype, shape)
        i.name: (i.type.tensor_type.elem_type, _shape_of(i)) for i in cons.graph.input if i.name in context}
    moved: list[onnx.NodeProto] = []
    for node in cons.graph.node:
        inputs = [i for i in node.input if i]
        if (node.op_type in HOISTABLE and inputs and inputs[0] in known
                and all(i in known or i in consts for i in inputs) and _movable(node, consts)):
            dtype, shape = known[inputs[0]]
            if node.op_type == "Transpose":
                perm = next(list(a.ints) for a in node.attribute if a.name == "perm")
                shape = [shape[p] for p in perm]
            else:
                zp = node.input[2] if len(node.input) > 2 and node.input[2] else None
                dtype = consts[zp].data_type if zp else onnx.TensorProto.UINT8
            known[node.output[0]] = (dtype, shape)
            moved.append(node)
    if not moved:
        return []
    moved_ids = {id(n) for n in moved}
    rest = [n for n in cons.graph.node if id(n) not in moved_ids]
    used = {i for n in rest for i in n.input} | {o.name for o in cons.graph.output}
    made = [o for n in moved for o in n.output]
    boundary = [t for t in made if t in used]
    rename = {t: PREFIX + t for t in made}

    # the producer: the moved nodes (and their constants) after its own, the boundary as outputs
    have = {t.name for t in prod.graph.initializer}
    for node in moved:
        for name in node.input[1:]:
            if name and PREFIX + name not in have:
                tensor = onnx.TensorProto()
                tensor.CopyFrom(consts[name])
                tensor.name = PREFIX + name
                prod.graph.initializer.append(tensor)
                have.add(tensor.name)
        copy = helper.make_node(node.op_type, [node.input[0] if node.input[0] in context else rename[node.input[0]],
                                               *[PREFIX + i if i else "" for i in node.input[1:]]],
                                [rename[o] for o in node.output], name=PREFIX + (node.name or node.output[0]),
                                domain=node.domain)
        copy.attribute.extend(node.attribute)
        prod.graph.node.append(copy)
    specs = []
    for t in boundary:
        dtype, shape = known[t]
        prod.graph.output.append(helper.make_tensor_value_info(rename[t], dtype, shape))
        specs.append(TensorSpec(rename[t], _ONNX_DTYPES[dtype], tuple(shape)))

    # the consumer: the moved nodes gone, their results read as inputs, unread context inputs dropped
    del cons.graph.node[:]
    for node in rest:
        node.input[:] = [rename.get(i, i) for i in node.input]
        cons.graph.node.append(node)
    still = {i for n in rest for i in n.input} | {o.name for o in cons.graph.output}
    kept = [i for i in cons.graph.input if i.name not in context or i.name in still]
    del cons.graph.input[:]
    cons.graph.input.extend(kept)
    for t in boundary:
        dtype, shape = known[t]
        cons.graph.input.append(helper.make_tensor_value_info(rename[t], dtype, shape))
    unread = {name for n in moved for name in n.input[1:] if name} - still
    keep_inits = [t for t in cons.graph.initializer if t.name not in unread]
    del cons.graph.initializer[:]
    cons.graph.initializer.extend(keep_inits)
    onnx.checker.check_model(prod)
    onnx.checker.check_model(cons)
    onnx.save(prod, str(producer))
    onnx.save(cons, str(consumer))
    return specs


def _run(path: Path, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.log_severity_level = 3
    sess = ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])
    names = [o.name for o in sess.get_outputs()]
    return dict(zip(names, sess.run(names, {i.name: feeds[i.name] for i in sess.get_inputs()})))


def hoist_graphs(ctx: Any) -> dict[str, Any]:
    """:func:`hoist_step_invariants` for every ``STEP_CONTEXT`` pair of ``ctx``'s ONNX graphs, checked on
    the sample feeds (the step's outputs must be identical); the graph specs follow. Returns the record
    per step role (also ``ctx.notes["graph_optimization"][role]["hoisted"]``)."""
    import shutil
    import tempfile

    roles = {g.role: g for g in ctx.graphs if g.format == "onnx"}
    record: dict[str, Any] = {}
    for step_role, context_role in STEP_CONTEXT.items():
        step, context = roles.get(step_role), roles.get(context_role)
        if step is None or context is None:
            continue
        feeds = ctx.sample_feeds.get(context_role)
        step_feeds = ctx.sample_feeds.get(step_role)
        with tempfile.TemporaryDirectory(prefix="edgevlp-hoist-") as tmp:
            p, c = Path(tmp) / "context.onnx", Path(tmp) / "step.onnx"
            shutil.copyfile(ctx.root / context.file, p)
            shutil.copyfile(ctx.root / step.file, c)
            specs = hoist_step_invariants(p, c)
            if not specs:
                record[step_role] = {"applied": False, "reason": "no step-invariant node"}
                continue
            if feeds is not None and step_feeds is not None:
                made = _run(p, feeds)
                before = _run(ctx.root / step.file, {**step_feeds, **{k: v for k, v in made.items()
                                                                      if k in step_feeds}})
                after = _run(c, {**step_feeds, **made})
                if any(not np.array_equal(before[k], after[k]) for k in before):
                    record[step_role] = {"applied": False, "reason": "outputs changed after hoisting; kept as "
                                                                     "exported"}
                    continue
            shutil.copyfile(p, ctx.root / context.file)
            shutil.copyfile(c, ctx.root / step.file)
        moved_names = {s.name for s in specs}
        new_context = GraphSpec(role=context.role, file=context.file, inputs=context.inputs,
                                outputs=(*context.outputs, *specs), format=context.format,
                                extra_files=context.extra_files, engines=context.engines)
        final = {i.name for i in onnx.load(str(ctx.root / step.file), load_external_data=False).graph.input}
        new_step = GraphSpec(role=step.role, file=step.file,
                             inputs=(*[t for t in step.inputs if t.name in final], *specs), outputs=step.outputs,
                             format=step.format, extra_files=step.extra_files, engines=step.engines)
        ctx.replace_graph(context, new_context)
        ctx.replace_graph(step, new_step)
        record[step_role] = {"applied": True, "into": context_role, "tensors": len(moved_names),
                             "inputs_dropped": len(step.inputs) + len(specs) - len(new_step.inputs)}
    notes = ctx.notes.setdefault("graph_optimization", {})
    for role, entry in record.items():
        notes[role] = {**(notes[role] if isinstance(notes.get(role), dict) else {}), "hoisted": entry}
    return record
