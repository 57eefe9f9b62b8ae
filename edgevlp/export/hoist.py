"""Step-invariant work out of the decoder step: nodes of a decoder graph that depend only on its
per-image context inputs move into the graph that makes that context, so they run once per image
instead of once per token.

A captioner's ``text_decoder`` step reads the cross-attention keys/values that its ``cross_kv`` graph
computes once per image (:data:`STEP_CONTEXT`: consumer role -> producer role). What the step then does
to them is the same at every step: in an INT8 (QDQ) graph every key is transposed and every key and
value quantised (``Transpose`` -> ``QuantizeLinear``), 12 layers x 2 tensors of 577 x 768 values at
BLIP-base size, ~3 ms of a ~12 ms step on this CPU. :func:`hoist_step_invariants` moves such work to
the end of ``cross_kv``: every invariant node that yields float or 8-bit data (GPT-2's cross keys go
through a reshape / transpose / reshape / scale chain; BLIP's through a transpose and, in INT8, a
quantisation), with the shape arithmetic it reads copied along, never a ``DequantizeLinear`` (onnxruntime
fuses that with the int8 product it feeds). Every tensor that then crosses from ``cross_kv`` to the step
must keep the batch on axis 0 -- checked by running the new ``cross_kv`` at batch 1 and 2 -- so the
runtime's per-beam row repeat and Triton's request batching stay right; where one does not, only
:data:`HOISTABLE` nodes move (transposes keeping axis 0 first, per-tensor quantisations with constant
scales). ``cross_kv``'s new outputs (named ``step_invariant.*``: transposed keys, uint8 keys and values)
replace the step's inputs of the same values, and the step keeps its ``DequantizeLinear`` nodes. The
restricted pass is exact (same ops, same constants); the general one may round differently where a
moved float op had been fused into the step's kernels, so :func:`hoist_graphs` accepts it within a
tenth of the fp32 tolerance on the export's sample feeds (and the restricted pass only bit for bit)
before the graphs replace the exported ones; export parity then runs as always.

Used by the ``cpu`` target only (onnxruntime): TensorRT's parser takes QDQ graphs with float inputs, and
OpenVINO converts the graphs as exported.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import onnx
from onnx import helper

from edgevlp.bundle import GraphSpec, TensorSpec
from edgevlp.export.optimize import CHECK_SHARE

__all__ = ["STEP_CONTEXT", "HOISTABLE", "hoist_step_invariants", "hoist_graphs"]

#: decoder-step role -> the role of the graph that computes its per-image context inputs
STEP_CONTEXT: dict[str, str] = {"text_decoder": "cross_kv"}
#: op types that may move out of the step (each also passes :func:`_movable`)
HOISTABLE = ("Transpose", "QuantizeLinear")
#: the prefix of every tensor the pass moves (no clash with the producer's own names)
PREFIX = "step_invariant."

_DTYPE_NAMES = {"float32": onnx.TensorProto.FLOAT, "uint8": onnx.TensorProto.UINT8,
                "int8": onnx.TensorProto.INT8, "float16": onnx.TensorProto.FLOAT16}
_DATA_TYPES = set(_DTYPE_NAMES.values())
#: never moved: onnxruntime fuses a dequantisation with the int8 product it feeds
_STOP = ("DequantizeLinear",)


def _movable(node: onnx.NodeProto, consts: dict[str, onnx.TensorProto]) -> bool:
    """Batch-preserving and computable once: a transpose keeping axis 0 first, or a quantisation with
    a constant per-tensor scale and zero point (the rule of the restricted pass)."""
    if node.op_type == "Transpose":
        perm = next((list(a.ints) for a in node.attribute if a.name == "perm"), None)
        return bool(perm) and perm[0] == 0
    if node.op_type == "QuantizeLinear":
        params = list(node.input[1:3])
        return all(p in consts and int(np.prod(consts[p].dims)) == 1 for p in params if p)
    return False


def _invariant_nodes(cons: onnx.ModelProto, context: set[str], consts: dict[str, onnx.TensorProto],
                     general: bool) -> list[onnx.NodeProto]:
    """Nodes of the step computable from the context and constants alone, in graph order: any such
    node (``general``; never a ``DequantizeLinear``, which onnxruntime fuses with the int8 product it
    feeds), or only :data:`HOISTABLE` ones that pass :func:`_movable`."""
    invariant = {i.name for i in cons.graph.input if i.name in context}
    found = []
    for node in cons.graph.node:
        inputs = [i for i in node.input if i]
        if not inputs or not all(i in invariant or i in consts for i in inputs) \
                or not any(i in invariant for i in inputs) or any(a.g.node or a.graphs for a in node.attribute):
            continue
        if general and node.op_type not in _STOP or not general and node.op_type in HOISTABLE and \
                inputs[0] in invariant and _movable(node, consts):
            found.append(node)
            invariant.update(node.output)
    return found


def _elem_types(model: onnx.ModelProto) -> dict[str, int]:
    inferred = onnx.shape_inference.infer_shapes(model)
    vis = [*inferred.graph.value_info, *inferred.graph.input, *inferred.graph.output]
    return {v.name: v.type.tensor_type.elem_type for v in vis}


def _trial_feeds(prod: onnx.ModelProto, batch: int, extra: int) -> dict[str, np.ndarray]:
    """Random producer inputs: ``batch`` rows, the other symbolic axes 8 + ``extra`` long."""
    rng = np.random.default_rng(0)
    feeds = {}
    for i in prod.graph.input:
        shape = [d.dim_value if d.dim_value else (batch if d.dim_param == "batch" else 8 + extra)
                 for d in i.type.tensor_type.shape.dim]
        feeds[i.name] = rng.normal(size=shape).astype(np.float32)
    return feeds


def _symbolic(shapes: list[tuple[int, ...]], seq_name: str) -> tuple[int | str, ...] | None:
    """The symbolic shape of a tensor from its shapes at (1, L), (2, L), (1, L + 1); None unless the
    batch axis is axis 0 and nothing else depends on the batch."""
    a, b, c = shapes
    if not (len(a) == len(b) == len(c)) or not a or a[0] != 1 or b[0] != 2:
        return None
    dims: list[int | str] = ["batch"]
    for x, y, z in zip(a[1:], b[1:], c[1:]):
        if x != y:
            return None
        dims.append(seq_name if x != z else int(x))
    return tuple(dims)


def hoist_step_invariants(producer: Path, consumer: Path, *, general: bool = True) -> list[TensorSpec]:
    """Move the consumer's step-invariant work (nodes whose inputs are the producer's outputs and
    constants only) to the end of the producer, in place. Returns the new tensors the producer
    outputs and the consumer takes in place of what it computed (empty: nothing moved, files
    untouched).

    ``general``: every invariant node that yields float or 8-bit data moves (shape arithmetic stays in
    the step, copied to the producer where moved nodes need it), provided every tensor that crosses
    over has the batch on axis 0 (checked by running the producer at batch 1 and 2); otherwise, and
    with ``general=False``, only :data:`HOISTABLE` ops (see :func:`_movable`)."""
    if general:
        moved = _hoist(producer, consumer, general=True)
        if moved is not None:
            return moved
    return _hoist(producer, consumer, general=False) or []


def _hoist(producer: Path, consumer: Path, general: bool) -> list[TensorSpec] | None:
    """One attempt of :func:`hoist_step_invariants`; None when a crossing tensor is not batch-first."""
    prod = onnx.load(str(producer))
    cons = onnx.load(str(consumer))
    context = {o.name for o in prod.graph.output}
    consts = {t.name: t for t in cons.graph.initializer}
    invariant = _invariant_nodes(cons, context, consts, general)
    if not invariant:
        return []
    types = _elem_types(cons) if general else {}
    is_data = (lambda n: all(types.get(o) in _DATA_TYPES for o in n.output)) if general else (lambda n: True)
    moved = [n for n in invariant if is_data(n)]
    if not moved:
        return []
    moved_ids = {id(n) for n in moved}
    rest = [n for n in cons.graph.node if id(n) not in moved_ids]
    used = {i for n in rest for i in n.input} | {o.name for o in cons.graph.output}
    made = [o for n in moved for o in n.output]
    boundary = [t for t in made if t in used]
    # shape arithmetic the moved nodes read: copied into the producer, kept in the step
    producer_of = {o: n for n in invariant for o in n.output}
    need: list[onnx.NodeProto] = []
    todo = [i for n in moved for i in n.input if i in producer_of and id(producer_of[i]) not in moved_ids]
    while todo:
        node = producer_of[todo.pop()]
        if all(node is not x for x in need):
            need.append(node)
            todo += [i for i in node.input if i in producer_of and id(producer_of[i]) not in moved_ids]
    order = {id(n): k for k, n in enumerate(cons.graph.node)}
    copied = sorted([*need, *moved], key=lambda n: order[id(n)])
    rename = {t: PREFIX + t for n in copied for t in n.output}

    # the producer: the moved nodes (and the constants they read) after its own, the boundary as outputs
    have = {t.name for t in prod.graph.initializer}
    for node in copied:
        for name in node.input:
            if name in consts and PREFIX + name not in have:
                tensor = onnx.TensorProto()
                tensor.CopyFrom(consts[name])
                tensor.name = PREFIX + name
                prod.graph.initializer.append(tensor)
                have.add(tensor.name)
        copy = helper.make_node(node.op_type, [rename.get(i, PREFIX + i if i in consts else i) for i in node.input],
                                [rename[o] for o in node.output], name=PREFIX + (node.name or node.output[0]),
                                domain=node.domain)
        copy.attribute.extend(node.attribute)
        prod.graph.node.append(copy)
    trial = onnx.ModelProto()
    trial.CopyFrom(prod)
    for t in boundary:
        trial.graph.output.append(helper.make_empty_tensor_value_info(rename[t]))
    seq_name = next((d.dim_param for o in prod.graph.output for d in o.type.tensor_type.shape.dim
                     if d.dim_param and d.dim_param != "batch"), "sequence")
    runs = [_run_model(trial, _trial_feeds(prod, b, e)) for b, e in ((1, 0), (2, 0), (1, 1))]
    specs = []
    for t in boundary:
        shape = _symbolic([r[rename[t]].shape for r in runs], seq_name)
        dtype = str(runs[0][rename[t]].dtype)
        if shape is None or dtype not in _DTYPE_NAMES:
            return None
        specs.append(TensorSpec(rename[t], dtype, shape))
    for spec in specs:
        prod.graph.output.append(helper.make_tensor_value_info(spec.name, _DTYPE_NAMES[spec.dtype], list(spec.shape)))

    # the consumer: the moved nodes gone, their results read as inputs, unread context inputs dropped
    del cons.graph.node[:]
    for node in rest:
        node.input[:] = [rename[i] if i in rename and i in made else i for i in node.input]
        cons.graph.node.append(node)
    still = {i for n in rest for i in n.input} | {o.name for o in cons.graph.output}
    kept = [i for i in cons.graph.input if i.name not in context or i.name in still]
    del cons.graph.input[:]
    cons.graph.input.extend(kept)
    for spec in specs:
        cons.graph.input.append(helper.make_tensor_value_info(spec.name, _DTYPE_NAMES[spec.dtype], list(spec.shape)))
    keep_inits = [t for t in cons.graph.initializer if t.name in still]
    del cons.graph.initializer[:]
    cons.graph.initializer.extend(keep_inits)
    onnx.checker.check_model(prod)
    onnx.checker.check_model(cons)
    onnx.save(prod, str(producer))
    onnx.save(cons, str(consumer))
    return specs


def _run_model(model: onnx.ModelProto | Path, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """The outputs of ``model`` (a model, or an ONNX file, read by onnxruntime itself) on ``feeds``."""
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.log_severity_level = 3
    source = str(model) if isinstance(model, Path) else model.SerializeToString()
    sess = ort.InferenceSession(source, so, providers=["CPUExecutionProvider"])
    names = [o.name for o in sess.get_outputs()]
    return dict(zip(names, sess.run(names, {i.name: feeds[i.name] for i in sess.get_inputs()})))


def hoist_graphs(ctx: Any) -> dict[str, Any]:
    """:func:`hoist_step_invariants` for every ``STEP_CONTEXT`` pair of ``ctx``'s ONNX graphs, checked on
    the sample feeds (the step's outputs within a tenth of the fp32 tolerance for the general pass,
    identical for the restricted one); the graph specs follow. Returns the record
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
        atol, rtol = ctx.profile.tolerance_for("fp32")
        specs, mode, reason = [], "", "no step-invariant node"
        with tempfile.TemporaryDirectory(prefix="edgevlp-hoist-") as tmp:
            p, c = Path(tmp) / "context.onnx", Path(tmp) / "step.onnx"
            # the general pass first; where it moves float work whose rounding differs once it leaves
            # the step's fusions (beyond a tenth of the fp32 tolerance), the exact restricted one
            for general in (True, False):
                shutil.copyfile(ctx.root / context.file, p)
                shutil.copyfile(ctx.root / step.file, c)
                specs = hoist_step_invariants(p, c, general=general)
                if not specs:
                    continue
                if feeds is not None and step_feeds is not None:
                    made = _run_model(p, feeds)
                    before = _run_model(ctx.root / step.file, {**step_feeds, **{k: v for k, v in made.items()
                                                                          if k in step_feeds}})
                    after = _run_model(c, {**step_feeds, **made})
                    same = (np.allclose(before[k], after[k], atol=atol * CHECK_SHARE, rtol=rtol * CHECK_SHARE)
                            if general else np.array_equal(before[k], after[k]) for k in before)
                    if not all(same):
                        specs, reason = [], "outputs changed after hoisting; kept as exported"
                        continue
                mode = "general" if general else "transposes and quantisations"
                break
            if not specs:
                record[step_role] = {"applied": False, "reason": reason}
                continue
            shutil.copyfile(p, ctx.root / context.file)
            shutil.copyfile(c, ctx.root / step.file)
        new_context = GraphSpec(role=context.role, file=context.file, inputs=context.inputs,
                                outputs=(*context.outputs, *specs), format=context.format,
                                extra_files=context.extra_files, engines=context.engines)
        final = {i.name for i in onnx.load(str(ctx.root / step.file), load_external_data=False).graph.input}
        new_step = GraphSpec(role=step.role, file=step.file,
                             inputs=(*[t for t in step.inputs if t.name in final], *specs), outputs=step.outputs,
                             format=step.format, extra_files=step.extra_files, engines=step.engines)
        ctx.replace_graph(context, new_context)
        ctx.replace_graph(step, new_step)
        record[step_role] = {"applied": True, "mode": mode, "into": context_role, "tensors": len(specs),
                             "inputs_dropped": len(step.inputs) + len(specs) - len(new_step.inputs)}
    for role, entry in record.items():
        ctx.note_graph(role, "hoisted", entry)
    return record
