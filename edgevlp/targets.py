"""Deployment targets, declared once (torch-free: the runtime reads this table too).

One :class:`Target` row per ``--target``: the writer that turns the traced ONNX graphs into its files,
its default profile (``export/targets/NAME.toml``) and precision, the graph formats its bundles hold, the
runtime backends that open them (preferred first) and the device class its profiles describe. The CLI's
choices, the exporter's writer, the runtime's backend order, ``edgevlp bench``'s export per backend and
the bundle schema's enums are all read from :data:`TARGETS`. A new target is one row here plus one writer
module (``write(ctx: ExportContext) -> None``).

Example:
    >>> from edgevlp.targets import TARGETS, get_target
    >>> get_target("jetson").backends
    ('tensorrt', 'onnxruntime')
    >>> [t.name for t in TARGETS.values() if t.device == "cpu"]
    ['cpu', 'openvino']
"""

from __future__ import annotations

from dataclasses import dataclass

from edgevlp.errors import InputError

__all__ = ["PRECISIONS", "CPU", "Target", "TARGETS", "RepositoryTarget", "REPOSITORY_TARGETS", "get_target", "devices", "default_precision",
           "host_targets", "graph_formats"]

#: Numeric precisions a bundle can be exported at.
#: ``int4``: 4-bit weight-only decoders (MatMulNBits), written by `edgevlp compress` only.
PRECISIONS: tuple[str, ...] = ("fp32", "fp16", "int8", "int4")
#: The device class of targets whose bundles run on a plain CPU (here, in CI, in ``edgevlp bench``).
CPU = "cpu"


@dataclass(frozen=True)
class Target:
    """One deployment target.

    Attributes:
        name: the ``--target`` value and the manifest's ``target``.
        writer: ``"module:function"`` writing the target's files from the traced ONNX graphs.
        profile: default profile name (``export/targets/NAME.toml``).
        formats: graph file formats its bundles hold (``GraphSpec.format``, engine kinds).
        precision: default precision, used when neither ``--precision`` nor the profile names one.
        backends: runtime backends that open its bundles, preferred first.
        device: the device class its profiles describe (a profile's ``target =`` key); targets of the
            same device class share profiles (``cpu`` and ``openvino`` both read ``cpu.toml``).
    """

    name: str
    writer: str
    profile: str
    formats: tuple[str, ...]
    precision: str
    backends: tuple[str, ...]
    device: str

    def __post_init__(self) -> None:
        defaults = tuple(p for p in PRECISIONS if p != "int4")  # int4 graphs come from `edgevlp compress` only
        if self.precision not in defaults:
            raise ValueError(f"target {self.name}: default precision {self.precision!r} is not one of {defaults}")
        if ":" not in self.writer or not self.backends or not self.formats:
            raise ValueError(f"target {self.name}: writer must be 'module:function', backends and formats "
                             "non-empty")


#: name -> target, in the order the CLI lists them.
TARGETS: dict[str, Target] = {t.name: t for t in (
    Target("cpu", "edgevlp.export.onnx_target:write", "cpu", ("onnx",), "fp32", ("onnxruntime",), CPU),
    Target("openvino", "edgevlp.export.openvino_target:write", "cpu", ("openvino",), "fp32",
           ("openvino",), CPU),
    Target("jetson", "edgevlp.export.tensorrt_target:write", "jetson-orin-nano", ("onnx", "tensorrt"),
           "fp16", ("tensorrt", "onnxruntime"), "jetson"),
    Target("laptop-gpu", "edgevlp.export.tensorrt_target:write", "laptop-gpu", ("onnx", "tensorrt"),
           "fp16", ("tensorrt", "onnxruntime"), "laptop-gpu"),
)}


@dataclass(frozen=True)
class RepositoryTarget:
    """A target whose output is a serving repository built around a bundle, not a bundle.

    Attributes:
        name: the ``--target`` value.
        writer: ``"module:function"``: ``write(bundle, output, **options)``, torch-free.
        leaves: ``"module:TABLE"`` of the engines that may serve the graphs (the ``--leaf`` choices);
            each row names the bundle target the graphs are exported for when a model is given.
    """

    name: str
    writer: str
    leaves: str


#: name -> repository target (``edgevlp export MODEL_OR_BUNDLE --target NAME``).
REPOSITORY_TARGETS: dict[str, RepositoryTarget] = {t.name: t for t in (
    RepositoryTarget("triton", "edgevlp.serve.repository:write_repository", "edgevlp.serve.leaves:LEAVES"),
)}


def get_target(name: str) -> Target:
    """The row of target ``name``; an unknown name raises :class:`InputError` listing the known ones.

    Example:
        >>> get_target("cpu").profile
        'cpu'
    """
    target = TARGETS.get(name)
    if target is None:
        raise InputError(f"unknown target {name!r}; choose one of {', '.join(TARGETS)}")
    return target


def devices() -> tuple[str, ...]:
    """Device classes a profile may be written for, in table order.

    Example:
        >>> devices()
        ('cpu', 'jetson', 'laptop-gpu')
    """
    return tuple(dict.fromkeys(t.device for t in TARGETS.values()))


def default_precision(device: str) -> str:
    """Precision of a profile for ``device`` that names none: that of the first target of the device.

    Example:
        >>> default_precision("jetson")
        'fp16'
    """
    return next(t.precision for t in TARGETS.values() if t.device == device)


def host_targets() -> dict[str, str]:
    """backend -> the CPU target whose preferred backend it is: what ``edgevlp bench`` exports a model
    to for each backend it measures on this machine.

    Example:
        >>> host_targets()
        {'onnxruntime': 'cpu', 'openvino': 'openvino'}
    """
    out: dict[str, str] = {}
    for t in TARGETS.values():
        if t.device == CPU:
            out.setdefault(t.backends[0], t.name)
    return out


def graph_formats() -> tuple[str, ...]:
    """Every graph format some target writes, in table order (the bundle schema's ``format`` enum)."""
    return tuple(dict.fromkeys(f for t in TARGETS.values() for f in t.formats))
