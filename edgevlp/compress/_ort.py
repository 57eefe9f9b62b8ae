"""onnxruntime backend: static INT8 QDQ, dynamic INT8 and weight-only INT8 (``MatMulNBits``, 8 bits).

Static quantisation calibrates once per graph and caches the tensor ranges
(``calibration_cache_path``), so the fallback's many re-quantisations with different excluded nodes
cost no further calibration.
"""

from __future__ import annotations

import contextlib
import io
import logging
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import onnx

from edgevlp.compress.recipe import QuantConfig

__all__ = ["OnnxRuntimeBackend"]

Feeds = list[dict[str, np.ndarray]]


@contextmanager
def _quiet() -> Iterator[None]:
    """onnxruntime.quantization logs advice on the root logger at WARNING; keep it for errors only."""
    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.ERROR)
    try:
        yield
    finally:
        root.setLevel(level)


def _strip_metadata(path: Path) -> None:
    """Drop the exporter's per-node metadata (source scopes, stack traces): it is most of a small
    graph's file size and nothing reads it after quantisation."""
    model = onnx.load(str(path))
    for node in model.graph.node:
        del node.metadata_props[:]
        node.doc_string = ""
    onnx.save(model, str(path))


def _METHODS() -> dict[str, Any]:
    from onnxruntime.quantization import CalibrationMethod

    return {"minmax": CalibrationMethod.MinMax, "entropy": CalibrationMethod.Entropy,
            "percentile": CalibrationMethod.Percentile}


class _Reader:
    """A calibration reader over a list of feeds."""

    def __init__(self, feeds: Feeds) -> None:
        self._it = iter(feeds)

    def get_next(self) -> dict[str, np.ndarray] | None:
        return next(self._it, None)


def _calibrate(src: Path, cfg: QuantConfig, calib: Feeds, cache: Path, skip: frozenset[str]) -> None:
    """Tensor ranges of ``src`` on ``calib``, saved as onnxruntime's calibration cache.

    Feeds are collected one at a time (bounded memory; the decoder's feeds differ in shape from step to
    step, which onnxruntime's batched histogram collection refuses), except the feeds holding empty
    tensors (the decoder's first step, an empty KV cache): onnxruntime's histogram merge fails on an
    empty array, so they go first, together, while the histograms are created.
    """
    import tempfile

    from onnxruntime.quantization import create_calibrator
    from onnxruntime.quantization.calibrate import save_tensors_data

    if not calib:
        raise ValueError(f"no calibration samples for {src.name}")
    with tempfile.TemporaryDirectory(prefix="edgevlp-calib-") as tmp:
        calibrator = create_calibrator(src, None, augmented_model_path=str(Path(tmp) / "augmented.onnx"),
                                       calibrate_method=_METHODS()[cfg.calibration.method],
                                       extra_options={"percentile": cfg.calibration.percentile})
        if getattr(calibrator, "tensors_to_calibrate", None):  # histogram methods fail on +-inf masks;
            calibrator.tensors_to_calibrate -= skip  # MinMax records an unused inf range (nodes stay FP32)
        empty = [f for f in calib if any(v.size == 0 for v in f.values())]
        rest = [f for f in calib if not any(v.size == 0 for v in f.values())]
        with contextlib.redirect_stdout(io.StringIO()):  # the histogram calibrators print per call
            if empty:
                calibrator.collect_data(_Reader(empty))
            for feed in rest:
                calibrator.collect_data(_Reader([feed]))
            ranges = calibrator.compute_data()
        del calibrator
    save_tensors_data(ranges, cache)


class OnnxRuntimeBackend:
    """Quantises ONNX graphs with ``onnxruntime.quantization`` and runs them with onnxruntime (CPU)."""

    name = "onnxruntime"
    suffix = ".int8.onnx"

    def quantize(self, role: str, src: Path, dst: Path, cfg: QuantConfig, calib: Feeds,
                 exclude: set[str], cache: Path, nonfinite: frozenset[str] = frozenset()) -> dict[str, Any]:
        """Write the quantised ``src`` to ``dst``; ``exclude``: node names kept in FP32; ``nonfinite``:
        tensors holding inf/nan in FP32 (attention masks), left out of calibration."""
        self._nonfinite = nonfinite
        method = {"ptq_static": self._static, "ptq_dynamic": self._dynamic,
                  "weight_only": self._weight_only}[cfg.method]
        with _quiet():
            details = method(src, dst, cfg, calib, sorted(exclude), cache)
        _strip_metadata(dst)
        return details

    # ------------------------------------------------------------------------------ methods
    def _static(self, src: Path, dst: Path, cfg: QuantConfig, calib: Feeds, exclude: list[str],
                cache: Path) -> dict[str, Any]:
        from onnxruntime.quantization import QuantFormat, QuantType, quantize_static

        if not cache.is_file():
            _calibrate(src, cfg, calib, cache, self._nonfinite)
        act = QuantType.QInt8 if cfg.activations.symmetric else QuantType.QUInt8
        extra = {"ActivationSymmetric": cfg.activations.symmetric, "WeightSymmetric": cfg.weights.symmetric}
        quantize_static(str(src), str(dst), None, quant_format=QuantFormat.QDQ,
                        per_channel=cfg.weights.per_channel, activation_type=act, weight_type=QuantType.QInt8,
                        nodes_to_exclude=exclude, calibrate_method=_METHODS()[cfg.calibration.method],
                        extra_options=extra, calibration_cache_path=str(cache))
        return {"format": "QDQ", "activations": act.name, "weights": "QInt8",
                "calibration": cfg.calibration.method, "calibration_samples": len(calib)}

    def _dynamic(self, src: Path, dst: Path, cfg: QuantConfig, calib: Feeds, exclude: list[str],
                 cache: Path) -> dict[str, Any]:
        from onnxruntime.quantization import QuantType, quantize_dynamic

        quantize_dynamic(str(src), str(dst), weight_type=QuantType.QInt8, per_channel=cfg.weights.per_channel,
                         nodes_to_exclude=exclude, extra_options={"WeightSymmetric": cfg.weights.symmetric})
        return {"format": "dynamic (MatMulInteger / ConvInteger, activations quantised at run time)",
                "weights": "QInt8"}

    def _weight_only(self, src: Path, dst: Path, cfg: QuantConfig, calib: Feeds, exclude: list[str],
                     cache: Path) -> dict[str, Any]:
        from onnxruntime.quantization import QuantFormat
        from onnxruntime.quantization.matmul_nbits_quantizer import (DefaultWeightOnlyQuantConfig,
                                                                     MatMulNBitsQuantizer)

        block = 32  # blockwise only (QuantConfig refuses per_channel for weight_only on onnxruntime)
        algo = DefaultWeightOnlyQuantConfig(block_size=block, is_symmetric=cfg.weights.symmetric,
                                            quant_format=QuantFormat.QOperator, op_types_to_quantize=("MatMul",),
                                            bits=8)
        quant = MatMulNBitsQuantizer(onnx.load(str(src)), nodes_to_exclude=exclude, algo_config=algo)
        quant.process()
        quant.model.save_model_to_file(str(dst), use_external_data_format=False)
        return {"format": "MatMulNBits (com.microsoft), 8-bit weights, activations fp32",
                "weights": f"int8, one scale per block of {block} weights"}

    # ------------------------------------------------------------------------------ running
    def runner(self, path: Path, threads: int = 0) -> Callable[[dict[str, np.ndarray]], list[np.ndarray]]:
        import onnxruntime as ort

        opts = ort.SessionOptions()
        opts.log_severity_level = 3
        if threads:
            opts.intra_op_num_threads = threads
        sess = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
        return lambda feed: sess.run(None, feed)

    @staticmethod
    def output_names(path: Path) -> list[str]:
        return [o.name for o in onnx.load(str(path), load_external_data=False).graph.output]
