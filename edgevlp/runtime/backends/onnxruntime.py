"""onnxruntime: CPU everywhere; CUDA and TensorRT execution providers when the build has them.

Sessions run with the CPU memory arena off and the memory-pattern planner on. With the arena on, it
keeps the largest activations of every graph reserved after the call (BLIP-base's 577-token encoder:
+98 MiB of peak RSS, 1147 vs 1049 MiB for an 899 MB bundle), and glibc's allocator serves the same
tensors per call at no measurable cost there (BLIP-base caption 1159-1251 ms with the arena, 1210-1252
ms without, 2-vCPU EPYC, three paired runs). The memory pattern plans each run's activations as one
block: it costs BLIP-base ~20 MiB of peak RSS (1086-1092 vs 1066-1074 MiB, still 1.27x the bundle)
and pays where activations are large: SmolVLM-256M's vision graph on 512 px tiles took 2134-2240 ms a
tile without it, 1352-1550 with it (1506-1601 with the arena too); 5 tiles 10.8 s, 8.2-8.8 s, 7.1-7.7 s.
Graph weights come mapped from the bundle's ``.onnx.data`` files (see :mod:`edgevlp.export.optimize`).

Threads: each session's pool spins while its run lasts and stops when it returns
(``session.force_spinning_stop``). A bundle's graphs run one after the other -- a BLIP-base caption is
vision encoder -> cross-attention K/V -> 20 decoder steps, three sessions -- and with onnxruntime's
default the pool of the graph that just ran keeps spinning on the cores the next graph's pool wants:
measured (2-vCPU Zen 5, INT8 bundle, p50 over 10 photos, runs interleaved) 337-354 ms a caption against
446-479 ms with the default and 352-363 ms with no spinning at all (encode 194-202 / 268-297 / 184-196
ms, decode 7.0-7.9 / 10.4-10.7 / 7.7-8.6 ms a token). One process-wide pool (onnxruntime's global thread
pool) measured 301-308 ms but makes every other onnxruntime session in the process fail unless it opts
in, so the runtime does not impose it. ``spinning=False`` turns spinning off altogether (Triton leaves:
one process each, sharing the cores)."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import numpy as np

from edgevlp.bundle import GraphSpec
from edgevlp.errors import BackendUnavailableError, BundleError
from edgevlp.runtime.backends import Backend, GraphSession

__all__ = ["OnnxRuntimeBackend"]

_DEVICE_PROVIDERS = {
    None: ("TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider"),
    "cpu": ("CPUExecutionProvider",),
    "cuda": ("CUDAExecutionProvider", "CPUExecutionProvider"),
    "tensorrt": ("TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider"),
}


class _OrtSession(GraphSession):
    def __init__(self, graph: GraphSpec, session) -> None:  # type: ignore[no-untyped-def]
        super().__init__(graph)
        self.session = session

    def run(self, feeds: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        outputs = self.session.run(self.output_names, {k: feeds[k] for k in self.input_names})
        return dict(zip(self.output_names, outputs))


class OnnxRuntimeBackend(Backend):
    """Runs ONNX graphs with onnxruntime; ``device`` is ``cpu``, ``cuda``, ``tensorrt`` or None (best)."""

    name = "onnxruntime"
    module = "onnxruntime"

    def __init__(self, device: str | None = None, precision: str | None = None, *, threads: int = 0,
                 spinning: bool = True) -> None:
        """``threads``: intra-op threads (0: onnxruntime's default, one per core); ``spinning=False``
        makes idle threads sleep at once, for processes that share the cores with other sessions (the
        leaves of a Triton repository)."""
        super().__init__(device=device, precision=precision)
        self.threads, self.spinning = int(threads), bool(spinning)

    def open(self, root: Path, graph: GraphSpec) -> GraphSession:
        import onnxruntime as ort

        if graph.format != "onnx":
            raise BundleError(f"graph {graph.role!r} is {graph.format}, not ONNX; use the "
                              f"{graph.format} backend")
        if self.device not in _DEVICE_PROVIDERS:
            raise BackendUnavailableError(f"onnxruntime device {self.device!r} is not one of "
                                          "cpu, cuda, tensorrt")
        have = set(ort.get_available_providers())
        providers = [p for p in _DEVICE_PROVIDERS[self.device] if p in have]
        if self.device not in (None, "cpu") and providers == ["CPUExecutionProvider"]:
            raise BackendUnavailableError(
                f"onnxruntime here has no {self.device.upper()} execution provider (has: "
                f"{', '.join(sorted(have))}); install onnxruntime-gpu or use --device cpu")
        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        options.log_severity_level = 3
        options.enable_cpu_mem_arena = False
        options.enable_mem_pattern = True
        options.intra_op_num_threads = self.threads
        if not self.spinning:
            options.add_session_config_entry("session.intra_op.allow_spinning", "0")
            options.add_session_config_entry("session.inter_op.allow_spinning", "0")
        else:  # spin inside a run, stop when it returns: the bundle's next graph gets the cores
            options.add_session_config_entry("session.force_spinning_stop", "1")
        session = ort.InferenceSession(str(root / graph.file), sess_options=options, providers=providers)
        return _OrtSession(graph, session)
