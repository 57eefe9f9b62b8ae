"""TensorRT: serialized engines in the bundle (built by its build_engines.sh). Only where it imports.

Device memory goes through ``cuda-python`` (``cuda.bindings.runtime``), not torch: the runtime stays
torch-free on the Jetson too.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import numpy as np

from edgevlp.bundle import GraphSpec
from edgevlp.errors import BackendUnavailableError, BundleError
from edgevlp.runtime.backends import Backend, GraphSession

__all__ = ["TensorRTBackend"]


def _cudart():  # type: ignore[no-untyped-def]  # pragma: no cover - needs CUDA
    try:
        from cuda.bindings import runtime as cudart
    except ImportError:
        try:
            from cuda import cudart  # type: ignore[no-redef]  # cuda-python < 12.6
        except ImportError:
            raise BackendUnavailableError("the tensorrt backend needs cuda-python "
                                          "(pip install cuda-python)") from None
    return cudart


def _check(result):  # type: ignore[no-untyped-def]  # pragma: no cover - needs CUDA
    err, *rest = result
    if int(err) != 0:
        raise BackendUnavailableError(f"CUDA call failed with error {err}")
    return rest[0] if len(rest) == 1 else rest


class _TrtSession(GraphSession):  # pragma: no cover - needs a GPU with TensorRT
    def __init__(self, graph: GraphSpec, engine) -> None:  # type: ignore[no-untyped-def]
        super().__init__(graph)
        self.engine = engine
        self.context = engine.create_execution_context()
        self.cudart = _cudart()
        self.stream = _check(self.cudart.cudaStreamCreate())
        self._dtypes = {t.name: np.dtype(t.dtype) for t in (*graph.inputs, *graph.outputs)}

    def run(self, feeds: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        rt = self.cudart
        h2d, d2h = rt.cudaMemcpyKind.cudaMemcpyHostToDevice, rt.cudaMemcpyKind.cudaMemcpyDeviceToHost
        allocations = []
        try:
            for name in self.input_names:
                host = np.ascontiguousarray(feeds[name], dtype=self._dtypes[name])
                ptr = _check(rt.cudaMalloc(max(host.nbytes, 1)))
                allocations.append(ptr)
                _check(rt.cudaMemcpy(ptr, host.ctypes.data, host.nbytes, h2d))
                self.context.set_input_shape(name, host.shape)
                self.context.set_tensor_address(name, ptr)
            outputs = {}
            for name in self.output_names:
                host = np.empty(tuple(self.context.get_tensor_shape(name)), self._dtypes[name])
                ptr = _check(rt.cudaMalloc(max(host.nbytes, 1)))
                allocations.append(ptr)
                self.context.set_tensor_address(name, ptr)
                outputs[name] = (host, ptr)
            self.context.execute_async_v3(self.stream)
            _check(rt.cudaStreamSynchronize(self.stream))
            for host, ptr in outputs.values():
                _check(rt.cudaMemcpy(host.ctypes.data, ptr, host.nbytes, d2h))
            return {name: host for name, (host, _) in outputs.items()}
        finally:
            for ptr in allocations:
                rt.cudaFree(ptr)


class TensorRTBackend(Backend):
    """Deserialises the engine built for this machine (``graph.engines``)."""

    name = "tensorrt"
    module = "tensorrt"

    def open(self, root: Path, graph: GraphSpec) -> GraphSession:  # pragma: no cover - needs TRT
        import tensorrt as trt

        if not graph.engines:
            raise BundleError(f"graph {graph.role!r} has no TensorRT engine; run the bundle's "
                              "build_engines.sh on the device first")
        engine_file = next(iter(graph.engines.values()))
        runtime = trt.Runtime(trt.Logger(trt.Logger.WARNING))
        engine = runtime.deserialize_cuda_engine((root / engine_file).read_bytes())
        if engine is None:
            raise BundleError(f"TensorRT could not deserialise {engine_file}: engines are specific to "
                              "the GPU and TensorRT version; rebuild with build_engines.sh")
        return _TrtSession(graph, engine)
