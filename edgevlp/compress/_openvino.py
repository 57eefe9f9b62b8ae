"""OpenVINO backend: NNCF INT8 on IR converted from the FP32 ONNX (``.int8.xml`` + ``.bin``).

``ptq_static``: ``nncf.quantize(model_type=TRANSFORMER)`` with the calibration feeds (MinMax or quantile
range estimators); ``weight_only``: ``nncf.compress_weights`` (INT8_SYM / INT8_ASYM, or INT4 in groups with ``bits = 4``). Nodes the recipe
or the fallback keeps in FP32 are passed as an ``IgnoredScope`` of the OpenVINO operations that produce
the ONNX nodes' output tensors (best effort: ``validate=False``, since conversion may fuse some of them).

NNCF collects its statistics inside ``nncf.quantize`` (it has no API taking precomputed ranges), so
:meth:`OpenVINOBackend.calibrate` returns ``None`` and every fallback candidate is quantised (and
calibrated) again; the candidates are ordered by measuring each group alone (no attribution pass).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import onnx

from edgevlp._telemetry import openvino_telemetry_off
from edgevlp.compress.recipe import QuantConfig
from edgevlp.errors import BackendUnavailableError

__all__ = ["OpenVINOBackend"]


class OpenVINOBackend:
    """Quantises with NNCF and runs with the OpenVINO CPU plugin."""

    name = "openvino"
    suffix = ".int8.xml"

    def __init__(self) -> None:
        try:
            import nncf  # noqa: F401
            import openvino  # noqa: F401
        except ImportError:
            raise BackendUnavailableError("backend 'openvino' needs openvino and nncf "
                                          "(pip install 'edgevlp[openvino,compress]')") from None

    def calibrate(self, role: str, src: Path, cfg: QuantConfig, calib: list[dict[str, np.ndarray]],
                  progress: Callable[[int], None] | None = None) -> None:
        """NNCF calibrates inside :meth:`quantize`; the feeds are kept for it."""
        self._calib = calib

    def probe(self, src: Path, cfg: QuantConfig, feeds: list[dict[str, np.ndarray]]) -> frozenset[str]:
        from edgevlp.compress._ort import OnnxRuntimeBackend

        return OnnxRuntimeBackend().probe(src, cfg, feeds)

    def derive(self, scheme: str, base: Path, src: Path, exclude: set[str]) -> None:
        return None  # IR candidates are quantised again

    def attribute(self, src: Path, quantized: Path, groups: dict[str, list[str]],
                  feeds: list[dict[str, np.ndarray]]) -> None:
        return None  # no tensor-name mapping from IR back to ONNX: order by solo sensitivity

    def quantize(self, role: str, src: Path, dst: Path, cfg: QuantConfig, scheme: str, exclude: set[str],
                 ranges: None, work: Path) -> dict[str, Any]:
        with openvino_telemetry_off(nncf=True):
            return self._quantize(src, dst, cfg, scheme, exclude)

    def _quantize(self, src: Path, dst: Path, cfg: QuantConfig, scheme: str, exclude: set[str]) -> dict[str, Any]:
        import nncf
        import openvino as ov

        model = ov.convert_model(str(src))
        outputs = {n.name: n.output[0] for n in onnx.load(str(src), load_external_data=False).graph.node
                   if n.output}
        # OpenVINO keeps the ONNX tensor names on its ops' outputs, not the node names: find the op
        # producing each excluded node's output (its friendly name is what IgnoredScope matches)
        producer = {name: op.get_friendly_name() for op in model.get_ops() for out in op.outputs()
                    for name in out.get_names()}
        ignored = nncf.IgnoredScope(names=sorted({producer.get(outputs[n], outputs[n]) for n in exclude
                                                  if n in outputs}), validate=False)
        calib = getattr(self, "_calib", None)
        if scheme == "weight_only":
            w = cfg.weights
            kind = f"INT{w.bits}_{'SYM' if w.symmetric else 'ASYM'}"
            mode = getattr(nncf.CompressWeightsMode, kind)
            extra = {"group_size": w.block_size, "ratio": 1.0} if w.bits == 4 else {}  # 4-bit: every layer, groups
            model = nncf.compress_weights(model, mode=mode, ignored_scope=ignored, **extra)
            details = {"format": f"OpenVINO IR, nncf.compress_weights {mode.name}"
                                 + (f", groups of {w.block_size}" if w.bits == 4 else ""),
                       "weights": f"int{w.bits}", "bits": w.bits}
        elif scheme == "ptq_static":
            if not calib:
                raise ValueError("static INT8 needs calibration feeds: call calibrate() first")
            from nncf.quantization.advanced_parameters import AdvancedQuantizationParameters
            from nncf.quantization.range_estimator import RangeEstimatorParametersSet

            ranges = RangeEstimatorParametersSet.MINMAX if cfg.calibration.method == "minmax" \
                else RangeEstimatorParametersSet.MEAN_QUANTILE  # quantile ranges (NNCF's percentile)
            preset = nncf.QuantizationPreset.PERFORMANCE if cfg.activations.symmetric \
                else nncf.QuantizationPreset.MIXED
            model = nncf.quantize(model, nncf.Dataset(calib), subset_size=len(calib), preset=preset,
                                  model_type=nncf.ModelType.TRANSFORMER, ignored_scope=ignored,
                                  advanced_parameters=AdvancedQuantizationParameters(
                                      activations_range_estimator_params=ranges))
            details = {"format": "OpenVINO IR, nncf.quantize (FakeQuantize, ModelType.TRANSFORMER)",
                       "preset": preset.name, "calibration": cfg.calibration.method,
                       "calibration_samples": len(calib)}
        else:
            raise ValueError(f"scheme {scheme!r} is not offered by the openvino backend")
        ov.save_model(model, str(dst), compress_to_fp16=False)
        return details

    def runner(self, path: Path | bytes, threads: int = 0) -> Callable[[dict[str, np.ndarray]], list[np.ndarray]]:
        import openvino as ov

        # f32: without the hint, CPUs with bf16 units (AVX512_BF16, AMX) run the FP32 reference in bf16, and
        # the scores would measure bf16 rounding (the runtime sets the same hint for FP32 and INT8 bundles)
        config: dict[str, Any] = {"INFERENCE_PRECISION_HINT": "f32"}
        if threads:
            config["INFERENCE_NUM_THREADS"] = threads
        compiled = ov.Core().compile_model(str(path), "CPU", config)
        request = compiled.create_infer_request()

        def run(feed: dict[str, np.ndarray]) -> list[np.ndarray]:
            result = request.infer(feed)
            return [np.array(result[o]) for o in compiled.outputs]

        return run

    @staticmethod
    def output_names(path: Path) -> list[str]:
        return [o.name for o in onnx.load(str(path), load_external_data=False).graph.output]

    @staticmethod
    def integer_ops(path: Path) -> list[str]:
        """What carries INT8 in the IR at ``path``: ``FakeQuantize`` (static) and ``int8 weights`` (i8/u8
        constants, weight-only); none: every layer was kept in FP32."""
        import openvino as ov

        found = set()
        for op in ov.Core().read_model(str(path)).get_ops():
            if op.get_type_name() == "FakeQuantize":
                found.add("FakeQuantize")
            elif op.get_type_name() == "Constant" and op.get_output_element_type(0).get_type_name() in ("i8", "u8"):
                found.add("int8 weights")
        return sorted(found)
