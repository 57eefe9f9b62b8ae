"""``--target cpu``: ONNX graphs for onnxruntime; graphs that stay FP32 get onnxruntime's transformer
fusions, INT8 is onnxruntime dynamic quantisation (after untying transposed weights); every graph's weights are
stored beside it (``X.onnx.data``), tied ones once; the decoder step's per-image work moves into the
graph that makes its context (:mod:`edgevlp.export.hoist`); INT8 graphs get the rewrites of
:mod:`edgevlp.export.qdq_passes`; see :mod:`edgevlp.export.optimize` for
what each pays."""

from __future__ import annotations

from edgevlp.errors import InputError
from edgevlp.export.context import ExportContext
from edgevlp.export.hoist import hoist_graphs
from edgevlp.export.optimize import externalize_graphs, optimize_graphs, untie_graphs
from edgevlp.export.qdq_passes import optimize_quantised_graphs

__all__ = ["write"]


def write(ctx: ExportContext) -> None:
    if ctx.precision == "fp16":
        raise InputError("--precision fp16 is not offered for --target cpu: onnxruntime's CPU kernels "
                         "run fp16 slower than fp32; use fp32, int8, or --target openvino/jetson for fp16")
    if ctx.precision == "int8" and not ctx.prequantized:
        from onnxruntime.quantization import QuantType, quantize_dynamic

        # Fused graphs quantise worse than the exported ones (see optimize.py): untie only.
        untie_graphs(ctx)
        for graph in ctx.graphs:
            src = ctx.root / graph.file
            tmp = src.with_suffix(".int8.onnx")
            quantize_dynamic(str(src), str(tmp), weight_type=QuantType.QInt8)
            tmp.replace(src)
        ctx.notes["quantization"] = {
            "method": "onnxruntime dynamic int8",
            "detail": "weights int8 (per-tensor), activations quantised at run time; no calibration. "
                      "For calibrated static INT8 use `edgevlp compress` first.",
        }
    else:  # FP32 graphs (and the FP32 graphs of an `edgevlp compress` output; its QDQ graphs are skipped)
        optimize_graphs(ctx, ctx.family)
    if ctx.precision in ("int8", "int4"):  # INT8 graphs: attention scales into the dequantisation, one-op GELU
        optimize_quantised_graphs(ctx)
    hoist_graphs(ctx)
    externalize_graphs(ctx)
