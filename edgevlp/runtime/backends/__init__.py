"""Inference backends behind one small interface, picked from a table and imported lazily.

A backend opens one graph of a bundle as a :class:`GraphSession` whose ``run(feeds)`` maps input
names to numpy arrays and returns every output by name. A new backend is one file plus one row in
:data:`BACKENDS`.

Example:
    >>> from edgevlp.runtime.backends import available_backends
    >>> "onnxruntime" in available_backends()
    True
"""

from __future__ import annotations

import importlib
from abc import ABC, abstractmethod
from collections.abc import Mapping
from pathlib import Path

import numpy as np

from edgevlp._lazy import import_object
from edgevlp.bundle import GraphSpec
from edgevlp.errors import BackendUnavailableError
from edgevlp.targets import TARGETS

__all__ = ["BACKENDS", "Backend", "GraphSession", "get_backend", "available_backends",
           "TARGET_PREFERENCES"]

#: name -> "module:Class"; the module (and its engine) is imported only when asked for.
BACKENDS: dict[str, str] = {
    "onnxruntime": "edgevlp.runtime.backends.onnxruntime:OnnxRuntimeBackend",
    "openvino": "edgevlp.runtime.backends.openvino:OpenVINOBackend",
    "tensorrt": "edgevlp.runtime.backends.tensorrt:TensorRTBackend",
}

#: For a bundle's target: which backends to try, in order, when none is named (edgevlp.targets).
TARGET_PREFERENCES: dict[str, tuple[str, ...]] = {name: t.backends for name, t in TARGETS.items()}

#: Graph file format each backend reads.
FORMATS: dict[str, tuple[str, ...]] = {
    "onnxruntime": ("onnx",),
    "openvino": ("openvino", "onnx"),
    "tensorrt": ("tensorrt",),
}


class GraphSession(ABC):
    """One loaded graph, ready to run."""

    def __init__(self, graph: GraphSpec) -> None:
        self.graph = graph
        self.input_names = [t.name for t in graph.inputs]
        self.output_names = [t.name for t in graph.outputs]

    @abstractmethod
    def run(self, feeds: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Run the graph; ``feeds`` holds every declared input."""


class Backend(ABC):
    """Opens graphs of a bundle on one engine and device."""

    name: str
    #: Import name of the engine, checked by :func:`available_backends`.
    module: str

    def __init__(self, device: str | None = None, precision: str | None = None) -> None:
        self.device = device
        self.precision = precision

    @abstractmethod
    def open(self, root: Path, graph: GraphSpec) -> GraphSession:
        """Load ``graph`` (files relative to the bundle ``root``)."""

    def can_open(self, graph: GraphSpec) -> bool:
        return graph.format in FORMATS[self.name] or (self.name == "tensorrt" and bool(graph.engines))


def _importable(module: str) -> bool:
    try:
        importlib.import_module(module)
    except Exception:  # noqa: BLE001 - a broken install counts as unavailable
        return False
    return True


def available_backends() -> list[str]:
    """Backends whose engine imports here."""
    return [name for name in BACKENDS if _importable(_backend_class(name).module)]


def _backend_class(name: str) -> type[Backend]:
    return import_object(BACKENDS[name])


def get_backend(name: str, device: str | None = None, precision: str | None = None) -> Backend:
    """Instantiate backend ``name``; a missing engine is a clear :class:`BackendUnavailableError`."""
    if name not in BACKENDS:
        raise BackendUnavailableError(f"unknown backend {name!r}; known: {', '.join(BACKENDS)}")
    cls = _backend_class(name)
    if not _importable(cls.module):
        raise BackendUnavailableError(
            f"backend {name!r} needs the Python package {cls.module!r}, which does not import here; "
            f"install it (e.g. pip install 'edgevlp[{name}]') or pick another backend "
            f"(available: {', '.join(available_backends()) or 'none'})"
        )
    return cls(device=device, precision=precision)
