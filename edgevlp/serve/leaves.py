"""Leaf kinds of a Triton repository: which engine runs each graph of a bundle, one row per ``--leaf``.

A leaf is one graph of the bundle served as its own Triton model (dynamic batching, instance groups).
The row says which bundle target the graphs are cut from, how the config names the engine and which
file the model directory holds. A new leaf kind is one row here.

Example:
    >>> LEAVES["python"].bundle_target, LEAVES["tensorrt"].engine
    ('cpu', {'platform': 'tensorrt_plan'})
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from edgevlp.bundle import GraphSpec
from edgevlp.errors import InputError

__all__ = ["Leaf", "LEAVES", "get_leaf"]


@dataclass(frozen=True)
class Leaf:
    """One ``--leaf`` kind.

    Attributes:
        name: the ``--leaf`` value.
        bundle_target: ``edgevlp export`` target whose graphs the leaves serve.
        engine: the config's ``backend`` / ``platform`` fields.
        model_file: the file Triton opens (``default_model_filename``), from the bundle's graph.
        serves: the bundle targets whose graphs it can serve (``bundle_target`` first).
        python: whether the leaf is an edgevlp Python model (onnxruntime inside the Python backend: the
            kind a Python-backend-only tritonserver, such as nvidia-pytriton's, can serve).
        note: what the README says about it.
    """

    name: str
    bundle_target: str
    engine: dict[str, str]
    model_file: Callable[[GraphSpec], str]
    serves: tuple[str, ...] = ("cpu", "jetson", "laptop-gpu")
    python: bool = False
    note: str = ""


def _same_file(graph: GraphSpec) -> str:
    return graph.file


def _plan(graph: GraphSpec) -> str:
    return "model.plan"


#: ``--leaf`` -> row, in the order the CLI lists them.
LEAVES: dict[str, Leaf] = {leaf.name: leaf for leaf in (
    Leaf("onnxruntime", "cpu", {"backend": "onnxruntime"}, _same_file,
         note="Triton's onnxruntime backend (NVIDIA's tritonserver container)"),
    Leaf("openvino", "openvino", {"backend": "openvino"}, _same_file, ("openvino", "cpu"),
         note="Triton's OpenVINO backend (x86 CPUs)"),
    Leaf("tensorrt", "laptop-gpu", {"platform": "tensorrt_plan"}, _plan, ("laptop-gpu", "jetson"),
         note="TensorRT engines: run build_engines.sh on the serving GPU first (it writes each leaf's "
              "model.plan with trtexec from the ONNX beside it)"),
    Leaf("python", "cpu", {"backend": "python"}, _same_file, python=True,
         note="edgevlp's Python leaf: onnxruntime inside Triton's Python backend (any tritonserver, "
              "including the Python-backend-only one of nvidia-pytriton)"),
)}


def get_leaf(name: str) -> Leaf:
    """The row of leaf kind ``name``; an unknown one raises :class:`InputError` listing the known ones."""
    if name not in LEAVES:
        raise InputError(f"unknown --leaf {name!r}; choose one of {', '.join(LEAVES)}")
    return LEAVES[name]
