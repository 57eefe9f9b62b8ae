"""onnxruntime backend: static INT8 QDQ, dynamic INT8 and weight-only INT8 (``MatMulNBits``, 8 bits).

Static quantisation calibrates each graph once (:meth:`OnnxRuntimeBackend.calibrate`, one pass of
:func:`edgevlp.compress._ranges.collect_ranges`; ``entropy``: onnxruntime's histogram calibrator) and
hands the ranges to ``quantize_static`` as its calibration cache (``calibration_cache_path``, a
``TensorsData`` JSON), so no later call calibrates again. Fallback candidates are not re-quantised at
all: :meth:`~OnnxRuntimeBackend.derive` takes the all-INT8 QDQ graph and gives the candidate's FP32
nodes back their FP32 inputs (the QDQ pairs that only they read fall away), which is what
``quantize_static(nodes_to_exclude=...)`` writes, at a fraction of its cost (~15 s per call on a
ViT-B).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import onnx

from edgevlp.compress._ranges import Ranges, activation_tensors, collect_ranges
from edgevlp.compress.recipe import QuantConfig

#: op types that carry INT8 in an onnxruntime graph (QDQ, dynamic, MatMulNBits weight-only).
INTEGER_OPS = frozenset({"QuantizeLinear", "DequantizeLinear", "MatMulInteger", "ConvInteger", "DynamicQuantizeLinear",
                         "MatMulNBits", "QLinearMatMul", "QLinearConv"})

__all__ = ["OnnxRuntimeBackend", "strip_qdq"]

Feeds = list[dict[str, np.ndarray]]
Source = Path | bytes
#: MatMul/Gemm/Conv read their inputs quantised but write FP32; other QDQ ops also quantise outputs.
_INPUT_ONLY = frozenset({"MatMul", "Gemm", "Conv", "ConvTranspose"})


@contextmanager
def _quiet() -> Iterator[None]:
    """onnxruntime.quantization logs advice on the root logger at WARNING/INFO; keep errors only."""
    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.ERROR)
    try:
        yield
    finally:
        root.setLevel(level)


def _strip_metadata(model: onnx.ModelProto) -> onnx.ModelProto:
    """Drop the exporter's per-node metadata (source scopes, stack traces): it is most of a small
    graph's file size and nothing reads it after quantisation."""
    for node in model.graph.node:
        del node.metadata_props[:]
        node.doc_string = ""
    return model


def _METHODS() -> dict[str, Any]:
    from onnxruntime.quantization import CalibrationMethod

    return {"minmax": CalibrationMethod.MinMax, "entropy": CalibrationMethod.Entropy,
            "percentile": CalibrationMethod.Percentile}


def _calibration_tensors(model: onnx.ModelProto, op_types: tuple[str, ...]) -> list[str]:
    """Tensors static INT8 of ``op_types`` needs ranges for: the inputs, and the outputs of the ops
    that quantise theirs."""
    tensors = activation_tensors(model, op_types)
    quantised_out = set(op_types) - _INPUT_ONLY
    if quantised_out:
        known = set(tensors)
        tensors += [o for n in model.graph.node if n.op_type in quantised_out for o in n.output
                    if o and o not in known]
    return tensors


def _entropy_ranges(src: Path, cfg: QuantConfig, calib: Feeds, skip: frozenset[str]) -> Ranges:
    """Entropy ranges from onnxruntime's histogram calibrator (restricted to ``cfg.op_types``)."""
    import contextlib
    import io
    import tempfile
    import time

    from onnxruntime.quantization import create_calibrator

    class Reader:
        def __init__(self, feeds: Feeds) -> None:
            self._it = iter(feeds)

        def get_next(self) -> dict[str, np.ndarray] | None:
            return next(self._it, None)

    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="edgevlp-calib-") as tmp:
        calibrator = create_calibrator(src, list(cfg.op_types), augmented_model_path=str(Path(tmp) / "aug.onnx"),
                                       calibrate_method=_METHODS()["entropy"])
        calibrator.tensors_to_calibrate -= skip  # histograms fail on +-inf masks
        empty = [f for f in calib if any(v.size == 0 for v in f.values())]
        rest = [f for f in calib if not any(v.size == 0 for v in f.values())]
        with contextlib.redirect_stdout(io.StringIO()):  # the histogram calibrators print per call
            if empty:  # onnxruntime's histogram merge fails on empty arrays: those feeds go first
                calibrator.collect_data(Reader(empty))
            for feed in rest:
                calibrator.collect_data(Reader([feed]))
            data = calibrator.compute_data()
    low = {k: float(v.range_value[0]) for k, v in data.items()}
    high = {k: float(v.range_value[1]) for k, v in data.items()}
    return Ranges("entropy", low, high, samples=len(calib), seconds=time.perf_counter() - t0,
                  notes={"tensors": len(low), "how": "onnxruntime EntropyCalibrater (histograms in numpy)"})


def _save_cache(ranges: Ranges, path: Path) -> None:
    from onnxruntime.quantization.calibrate import TensorData, TensorsData, save_tensors_data

    data = {k: TensorData(lowest=np.float32(lo), highest=np.float32(hi)) for k, (lo, hi) in ranges.finite().items()}
    save_tensors_data(TensorsData(_METHODS()[ranges.method], data), path)


def strip_qdq(qdq: onnx.ModelProto, src: onnx.ModelProto, nodes: set[str]) -> onnx.ModelProto | None:
    """``qdq`` with the nodes named in ``nodes`` reading their FP32 inputs again (as in ``src``), the
    Q/DQ nodes and int8 weights no one reads any more removed. ``None`` when a node cannot be mapped
    back (renamed or fused by the quantiser): re-quantise instead.

    Example:
        >>> from onnx import helper as h
        >>> g = h.make_graph([h.make_node("Relu", ["x"], ["y"], name="r")], "g",
        ...     [h.make_tensor_value_info("x", 1, [1])], [h.make_tensor_value_info("y", 1, [1])])
        >>> [n.name for n in strip_qdq(h.make_model(g), h.make_model(g), {"r"}).graph.node]
        ['r']
    """
    out = onnx.ModelProto()
    out.CopyFrom(qdq)
    g = out.graph
    if any(a.type in (onnx.AttributeProto.GRAPH, onnx.AttributeProto.GRAPHS) for n in g.node for a in n.attribute):
        return None
    originals = {n.name: n for n in src.graph.node if n.name}
    src_inits = {i.name: i for i in src.graph.initializer}
    known = {o for n in g.node for o in n.output} | {i.name for i in g.input} | {i.name for i in g.initializer}
    for node in g.node:
        if node.name not in nodes:
            continue
        orig = originals.get(node.name)
        if orig is None or orig.op_type != node.op_type or len(orig.input) != len(node.input):
            return None
        for name in orig.input:
            if name and name not in known:
                if name not in src_inits:
                    return None
                g.initializer.append(src_inits[name])
                known.add(name)
        node.input[:] = orig.input
    live = {o.name for o in g.output}
    keep = []
    for node in reversed(g.node):
        if any(o in live for o in node.output):
            keep.append(node)
            live.update(i for i in node.input if i)
    del g.node[:]
    g.node.extend(reversed(keep))
    used = [i for i in g.initializer if i.name in live]
    del g.initializer[:]
    g.initializer.extend(used)
    return out


def _session(source: Source, threads: int = 0) -> Any:
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    if threads:
        opts.intra_op_num_threads = threads
    return ort.InferenceSession(str(source) if isinstance(source, Path) else source, opts,
                                providers=["CPUExecutionProvider"])


def _noise(ref: list[np.ndarray], got: list[np.ndarray]) -> float:
    """Relative noise energy ||got - ref||^2 / ||ref||^2 over all feeds."""
    num = sum(float(np.square(g.astype(np.float64) - r).sum()) for r, g in zip(ref, got))
    den = sum(float(np.square(r.astype(np.float64)).sum()) for r in ref)
    return num / den if den > 0 else 0.0


class OnnxRuntimeBackend:
    """Quantises ONNX graphs with ``onnxruntime.quantization`` and runs them with onnxruntime (CPU)."""

    name = "onnxruntime"
    suffix = ".int8.onnx"
    orders_by_attribution = True

    # ------------------------------------------------------------------------------ calibration
    def calibrate(self, role: str, src: Path, cfg: QuantConfig, calib: Feeds,
                  progress: Callable[[int], None] | None = None) -> Ranges:
        """The activation ranges of ``src`` on ``calib``, collected once (one pass over the feeds)."""
        tensors = _calibration_tensors(onnx.load(str(src), load_external_data=False), cfg.op_types)
        if cfg.calibration.method == "entropy":
            probe = self.probe(src, cfg, calib)
            ranges = _entropy_ranges(src, cfg, calib, probe)
            ranges.nonfinite = probe
            return ranges
        return collect_ranges(src, calib, tensors, method=cfg.calibration.method,
                              percentile=cfg.calibration.percentile, progress=progress)

    def probe(self, src: Path, cfg: QuantConfig, feeds: Feeds) -> frozenset[str]:
        """Tensors the quantised ops would read that hold inf/NaN on a few of ``feeds`` (additive
        -inf attention masks): their readers stay FP32 (dynamic INT8 of -inf is garbage)."""
        tensors = _calibration_tensors(onnx.load(str(src), load_external_data=False), cfg.op_types)
        few = feeds[:2] + feeds[-2:] if len(feeds) > 4 else feeds
        return collect_ranges(src, few, tensors, method="minmax").nonfinite

    # ------------------------------------------------------------------------------ quantisation
    def quantize(self, role: str, src: Path, dst: Path, cfg: QuantConfig, scheme: str, exclude: set[str],
                 ranges: Ranges | None, work: Path) -> dict[str, Any]:
        """Write ``src`` quantised with ``scheme`` to ``dst``, the nodes in ``exclude`` kept FP32."""
        method = {"ptq_static": self._static, "ptq_dynamic": self._dynamic,
                  "weight_only": self._weight_only}[scheme]
        with _quiet():
            details = method(src, dst, cfg, sorted(exclude), ranges, work)
        onnx.save(_strip_metadata(onnx.load(str(dst))), str(dst))
        return details

    def _static(self, src: Path, dst: Path, cfg: QuantConfig, exclude: list[str], ranges: Ranges | None,
                work: Path) -> dict[str, Any]:
        from onnxruntime.quantization import QuantFormat, QuantType, quantize_static

        if ranges is None:
            raise ValueError("static INT8 needs the graph's ranges: call calibrate() first")
        cache = work / f"{dst.name}.ranges.json"
        _save_cache(ranges, cache)
        act = QuantType.QInt8 if cfg.activations.symmetric else QuantType.QUInt8
        extra = {"ActivationSymmetric": cfg.activations.symmetric, "WeightSymmetric": cfg.weights.symmetric,
                 # matrix products read INT8 and write FP32 (as accurate, no slower on CPU than an INT8 output)
                 "OpTypesToExcludeOutputQuantization": sorted(set(cfg.op_types) & _INPUT_ONLY)}
        quantize_static(str(src), str(dst), None, quant_format=QuantFormat.QDQ, op_types_to_quantize=list(cfg.op_types),
                        per_channel=cfg.weights.per_channel, activation_type=act, weight_type=QuantType.QInt8,
                        nodes_to_exclude=exclude, calibrate_method=_METHODS()[ranges.method],
                        extra_options=extra, calibration_cache_path=str(cache))
        return {"format": "QDQ", "activations": act.name, "weights": "QInt8", "op_types": list(cfg.op_types),
                "calibration": ranges.method, "calibration_samples": ranges.samples}

    def _dynamic(self, src: Path, dst: Path, cfg: QuantConfig, exclude: list[str], ranges: Ranges | None,
                 work: Path) -> dict[str, Any]:
        from onnxruntime.quantization import QuantType, quantize_dynamic

        quantize_dynamic(str(src), str(dst), weight_type=QuantType.QInt8, per_channel=cfg.weights.per_channel,
                         op_types_to_quantize=list(cfg.op_types), nodes_to_exclude=exclude,
                         extra_options={"WeightSymmetric": cfg.weights.symmetric})
        return {"format": "dynamic (MatMulInteger / ConvInteger, activations quantised at run time)",
                "weights": "QInt8", "op_types": list(cfg.op_types)}

    def _weight_only(self, src: Path, dst: Path, cfg: QuantConfig, exclude: list[str], ranges: Ranges | None,
                     work: Path) -> dict[str, Any]:
        from onnxruntime.quantization import QuantFormat
        from onnxruntime.quantization.matmul_nbits_quantizer import (DefaultWeightOnlyQuantConfig,
                                                                     MatMulNBitsQuantizer)

        w = cfg.weights  # blockwise only (QuantConfig refuses per_channel for weight_only on onnxruntime)
        block, bits, level = w.block_size, w.bits, w.accuracy_level
        # accuracy_level 4 (the default): int8 compute (MLAS); without it 8-bit MatMulNBits took a reference
        # path here, 12x slower than FP32 on a BLIP-base decoder step (20.9 ms with it, FP32 35 ms; AVX-512 VNNI)
        algo = DefaultWeightOnlyQuantConfig(block_size=block, is_symmetric=w.symmetric,
                                            quant_format=QuantFormat.QOperator, op_types_to_quantize=("MatMul",),
                                            bits=bits, accuracy_level=level)
        quant = MatMulNBitsQuantizer(onnx.load(str(src)), nodes_to_exclude=exclude, algo_config=algo)
        quant.process()
        quant.model.save_model_to_file(str(dst), use_external_data_format=False)
        return {"format": f"MatMulNBits (com.microsoft), {bits}-bit weights, accuracy_level {level}",
                "weights": f"int{bits}, one scale per block of {block} weights", "bits": bits}

    def derive(self, scheme: str, base: Path, src: Path, exclude: set[str]) -> bytes | None:
        """The graph ``base`` (all INT8, ``scheme``) with the nodes in ``exclude`` back in FP32, without
        re-quantising (static QDQ only; ``None``: re-quantise)."""
        if scheme != "ptq_static":
            return None
        model = strip_qdq(onnx.load(str(base)), onnx.load(str(src)), exclude)
        return None if model is None else model.SerializeToString()

    # ------------------------------------------------------------------------------ fallback order
    def attribute(self, src: Path, quantized: Path, groups: dict[str, list[str]], feeds: Feeds) -> dict[str, float]:
        """How much quantisation noise each layer group adds: the relative noise energy at the group's
        outputs minus the largest at its inputs (INT8 vs FP32 on ``feeds``, one run of each graph)."""
        model = onnx.load(str(src), load_external_data=False)
        inits = {i.name for i in model.graph.initializer}
        producer = {o: n.name for n in model.graph.node for o in n.output}
        consumers: dict[str, set[str]] = {}
        for n in model.graph.node:
            for i in n.input:
                consumers.setdefault(i, set()).add(n.name)
        graph_out = {o.name for o in model.graph.output}
        floats = set(activation_tensors(model, {n.op_type for n in model.graph.node})) | graph_out
        bounds: dict[str, tuple[list[str], list[str]]] = {}
        for g, names in groups.items():
            members = set(names)
            nodes = [n for n in model.graph.node if n.name in members]
            ins = {i for n in nodes for i in n.input if i and i not in inits and producer.get(i) not in members}
            outs = {o for n in nodes for o in n.output
                    if o and (o in graph_out or consumers.get(o, set()) - members)}
            bounds[g] = (sorted(ins & floats), sorted(outs & floats))
        tensors = sorted({t for ins, outs in bounds.values() for t in (*ins, *outs)})

        def run(path: Path) -> dict[str, list[np.ndarray]]:
            m = onnx.load(str(path))
            have = {o for n in m.graph.node for o in n.output} | {i.name for i in m.graph.input}
            extra = [t for t in tensors if t in have and t not in {o.name for o in m.graph.output}]
            m.graph.output.extend(onnx.ValueInfoProto(name=t) for t in extra)
            sess = _session(m.SerializeToString())
            names = [o.name for o in sess.get_outputs()]
            got: dict[str, list[np.ndarray]] = {t: [] for t in names}
            for feed in feeds:
                for t, v in zip(names, sess.run(None, feed)):
                    got[t].append(np.asarray(v))
            return got

        ref, got = run(src), run(quantized)
        noise = {t: _noise(ref[t], got[t]) for t in tensors if t in ref and t in got}
        return {g: max((noise.get(t, 0.0) for t in outs), default=0.0) - max((noise.get(t, 0.0) for t in ins),
                                                                             default=0.0)
                for g, (ins, outs) in bounds.items()}

    # ------------------------------------------------------------------------------ running
    def runner(self, source: Source, threads: int = 0) -> Callable[[dict[str, np.ndarray]], list[np.ndarray]]:
        """``feed -> outputs`` for a graph file or serialised graph."""
        sess = _session(source, threads)
        return lambda feed: sess.run(None, feed)

    @staticmethod
    def output_names(path: Path) -> list[str]:
        return [o.name for o in onnx.load(str(path), load_external_data=False).graph.output]

    @staticmethod
    def integer_ops(path: Path) -> list[str]:
        """The INT8 op types in the graph at ``path``; none when no compute layer runs in INT8 (every layer
        kept in FP32: Q/DQ pairs left on other tensors do not make it an INT8 graph)."""
        from edgevlp.compress.fallback import COMPUTE_OPS

        nodes = onnx.load(str(path), load_external_data=False).graph.node
        dequantized = {n.output[0] for n in nodes if n.op_type == "DequantizeLinear"}
        computes_int8 = any(n.op_type in COMPUTE_OPS and dequantized & set(n.input) for n in nodes) or any(
            n.op_type in INTEGER_OPS - {"QuantizeLinear", "DequantizeLinear"} for n in nodes)
        return sorted({n.op_type for n in nodes} & INTEGER_OPS) if computes_int8 else []
