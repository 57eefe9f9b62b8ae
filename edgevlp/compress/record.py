"""``compression.json``: what `edgevlp compress` wrote, read back by `edgevlp export` (torch-free).

One typed record, :class:`CompressionRecord`, is written by :mod:`edgevlp.compress.pipeline` and read
(validated) by :mod:`edgevlp.export.exporter`. Format (``format_version`` 2; version 1 files, without
``base_model``/``precision``/``parity``/``schemes``, still read and completed as version 1 meant them)::

    {"format": "edgevlp-compressed", "format_version": 2, "base_model": "model",
     "precision": "int8",                     # or null: no quantised graphs, export at any precision
     "graphs": {"vision_encoder": "vision_encoder.int8.onnx", ...},      # ONNX (QDQ, dynamic, MatMulNBits)
     "schemes": {"vision_encoder": "ptq_static", ...},
     "parity": {"min_cosine": 0.99, "max_rel_diff": 0.1, "measured": {"vision_encoder": 0.9987}},
     "recipe": {...},
     "openvino_graphs": {...}}                # OpenVINO IR (backend openvino), if any

The precision and the parity tolerance of an export of this directory come from here
(:func:`export_precision`, :func:`parity_tolerance`): the INT8 graphs are what the directory holds, so a
``--precision`` that says otherwise is refused rather than silently honoured or ignored.

Example:
    >>> record = CompressionRecord(precision="int8", graphs={"vision_encoder": "v.int8.onnx"},
    ...                            schemes={"vision_encoder": "ptq_static"}, recipe={"name": "int8"})
    >>> CompressionRecord.from_dict(record.to_dict()) == record
    True
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from edgevlp._io import read_json_object
from edgevlp.errors import InputError
from edgevlp.targets import CPU, TARGETS, get_target

__all__ = ["COMPRESSION_FILE", "COMPRESSED_FORMAT", "FORMAT_VERSION", "READS", "CompressionRecord",
           "read_compression", "recorded_precision", "export_precision", "parity_tolerance", "QDQ_SCHEMES"]

COMPRESSION_FILE = "compression.json"
COMPRESSED_FORMAT = "edgevlp-compressed"
#: the version this edgevlp writes, and the versions it reads.
FORMAT_VERSION = 2
READS = (1, 2)
#: schemes whose ONNX graphs TensorRT (explicit quantisation) and OpenVINO read as INT8.
QDQ_SCHEMES = ("ptq_static", "qat")
#: keys a record of each version must have (besides ``format`` / ``format_version``).
REQUIRED: dict[int, tuple[str, ...]] = {1: (), 2: ("base_model", "precision", "graphs", "schemes", "parity", "recipe")}
_PRECISIONS = (None, "int8", "int4")  # int4: some graph has 4-bit (weight-only) weights, the rest INT8/FP32
_REWRITE = "re-run `edgevlp compress` to write it again"


@dataclass(frozen=True)
class CompressionRecord:
    """The compressed-model record (``compression.json``), one per `edgevlp compress` output.

    ``base_model``: the folder (relative to the record) holding the FP32 model; ``None`` (version 1
    records without it): the record's folder itself. ``precision``: ``int8`` when the directory holds
    quantised graphs, else ``None``. ``graphs`` / ``openvino_graphs``: role -> file. ``schemes``: role ->
    quantisation scheme. ``parity``: the tolerance the graphs were held to (``min_cosine``,
    ``max_rel_diff``) and the measured cosines. ``recipe``: the recipe as run.
    """

    format_version: int = FORMAT_VERSION
    base_model: str | None = "model"
    precision: str | None = None
    graphs: dict[str, str] = field(default_factory=dict)
    schemes: dict[str, str] = field(default_factory=dict)
    parity: dict[str, Any] = field(default_factory=dict)
    recipe: dict[str, Any] | None = None
    openvino_graphs: dict[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.precision not in _PRECISIONS:
            raise InputError(f"compression record: precision {self.precision!r} is not one of "
                             f"{', '.join(map(str, _PRECISIONS))}; {_REWRITE}")
        for key in ("graphs", "schemes", "openvino_graphs"):
            value = getattr(self, key)
            if not isinstance(value, dict) or not all(isinstance(k, str) and isinstance(v, str)
                                                      for k, v in value.items()):
                raise InputError(f"compression record: {key} must map graph roles to names, got {value!r}; "
                                 f"{_REWRITE}")
        if not isinstance(self.parity, dict) or (self.recipe is not None and not isinstance(self.recipe, dict)):
            raise InputError(f"compression record: parity and recipe must be objects; {_REWRITE}")

    # ---------------------------------------------------------------------------------- reading
    @classmethod
    def from_dict(cls, data: Mapping[str, Any], where: str = COMPRESSION_FILE) -> "CompressionRecord":
        """Validate a parsed ``compression.json`` (``where`` names it in errors); a version 1 record is
        completed as version 1 meant it (its precision from its graphs, its schemes from its recipe).

        Raises:
            InputError: not a compression record, a format version this edgevlp cannot read, or a
                missing / mistyped key; the message says how to fix it.
        """
        if data.get("format") != COMPRESSED_FORMAT:
            raise InputError(f"{where} is not an `edgevlp compress` record (format {data.get('format')!r}, "
                             f"expected {COMPRESSED_FORMAT!r}); {_REWRITE}")
        version = data.get("format_version")
        if not isinstance(version, int) or isinstance(version, bool) or version not in READS:
            newer = isinstance(version, int) and not isinstance(version, bool) and version > max(READS)
            raise InputError(f"{where} has format_version {version!r}; this edgevlp reads "
                             f"{', '.join(map(str, READS))}: "
                             + ("upgrade edgevlp to export it" if newer else _REWRITE))
        missing = [k for k in REQUIRED[version] if k not in data]
        if missing:
            raise InputError(f"{where} (format_version {version}) misses {', '.join(map(repr, missing))}; "
                             f"{_REWRITE}")
        graphs, ir = _copy(data.get("graphs") or {}), _copy(data.get("openvino_graphs") or {})
        if version == 1:
            precision = data.get("precision", "int8" if graphs or ir else None)
            schemes = data.get("schemes") or _v1_schemes(data)
        else:
            precision, schemes = data["precision"], data["schemes"]
        return cls(format_version=version, base_model=data.get("base_model"), precision=precision,
                   graphs=graphs, schemes=_copy(schemes or {}), parity=_copy(data.get("parity") or {}),
                   recipe=data.get("recipe"), openvino_graphs=ir)

    @classmethod
    def read(cls, model_dir: str | Path) -> "CompressionRecord":
        """The record in ``model_dir/compression.json``, validated (:meth:`from_dict`)."""
        path = Path(model_dir) / COMPRESSION_FILE
        return cls.from_dict(read_json_object(path, InputError, _REWRITE), where=str(path))

    # ---------------------------------------------------------------------------------- writing
    def to_dict(self) -> dict[str, Any]:
        """The JSON object (always the current format version's layout)."""
        out: dict[str, Any] = {
            "format": COMPRESSED_FORMAT, "format_version": FORMAT_VERSION, "base_model": self.base_model,
            "precision": self.precision, "graphs": dict(self.graphs), "schemes": dict(self.schemes),
            "parity": dict(self.parity), "recipe": self.recipe}
        if self.openvino_graphs:
            out["openvino_graphs"] = dict(self.openvino_graphs)
        return out

    def write(self, model_dir: str | Path) -> Path:
        """Write ``model_dir/compression.json``."""
        path = Path(model_dir) / COMPRESSION_FILE
        path.write_text(json.dumps(self.to_dict(), indent=2) + "\n", encoding="utf-8")
        return path

    @property
    def graph_format(self) -> str:
        """The format of the quantised graphs (``onnx``, or ``openvino`` for NNCF IR): which targets read them."""
        return "openvino" if self.openvino_graphs else "onnx"

    def host_target(self) -> str:
        """The CPU target that exports these graphs as they are (the hint after `edgevlp compress`).

        Example:
            >>> CompressionRecord(precision="int8", openvino_graphs={"vision_encoder": "v.int8.xml"}).host_target()
            'openvino'
        """
        return next(t.name for t in TARGETS.values() if t.device == CPU and self.graph_format in t.formats)

    @property
    def recipe_name(self) -> str:
        return (self.recipe or {}).get("name", "?")


def _copy(value: Any) -> Any:
    """A shallow copy of a JSON object (anything else is passed on for ``__post_init__`` to refuse)."""
    return dict(value) if isinstance(value, dict) else value


def _v1_schemes(data: Mapping[str, Any]) -> dict[str, str]:
    stages = (data.get("recipe") or {}).get("stages") or []
    method = next((s["quant"].get("method", "ptq_static") for s in stages if "quant" in s), "ptq_static")
    return {role: method for role in data.get("graphs") or {}}


def _as_record(record: CompressionRecord | Mapping[str, Any]) -> CompressionRecord:
    return record if isinstance(record, CompressionRecord) else CompressionRecord.from_dict(record)


def read_compression(model_dir: Path | None) -> CompressionRecord | None:
    """The compression record of ``model_dir`` (``None`` if it has none), validated.

    Raises:
        InputError: not a compression record, one of a format version this edgevlp cannot read, or one
            that misses a key its version has.
    """
    if model_dir is None or not (Path(model_dir) / COMPRESSION_FILE).is_file():
        return None
    return CompressionRecord.read(model_dir)


def recorded_precision(record: CompressionRecord | Mapping[str, Any]) -> str | None:
    """``int8`` when the directory holds quantised graphs, else ``None`` (any precision may be exported)."""
    return _as_record(record).precision


def export_precision(record: CompressionRecord | Mapping[str, Any], asked: str | None, target: str,
                     where: Path) -> str | None:
    """The precision to export ``where`` (a compressed directory) at: the record's, with ``asked``
    (``--precision``) checked against it and ``target`` against the graphs' format. ``None``: the
    record fixes nothing (no quantised graphs), the profile's default applies.

    Example:
        >>> rec = CompressionRecord(precision="int8", graphs={"vision_encoder": "v.onnx"}, recipe={"name": "q"})
        >>> export_precision(rec, None, "cpu", Path("out"))
        'int8'
    """
    record = _as_record(record)
    precision = record.precision
    if precision is None:
        return asked
    if asked is not None and asked != precision:
        raise InputError(f"{where} holds {precision.upper()} graphs written by `edgevlp compress` (recipe "
                         f"{record.recipe_name}; {COMPRESSION_FILE}: precision {precision}), so --precision {asked} "
                         f"contradicts it: drop --precision (the bundle is {precision}), or export its FP32 model "
                         f"at {asked} with `edgevlp export {where / (record.base_model or '.')} --precision "
                         f"{asked} ...`")
    onnx_graphs, ir = record.graphs, record.openvino_graphs
    row = get_target(target)
    if ir and "openvino" not in row.formats:
        readers = " or ".join(f"--target {t.name}" for t in TARGETS.values() if "openvino" in t.formats)
        raise InputError(f"{where} was quantised for OpenVINO (IR: {', '.join(sorted(ir))}); export it with "
                         f"{readers}, or re-run `edgevlp compress` with backend = \"onnxruntime\" for "
                         f"--target {target}")
    if precision == "int4" and onnx_graphs and "onnxruntime" not in row.backends:
        readers = " or ".join(f"--target {t.name}" for t in TARGETS.values() if "onnxruntime" in t.backends)
        raise InputError(f"{where} holds 4-bit MatMulNBits graphs (onnxruntime's com.microsoft op), which "
                         f"this target's writer does not convert: export it with {readers}, or compress with "
                         "recipes/smolvlm-int4-openvino.toml for --target openvino")
    if "tensorrt" in row.formats:
        other = {r: s for r, s in record.schemes.items() if r in onnx_graphs and s not in QDQ_SCHEMES}
        if other:
            listed = ", ".join(f"{r} ({s})" for r, s in sorted(other.items()))
            raise InputError(f"TensorRT builds INT8 engines from QDQ graphs only; {where} has {listed} (for "
                             f"--target cpu or openvino): re-run `edgevlp compress` with method = \"ptq_static\" "
                             f"(e.g. recipes/int8-ptq.toml) for --target {target}")
    return precision


def parity_tolerance(record: CompressionRecord | Mapping[str, Any]) -> dict[str, float | None]:
    """``{"min_cosine", "max_rel_diff"}`` the graphs were held to by `edgevlp compress` (``None``: not
    recorded; the exporter's INT8 defaults apply)."""
    parity = _as_record(record).parity
    return {"min_cosine": parity.get("min_cosine"), "max_rel_diff": parity.get("max_rel_diff")}
