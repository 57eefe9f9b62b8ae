"""torch -> ONNX for one :class:`GraphExport`: the dynamo exporter first, TorchScript as fallback."""

from __future__ import annotations

import contextlib
import inspect
import io
import time
from dataclasses import dataclass
from pathlib import Path

import onnx
import torch

from edgevlp.bundle import GraphSpec
from edgevlp.errors import ExportError
from edgevlp.export.graphs import GraphExport
from edgevlp.export.patches import attention_implementation, export_mode, quiet_exporters

__all__ = ["DEFAULT_OPSET", "ExportRecord", "export_graph", "set_dim_names"]

DEFAULT_OPSET = 18


@dataclass(frozen=True)
class ExportRecord:
    """How a graph was exported (written into the manifest)."""

    exporter: str
    opset: int
    seconds: float
    fallback_reason: str = ""


def _dynamic_shapes(g: GraphExport) -> tuple[object, ...]:
    dims: dict[str, torch.export.Dim] = {}

    def spec(t) -> dict[int, torch.export.Dim]:
        out = {}
        for axis, name in t.dynamic_axes.items():
            if name not in dims:
                dims[name] = torch.export.Dim(name, min=0 if name.startswith("past") else 1)
            out[axis] = dims[name]
        return out

    specs = [spec(t) for t in g.inputs]
    params = inspect.signature(g.module.forward).parameters.values()
    fixed = [p for p in params if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
    if any(p.kind == p.VAR_POSITIONAL for p in params):
        return (*specs[: len(fixed)], tuple(specs[len(fixed):]))
    return tuple(specs)


def _dynamo(g: GraphExport, path: Path, opset: int) -> None:
    torch.onnx.export(g.module, g.example_inputs, str(path), input_names=g.input_names,
                      output_names=g.output_names, opset_version=opset, dynamo=True,
                      external_data=False, dynamic_shapes=_dynamic_shapes(g), verbose=False)


def _torchscript(g: GraphExport, path: Path, opset: int) -> None:
    axes = {t.name: t.dynamic_axes for t in (*g.inputs, *g.outputs) if t.dynamic_axes}
    with attention_implementation(g.module, "eager"):
        torch.onnx.export(g.module, g.example_inputs, str(path), input_names=g.input_names,
                          output_names=g.output_names, opset_version=min(opset, 20), dynamo=False,
                          dynamic_axes=axes, do_constant_folding=True)


def set_dim_names(model: onnx.ModelProto, g: GraphExport | GraphSpec) -> None:
    """Make the graph's I/O shapes say exactly what the declared TensorSpecs say (a name for a dynamic
    axis, a size for a fixed one; setting one clears the other, they are a protobuf oneof)."""
    specs = {t.name: t for t in (*g.inputs, *g.outputs)}
    for value in (*model.graph.input, *model.graph.output):
        spec = specs.get(value.name)
        if spec is None:
            continue
        dims = value.type.tensor_type.shape.dim
        for dim, want in zip(dims, spec.shape):
            if isinstance(want, str):
                dim.dim_param = want
            else:
                dim.dim_value = want


def export_graph(g: GraphExport, path: Path, *, opset: int = DEFAULT_OPSET) -> ExportRecord:
    """Export ``g`` to ``path`` (single file), check it with ``onnx.checker`` (full check)."""
    t0 = time.perf_counter()
    reason = ""
    exporter = "dynamo"
    sink = io.StringIO()
    with export_mode(g.module), quiet_exporters(), contextlib.redirect_stdout(sink):
        try:
            _dynamo(g, path, opset)
        except Exception as err:  # noqa: BLE001 - any dynamo failure -> documented fallback
            reason = " ".join(f"{type(err).__name__}: {err}".split())[:300]
            exporter = "torchscript"
            path.unlink(missing_ok=True)
            try:
                _torchscript(g, path, opset)
            except Exception as err2:  # noqa: BLE001
                raise ExportError(
                    f"could not export graph {g.role!r}: dynamo failed ({reason}); TorchScript failed "
                    f"({type(err2).__name__}: {' '.join(str(err2).split())[:300]}); re-run with "
                    "--debug and report the model"
                ) from err2
    model = onnx.load(str(path))
    set_dim_names(model, g)
    onnx.save(model, str(path))
    try:
        onnx.checker.check_model(str(path), full_check=True)
    except Exception as err:  # noqa: BLE001
        raise ExportError(f"exported graph {g.role!r} fails onnx.checker: {err}") from None
    return ExportRecord(exporter=exporter, opset=int(model.opset_import[0].version),
                        seconds=time.perf_counter() - t0, fallback_reason=reason)
