"""Graph optimisation at export, for the ``cpu`` target (onnxruntime): transformer fusions on the FP32
decoder steps, and a pass that lets onnxruntime's INT8 quantiser reach the tied output projection.

**Fusions** (:data:`FUSIONS`, one row per model family and graph role): onnxruntime's transformer
optimizer (``onnxruntime.transformers.optimizer.optimize_model``) with the row's model type and
``FusionOptions``. On our dynamo (opset 18) graphs it fuses every residual add + layer norm into
``SkipLayerNormalization`` and the erf/tanh GELUs with their bias into ``BiasGelu``/``FastGelu``
(``QuickGelu`` for CLIP); its attention patterns, written for TorchScript exports (separate Q/K/V
MatMul+Add, Reshape/Transpose, a mask Add before Softmax), match none of our graphs (BLIP packs QKV
into one MatMul and Gathers it, OWL-ViT scales Q first and runs 3-D ``bmm``s), so attention stays off.
onnxscript's rewriter (``onnxscript.rewriter.ort_fusions.optimize_for_ort``), written for dynamo graphs,
does fuse attention (``MultiHeadAttention`` in BLIP, packed ``Attention`` in ViT) but measured
1.15-1.27x *slower* per decoder step and within 2 % on encoders, breaks GPT-2's ``Conv1D`` reshapes (an
MHA output of rank 3 fed to a rank-2 ``Gemm``) and keeps the packed QKV weights from the INT8 quantiser,
so it is not used; nor is a TorchScript export for ORT's own attention fusion, which would give the same
contrib kernels.

Measured on random-weight models of the real shapes (BLIP-base, ViT-GPT2, OWL-ViT B/32), onnxruntime
CPU, 2 threads, paired A/B (docs/export.md, "Graph optimisation"): fused decoder steps are 1.09x faster
(within 3 % on one thread); fused encoders are 1.00-1.03x *slower* (GEMM-bound at 197-577 tokens;
onnxruntime's session optimiser already fuses part of it at load), so their rows say so and leave them
as exported; quantising fused graphs is up to 1.12x slower than quantising the exported ones, so fusions
run only on graphs that stay FP32.

**Untying** (:func:`untie_transposed_weights`, before INT8 only): a tied LM head reads the word
embedding through a ``Transpose``, so the quantiser leaves it FP32 (or, where it quantises the embedding
for its ``Gather``, makes every step dequantise the whole table). Giving the head its own transposed
initializer lets it quantise: INT8 decoder steps 1.75x (BLIP-base) and 2.3x (ViT-GPT2) faster, for
+23/+38 MB of INT8 weights.

**Weights beside the graph** (:func:`store_weights_externally`, last, on every ``--target cpu`` graph):
each ``X.onnx`` keeps its nodes and ``X.onnx.data`` its initializers (ONNX external data), so
onnxruntime maps the weights from the file instead of parsing a protobuf that holds them and then
copying them (a transient second copy of every graph at load). A tied LM head -- the word embedding
read by the embedding ``Gather`` and, through a ``Transpose``, by the output ``MatMul`` -- becomes a
``FusedMatMul(transB=1)`` on an *alias* initializer whose external data are the embedding's own bytes:
onnxruntime would otherwise constant-fold the ``Transpose`` into a second copy of the table at load, and
with one shared name it keeps the unpacked table resident beside the copy its GEMM pre-packs. With
the alias, the pre-packed head is the only resident copy and the ``Gather`` touches only the rows it
reads. BLIP-base FP32, onnxruntime CPU, fresh process that loads and captions once: peak RSS 1334 MiB
-> 1049 MiB (1.47x -> 1.22x the 899 MB bundle; with the CPU memory arena off, see
:mod:`edgevlp.runtime.backends.onnxruntime`), same caption latency within noise.

TensorRT targets (jetson, laptop-gpu) get neither: the fused ops are ``com.microsoft`` contrib ops that
TensorRT's ONNX parser does not implement, and TensorRT fuses layer norm, GELU and attention from the
standard ops itself. OpenVINO converts the plain ONNX and fuses on its own (docs/export.md).

Every fused graph is checked before it replaces the exported one: its inputs and outputs must keep their
names and declared shapes, and on the export's sample feeds its outputs must match within a tenth of the
fp32 parity tolerance. A graph where the optimiser fails, fuses nothing or does not match is kept as
exported and the reason is written into the manifest (``export.graph_optimization``); the export itself
never fails here. Parity (:mod:`edgevlp.export.parity`) then runs on the final graphs as for any export.
"""

from __future__ import annotations

import collections
import contextlib
import io
import logging
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnx
from onnx import numpy_helper

from edgevlp.bundle import GraphSpec
from edgevlp.export.context import ExportContext

__all__ = ["Fusions", "FUSIONS", "FUSED_OPS", "is_quantised", "optimize_graphs", "untie_graphs", "fuse_graph",
           "untie_transposed_weights", "store_weights_externally", "externalize_graphs", "op_counts"]

#: Op types the fusions produce (counted before/after in the manifest notes).
FUSED_OPS = ("Attention", "MultiHeadAttention", "SkipLayerNormalization", "SkipSimplifiedLayerNormalization",
             "LayerNormalization", "EmbedLayerNormalization", "BiasGelu", "FastGelu", "Gelu", "QuickGelu")
#: Ops that mark a graph as already quantised (QDQ from `edgevlp compress`, or dynamic INT8).
_QUANTISED_OPS = {"QuantizeLinear", "DequantizeLinear", "DynamicQuantizeLinear", "MatMulInteger",
                  "QLinearMatMul", "MatMulNBits", "ConvInteger", "QAttention"}
#: A fused graph may use this share of the fp32 parity tolerance on the sample feeds.
CHECK_SHARE = 0.1


@dataclass(frozen=True)
class Fusions:
    """Settings for onnxruntime's transformer optimizer on one graph (``FusionOptions`` switches).

    Example:
        >>> Fusions("vit").options().enable_attention
        False
    """

    model_type: str
    attention: bool = False          # matches no dynamo graph (see the module docstring)
    layer_norm: bool = True
    skip_layer_norm: bool = True
    bias_skip_layer_norm: bool = True
    gelu: bool = True
    bias_gelu: bool = True
    # EmbedLayerNormalization takes the word/position Gathers out of reach of the INT8 quantiser and
    # gains nothing per token; off.
    embed_layer_norm: bool = False

    def options(self) -> Any:
        from onnxruntime.transformers.fusion_options import FusionOptions

        opts = FusionOptions(self.model_type)
        opts.enable_attention = self.attention
        opts.enable_layer_norm = self.layer_norm
        opts.enable_skip_layer_norm = self.skip_layer_norm
        opts.enable_bias_skip_layer_norm = self.bias_skip_layer_norm
        opts.enable_gelu = self.gelu
        opts.enable_bias_gelu = self.bias_gelu
        opts.enable_embed_layer_norm = self.embed_layer_norm
        opts.enable_gelu_approximation = False  # changes the numbers
        return opts

    def describe(self) -> str:
        on = [k for k in ("attention", "layer_norm", "skip_layer_norm", "bias_skip_layer_norm", "gelu",
                          "bias_gelu", "embed_layer_norm") if getattr(self, k)]
        return f"onnxruntime.transformers optimize_model(model_type={self.model_type!r}; {', '.join(on)})"


_BERT = Fusions("bert")
_ENCODER = ("left as exported: onnxruntime's fusions gained nothing on encoders at real size (0.97-1.03x "
            "the exported graph's time; GEMM-bound), see edgevlp.export.optimize")
_NOTHING = "left as exported: nothing in this graph fuses (MatMuls only)"

#: (family, graph role) -> fusions for that graph, or why it is left as exported. A family/role without
#: a row is left as exported too (and the manifest says so). "gpt2" as model type crashes on dynamo
#: graphs (its post-processing expects every Gemm to have a bias); "bert" fuses the same ops.
FUSIONS: dict[tuple[str, str], Fusions | str] = {
    ("blip", "vision_encoder"): _ENCODER,
    ("blip", "cross_kv"): _NOTHING,
    ("blip", "text_decoder"): _BERT,
    ("vision-encoder-decoder", "vision_encoder"): _ENCODER,
    ("vision-encoder-decoder", "cross_kv"): _NOTHING,
    ("vision-encoder-decoder", "text_decoder"): _BERT,
    ("owlvit", "image_encoder"): _ENCODER,
    ("owlvit", "text_encoder"): _ENCODER,
    ("owlv2", "image_encoder"): _ENCODER,
    ("owlv2", "text_encoder"): _ENCODER,
    **{(family, role): why for family in ("smolvlm", "idefics3") for role, why in (
        ("vision_encoder", _ENCODER), ("embed_tokens", "left as exported: one Gather"),
        ("decoder", "left as exported: onnxruntime's Llama fusions (RMSNorm, rotary, grouped-query "
                    "attention) are not measured here yet"))},
}


def op_counts(model: onnx.ModelProto) -> dict[str, int]:
    """Node count (``nodes``) and the count of each op type of :data:`FUSED_OPS` present."""
    counts = collections.Counter(n.op_type for n in model.graph.node)
    return {"nodes": len(model.graph.node), **{op: counts[op] for op in FUSED_OPS if counts[op]}}


def is_quantised(model: onnx.ModelProto) -> bool:
    """Whether ``model`` holds quantised ops (QDQ, dynamic INT8, MatMulNBits)."""
    return any(n.op_type in _QUANTISED_OPS for n in model.graph.node)


def _io(model: onnx.ModelProto) -> list[tuple[str, list[str | int]]]:
    """Graph inputs (not initializers) and outputs with their declared shapes: the bundle's contract."""
    inits = {i.name for i in model.graph.initializer}
    return [(v.name, [d.dim_param or d.dim_value for d in v.type.tensor_type.shape.dim])
            for v in (*model.graph.input, *model.graph.output) if v.name not in inits]


def _run(path: Path, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.log_severity_level = 3
    session = ort.InferenceSession(str(path), sess_options=options, providers=["CPUExecutionProvider"])
    names = [o.name for o in session.get_outputs()]
    return dict(zip(names, session.run(names, feeds)))


def _compare(ref_path: Path, new_path: Path, feeds: dict[str, np.ndarray], atol: float,
             rtol: float) -> tuple[float, str]:
    """Worst ``max|new - ref| / (atol + rtol * max|ref|)`` over the outputs (<= 1 passes) and a note."""
    ref, new = _run(ref_path, feeds), _run(new_path, feeds)
    worst, note = 0.0, "all outputs identical"
    for name, a in ref.items():
        b = new[name]
        if a.shape != b.shape:
            return float("inf"), f"output {name!r} has shape {b.shape}, exported graph gives {a.shape}"
        if a.dtype.kind != "f":
            if not np.array_equal(a, b):
                return float("inf"), f"output {name!r} differs"
            continue
        diff = float(np.abs(a.astype(np.float64) - b).max()) if a.size else 0.0
        if not np.isfinite(diff):
            return float("inf"), f"output {name!r} is not finite"
        score = diff / (atol + rtol * (float(np.abs(a).max()) if a.size else 0.0))
        if score >= worst:
            worst, note = score, f"worst output {name}: max |diff| {diff:.3g}"
    return worst, note


@contextlib.contextmanager
def _quiet():
    """The optimizer prints (shape-inference failures) and warns for every pattern it skips, through
    loggers named after its modules (``fusion_skiplayernorm``, ...): silenced for the call."""
    import onnxruntime.transformers.optimizer  # noqa: F401 - imports the modules whose loggers we mute

    here = str(Path(onnxruntime.transformers.optimizer.__file__).parent)
    loggers = {m.logger for m in list(sys.modules.values())
               if isinstance(getattr(m, "logger", None), logging.Logger)
               and str(getattr(m, "__file__", "") or "").startswith(here)}
    levels = {lg: lg.level for lg in loggers}
    for lg in loggers:
        lg.setLevel(logging.ERROR)
    try:
        with contextlib.redirect_stdout(io.StringIO()):
            yield
    finally:
        for lg, level in levels.items():
            lg.setLevel(level)


def fuse_graph(path: Path, fusions: Fusions, feeds: dict[str, np.ndarray] | None, *,
               atol: float, rtol: float) -> dict[str, Any]:
    """Fuse the ONNX graph at ``path`` in place when the fused graph keeps its I/O and matches it on
    ``feeds`` (``max|diff| <= atol + rtol * max|exported|`` per output); returns the manifest record.

    Example:
        >>> rec = fuse_graph(Path("text_decoder.onnx"), FUSIONS["blip", "text_decoder"], feeds,
        ...                  atol=1e-5, rtol=1e-4)                               # doctest: +SKIP
        >>> rec["applied"], rec["after"]["SkipLayerNormalization"]              # doctest: +SKIP
        (True, 36)
    """
    t0 = time.perf_counter()
    record: dict[str, Any] = {"optimizer": fusions.describe(), "applied": False}

    def done(reason: str = "") -> dict[str, Any]:
        if reason:
            record["reason"] = reason
        record["seconds"] = round(time.perf_counter() - t0, 2)
        return record

    model = onnx.load(str(path))
    record["before"] = op_counts(model)
    if is_quantised(model):
        return done("graph is already quantised; fusions run on FP32 graphs only")
    io_before = _io(model)
    del model
    tmp = path.with_suffix(".fused.onnx")
    try:
        from onnxruntime.transformers.optimizer import optimize_model

        with _quiet():
            optimized = optimize_model(str(path), model_type=fusions.model_type, num_heads=0, hidden_size=0,
                                       optimization_options=fusions.options(), opt_level=0)
        record["after"] = op_counts(optimized.model)
        if record["after"] == record["before"]:
            return done("nothing fused")
        if _io(optimized.model) != io_before:
            return done("the optimizer changed the graph's inputs/outputs or their shapes; kept as exported")
        optimized.save_model_to_file(str(tmp))  # sorts the nodes, declares the com.microsoft opset
        del optimized
        if not feeds:
            return done("no sample feeds to check the fused graph against; kept as exported")
        score, note = _compare(path, tmp, feeds, atol, rtol)
        record["check"] = {"max_diff_over_allowed": round(score, 4) if np.isfinite(score) else "inf",
                           "atol": atol, "rtol": rtol, "detail": note}
        if not score <= 1.0:
            return done(f"fused graph differs from the exported one on the sample feeds ({note}); "
                        "kept as exported")
        tmp.replace(path)
        record["applied"] = True
        return done()
    except Exception as err:  # noqa: BLE001 - an optimiser failure keeps the exported graph
        return done(f"optimizer failed ({type(err).__name__}: {' '.join(str(err).split())[:200]}); "
                    "kept as exported")
    finally:
        tmp.unlink(missing_ok=True)


def _transposed_weight_reads(model: onnx.ModelProto) -> tuple[dict[int, tuple[Any, list[int] | None, list[Any]]],
                                                                 dict[str, list[onnx.NodeProto]]]:
    """The ``Transpose`` nodes of an initializer that only MatMuls read, as their second input (a tied LM
    head): ``{id(node): (initializer, perm, the MatMuls)}``, and every tensor's consumers."""
    inits = {i.name: i for i in model.graph.initializer}
    consumers: dict[str, list[onnx.NodeProto]] = collections.defaultdict(list)
    for node in model.graph.node:
        for name in node.input:
            consumers[name].append(node)
    graph_outputs = {o.name for o in model.graph.output}
    reads = {}
    for node in model.graph.node:
        if node.op_type != "Transpose" or node.input[0] not in inits or node.output[0] in graph_outputs:
            continue
        uses = consumers.get(node.output[0], [])
        if uses and all(u.op_type == "MatMul" and list(u.input).index(node.output[0]) == 1 for u in uses):
            perm = next((list(a.ints) for a in node.attribute if a.name == "perm"), None)
            reads[id(node)] = (inits[node.input[0]], perm, uses)
    return reads, consumers


def untie_transposed_weights(path: Path) -> int:
    """Give every MatMul that reads an initializer through a ``Transpose`` (a tied LM head) its own
    transposed initializer, in place, so the INT8 quantiser can quantise it; returns how many.

    Example:
        >>> untie_transposed_weights(Path("text_decoder.onnx"))   # doctest: +SKIP
        1
    """
    model = onnx.load(str(path))
    reads, _ = _transposed_weight_reads(model)
    keep, count = [], 0
    for node in model.graph.node:
        if id(node) in reads:
            weight, perm, _uses = reads[id(node)]
            array = numpy_helper.to_array(weight)
            array = np.ascontiguousarray(array.transpose(perm) if perm else array.T)
            model.graph.initializer.append(numpy_helper.from_array(array, node.output[0]))
            count += 1
        else:
            keep.append(node)
    if count:
        del model.graph.node[:]
        model.graph.node.extend(keep)
        onnx.save(model, str(path))
    return count


def _onnx_graphs(ctx: ExportContext) -> list[GraphSpec]:
    return [g for g in ctx.graphs if g.format == "onnx"]


def optimize_graphs(ctx: ExportContext, family: str | None) -> dict[str, Any]:
    """Fuse ``ctx``'s ONNX graphs in place per ``FUSIONS[family, role]`` and return the per-graph
    record (also written to ``ctx.notes["graph_optimization"]``). Call it on graphs that stay FP32;
    quantised graphs are recognised and left alone.

    Example:
        >>> notes = optimize_graphs(ctx, "blip")                           # doctest: +SKIP
        >>> notes["text_decoder"]["after"]["SkipLayerNormalization"]       # doctest: +SKIP
        36
    """
    atol, rtol = ctx.profile.tolerance_for("fp32")
    records: dict[str, Any] = {}
    for graph in _onnx_graphs(ctx):
        key = (family, graph.role)
        if family is None:
            records[graph.role] = {"applied": False, "reason": "the export context names no model family"}
            continue
        if key not in FUSIONS:
            records[graph.role] = {"applied": False, "reason": f"no row for {key} in edgevlp.export.optimize."
                                                              "FUSIONS; kept as exported"}
            continue
        fusions = FUSIONS[key]
        if isinstance(fusions, str):
            records[graph.role] = {"applied": False, "reason": fusions}
            continue
        with ctx.progress.stage("optimize", graph.role):
            records[graph.role] = fuse_graph(ctx.root / graph.file, fusions, ctx.sample_feeds.get(graph.role),
                                             atol=atol * CHECK_SHARE, rtol=rtol * CHECK_SHARE)
    ctx.notes.setdefault("graph_optimization", {}).update(records)
    return records


def untie_graphs(ctx: ExportContext) -> dict[str, int]:
    """:func:`untie_transposed_weights` on every ONNX graph of ``ctx`` (before INT8); notes the counts."""
    counts = {g.role: untie_transposed_weights(ctx.root / g.file) for g in _onnx_graphs(ctx)}
    ctx.notes.setdefault("graph_optimization", {})["untied_weights"] = counts
    return counts


#: suffix of the initializer that aliases a tied weight for its transposed use (see the module docstring)
ALIAS_SUFFIX = "::transposed_use"


def _fold_tied_transposes(model: onnx.ModelProto) -> dict[str, str]:
    """Turn ``MatMul(A, Transpose(W))`` on a 2-D initializer ``W`` into ``FusedMatMul(A, W', transB=1)``;
    ``W'`` is ``W`` itself when nothing else reads ``W``, else an alias to fill with ``W``'s bytes.
    Returns {alias: W}."""
    reads, consumers = _transposed_weight_reads(model)
    aliases: dict[str, str] = {}
    nodes, folded = [], 0
    for node in model.graph.node:
        weight, perm, uses = reads.get(id(node), (None, None, []))
        if weight is None or len(weight.dims) != 2 or perm not in (None, [1, 0]):
            nodes.append(node)
            continue
        shared = any(u is not node for u in consumers[weight.name])
        source = weight.name + ALIAS_SUFFIX if shared else weight.name
        if shared:
            aliases[source] = weight.name
        for use in uses:  # the Transpose itself is dropped
            use.op_type, use.domain = "FusedMatMul", "com.microsoft"
            use.input[1] = source
            use.attribute.append(onnx.helper.make_attribute("transB", 1))
        folded += 1
    if folded:
        del model.graph.node[:]
        model.graph.node.extend(nodes)
        if not any(o.domain == "com.microsoft" for o in model.opset_import):
            model.opset_import.append(onnx.helper.make_opsetid("com.microsoft", 1))
    return aliases


def store_weights_externally(path: Path) -> str:
    """Move ``path``'s initializers into ``<name>.data`` beside it (tied transposed weights folded into
    aliases of the same bytes, see the module docstring), in place; returns the data file's name.

    Example:
        >>> store_weights_externally(Path("bundle/text_decoder.onnx"))   # doctest: +SKIP
        'text_decoder.onnx.data'
    """
    from onnx.external_data_helper import convert_model_to_external_data

    model = onnx.load(str(path))
    aliases = _fold_tied_transposes(model)
    data = path.with_name(path.name + ".data")
    data.unlink(missing_ok=True)
    convert_model_to_external_data(model, all_tensors_to_one_file=True, location=data.name,
                                   size_threshold=1024)
    onnx.save_model(model, str(path))  # writes the data file, then the graph
    if aliases:  # the aliases point at their source's bytes: no second copy in the file
        model = onnx.load(str(path), load_external_data=False)
        by_name = {i.name: i for i in model.graph.initializer}
        for alias, source in aliases.items():
            tensor = onnx.TensorProto()
            tensor.CopyFrom(by_name[source])
            tensor.name = alias
            model.graph.initializer.append(tensor)
        onnx.save_model(model, str(path))
    if data.exists():
        data.chmod(path.stat().st_mode & 0o777)  # onnx writes it 0600; the bundle's files are alike
    return data.name if data.exists() else ""


def externalize_graphs(ctx: ExportContext) -> dict[str, str]:
    """:func:`store_weights_externally` on every ONNX graph of ``ctx``; the data files become the
    graphs' ``extra_files`` (hashed and verified with the bundle)."""
    import dataclasses

    stored = {}
    for graph in _onnx_graphs(ctx):
        name = store_weights_externally(ctx.root / graph.file)
        if name:
            ctx.replace_graph(graph, dataclasses.replace(graph, extra_files=(name,)))
            stored[graph.role] = name
    ctx.notes["external_weights"] = stored
    return stored
