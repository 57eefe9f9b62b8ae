"""OpenVINO: IR (or ONNX) graphs on CPU / GPU / NPU; FP32 bundles run with an f32 precision hint."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import numpy as np

from edgevlp.bundle import GraphSpec
from edgevlp.runtime.backends import Backend, GraphSession

__all__ = ["OpenVINOBackend"]


class _OvSession(GraphSession):
    def __init__(self, graph: GraphSpec, compiled) -> None:  # type: ignore[no-untyped-def]
        super().__init__(graph)
        self.compiled = compiled
        self.request = compiled.create_infer_request()
        self._ports = {o.get_any_name(): o for o in compiled.outputs}

    def run(self, feeds: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        # share_inputs: OpenVINO reads the numpy arrays in place instead of copying them per call (the
        # decoder's cross-attention keys/values are ~40 MB per image at BLIP-base size). Outputs are
        # copied: the next call writes into the request's output tensors.
        result = self.request.infer({k: feeds[k] for k in self.input_names}, share_inputs=True)
        return {name: np.asarray(result[self._ports[name]]) for name in self.output_names}


class OpenVINOBackend(Backend):
    """Runs IR graphs with OpenVINO; ``device`` is an OpenVINO device string (default ``CPU``)."""

    name = "openvino"
    module = "openvino"

    def open(self, root: Path, graph: GraphSpec) -> GraphSession:
        import openvino as ov

        core = ov.Core()
        model = core.read_model(str(root / graph.file))
        # Honour the bundle's precision: without the hint, CPUs with bf16/fp16 units downcast FP32.
        hint = {"fp32": "f32", "fp16": "f16"}.get(self.precision or "fp32", "f32")
        config = {"INFERENCE_PRECISION_HINT": hint} if hint else {}
        compiled = core.compile_model(model, (self.device or "CPU").upper(), config)
        return _OvSession(graph, compiled)
