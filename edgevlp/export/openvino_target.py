"""``--target openvino``: OpenVINO IR (.xml/.bin) via ``openvino.convert_model``; FP32/FP16, INT8
weight-only through NNCF (labelled so) until calibrated INT8 arrives from ``edgevlp compress``."""

from __future__ import annotations

import dataclasses

from edgevlp._telemetry import openvino_telemetry_off
from edgevlp.errors import BackendUnavailableError
from edgevlp.export.context import ExportContext

__all__ = ["write"]


def write(ctx: ExportContext) -> None:
    try:
        import openvino as ov
    except ImportError:
        raise BackendUnavailableError("--target openvino needs the openvino package "
                                      "(pip install 'edgevlp[openvino]')") from None
    weight_only = ctx.precision == "int8" and not ctx.prequantized
    with openvino_telemetry_off(nncf=weight_only):
        for graph in list(ctx.graphs):
            if graph.format == "openvino":  # already IR (quantised by `edgevlp compress`)
                continue
            onnx_path = ctx.root / graph.file
            model = ov.convert_model(str(onnx_path))
            if weight_only:
                import nncf

                model = nncf.compress_weights(model, mode=nncf.CompressWeightsMode.INT8_ASYM)
            xml = onnx_path.with_suffix(".xml")
            ov.save_model(model, str(xml), compress_to_fp16=ctx.precision == "fp16")
            onnx_path.unlink()
            ctx.replace_graph(graph, dataclasses.replace(
                graph, file=xml.name, extra_files=(xml.with_suffix(".bin").name,), format="openvino"))
    if weight_only:
        ctx.notes["quantization"] = {"method": "nncf weight-only int8 (INT8_ASYM)",
                                     "detail": "weights int8, activations fp32; no calibration"}
    ctx.notes["openvino"] = {"version": ov.__version__, "device": ctx.profile.openvino_device}
