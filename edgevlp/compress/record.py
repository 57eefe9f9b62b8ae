"""``compression.json``: what `edgevlp compress` wrote, read back by `edgevlp export` (torch-free).

Format (``format_version`` 2; version 1 files, without ``precision``/``parity``/``schemes``, still read)::

    {"format": "edgevlp-compressed", "format_version": 2, "base_model": "model",
     "precision": "int8",                     # or null: no quantised graphs, export at any precision
     "graphs": {"vision_encoder": "vision_encoder.int8.onnx", ...},      # ONNX (QDQ, dynamic, MatMulNBits)
     "openvino_graphs": {...},                # OpenVINO IR (backend openvino), if any
     "schemes": {"vision_encoder": "ptq_static", ...},
     "parity": {"min_cosine": 0.99, "max_rel_diff": 0.1, "measured": {"vision_encoder": 0.9987}},
     "recipe": {...}}

The precision and the parity tolerance of an export of this directory come from here
(:func:`export_precision`, :func:`parity_tolerance`): the INT8 graphs are what the directory holds, so a
``--precision`` that says otherwise is refused rather than silently honoured or ignored.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from edgevlp._io import read_json_object
from edgevlp.errors import InputError

__all__ = ["COMPRESSION_FILE", "COMPRESSED_FORMAT", "FORMAT_VERSION", "READS", "read_compression",
           "recorded_precision", "export_precision", "parity_tolerance", "QDQ_SCHEMES"]

COMPRESSION_FILE = "compression.json"
COMPRESSED_FORMAT = "edgevlp-compressed"
#: the version this edgevlp writes, and the versions it reads.
FORMAT_VERSION = 2
READS = (1, 2)
#: schemes whose ONNX graphs TensorRT (explicit quantisation) and OpenVINO read as INT8.
QDQ_SCHEMES = ("ptq_static", "qat")


def read_compression(model_dir: Path | None) -> dict[str, Any] | None:
    """The compression record of ``model_dir`` (``None`` if it has none), its format checked.

    Raises:
        InputError: not a compression record, or one of a format version this edgevlp cannot read.
    """
    if model_dir is None or not (Path(model_dir) / COMPRESSION_FILE).is_file():
        return None
    path = Path(model_dir) / COMPRESSION_FILE
    record = read_json_object(path, InputError, "re-run `edgevlp compress` to write it again")
    if record.get("format") != COMPRESSED_FORMAT:
        raise InputError(f"{path} is not an `edgevlp compress` record (format {record.get('format')!r}, expected "
                         f"{COMPRESSED_FORMAT!r}); re-run `edgevlp compress` to write it again")
    version = record.get("format_version")
    if not isinstance(version, int) or isinstance(version, bool) or version not in READS:
        newer = isinstance(version, int) and not isinstance(version, bool) and version > max(READS)
        raise InputError(f"{path} has format_version {version!r}; this edgevlp reads "
                         f"{', '.join(map(str, READS))}: " + ("upgrade edgevlp to export it" if newer else
                                                            "re-run `edgevlp compress` to write it again"))
    return record


def recorded_precision(record: dict[str, Any]) -> str | None:
    """``int8`` when the directory holds quantised graphs, else ``None`` (any precision may be exported)."""
    if "precision" in record:
        return record["precision"]
    return "int8" if record.get("graphs") or record.get("openvino_graphs") else None  # format_version 1


def _schemes(record: dict[str, Any]) -> dict[str, str]:
    if "schemes" in record:
        return dict(record["schemes"])
    stages = (record.get("recipe") or {}).get("stages") or []
    method = next((s["quant"].get("method", "ptq_static") for s in stages if "quant" in s), "ptq_static")
    return {role: method for role in record.get("graphs") or {}}


def export_precision(record: dict[str, Any], asked: str | None, target: str, where: Path) -> str | None:
    """The precision to export ``where`` (a compressed directory) at: the record's, with ``asked``
    (``--precision``) checked against it and ``target`` against the graphs' format. ``None``: the
    record fixes nothing (no quantised graphs), the profile's default applies.

    Example:
        >>> export_precision({"precision": "int8", "graphs": {"vision_encoder": "v.onnx"}}, None, "cpu", Path("out"))
        'int8'
    """
    precision = recorded_precision(record)
    name = (record.get("recipe") or {}).get("name", "?")
    if precision is None:
        return asked
    if asked is not None and asked != precision:
        raise InputError(f"{where} holds {precision.upper()} graphs written by `edgevlp compress` (recipe {name}; "
                         f"{COMPRESSION_FILE}: precision {precision}), so --precision {asked} contradicts it: drop "
                         f"--precision (the bundle is {precision}), or export its FP32 model at {asked} with "
                         f"`edgevlp export {where / record.get('base_model', 'model')} --precision {asked} ...`")
    onnx_graphs, ir = record.get("graphs") or {}, record.get("openvino_graphs") or {}
    if ir and target != "openvino":
        raise InputError(f"{where} was quantised for OpenVINO (IR: {', '.join(sorted(ir))}); export it with "
                         f"--target openvino, or re-run `edgevlp compress` with backend = \"onnxruntime\" for "
                         f"--target {target}")
    if target in ("jetson", "laptop-gpu"):
        other = {r: s for r, s in _schemes(record).items() if r in onnx_graphs and s not in QDQ_SCHEMES}
        if other:
            listed = ", ".join(f"{r} ({s})" for r, s in sorted(other.items()))
            raise InputError(f"TensorRT builds INT8 engines from QDQ graphs only; {where} has {listed} (for "
                             f"--target cpu or openvino): re-run `edgevlp compress` with method = \"ptq_static\" "
                             f"(e.g. recipes/int8-ptq.toml) for --target {target}")
    return precision


def parity_tolerance(record: dict[str, Any]) -> dict[str, float | None]:
    """``{"min_cosine", "max_rel_diff"}`` the graphs were held to by `edgevlp compress` (``None``: not
    recorded; the exporter's INT8 defaults apply)."""
    parity = record.get("parity") or {}
    return {"min_cosine": parity.get("min_cosine"), "max_rel_diff": parity.get("max_rel_diff")}
