"""Compression recipes as data: frozen, validated dataclasses loaded from TOML.

A recipe is an ordered list of stages; each stage is one config object whose type picks its handler
(:mod:`edgevlp.compress.stages`). Every config validates itself on construction and raises
:class:`~edgevlp.errors.RecipeError` naming the field, its value and the allowed range; the TOML loader
refuses unknown keys and wrong types and prefixes the message with where the field is
(``stages[1].quant.calibration.size``). ``Recipe.to_dict()`` is the TOML layout, so
``Recipe.from_dict(r.to_dict()) == r``.

TOML layout (one table per stage, keyed by its type)::

    name = "int8-ptq"
    version = 1

    [[stages]]
    [stages.quant]
    method = "ptq_static"
    backend = "onnxruntime"
    exclude = ["Softmax"]                      # fnmatch on node names, op types and graph roles
    [stages.quant.calibration]
    method = "percentile"
    size = 64
    source = "auto"                            # shapes:train for demo models, real photos otherwise
    [stages.quant.fallback]
    min_cosine = 0.99

Example:
    >>> r = Recipe(name="x", stages=(QuantConfig(method="ptq_dynamic"),))
    >>> Recipe.from_dict(r.to_dict()) == r
    True
    >>> PruneConfig(ratio=1.5)
    Traceback (most recent call last):
    ...
    edgevlp.errors.RecipeError: ratio = 1.5: expected a number with 0 <= ratio < 1 (PruneConfig)
"""

from __future__ import annotations

import dataclasses
import math
import os
import re
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from edgevlp._toml import tomllib
from edgevlp.errors import RecipeError

__all__ = ["RECIPE_VERSION", "AUTO_SCHEMES", "PruneConfig", "DistillConfig", "CalibrationConfig", "QuantScheme",
           "FallbackConfig", "QuantConfig", "Recipe", "StageConfig", "load_recipe", "to_toml", "STAGE_KEYS"]

#: The recipe format version this edgevlp reads and writes.
RECIPE_VERSION = 1

PRUNE_TARGETS = ("heads", "neurons")
PRUNE_PARTS = ("vision", "text")
PRUNE_SCOPES = ("global", "per_layer")
IMPORTANCE_METHODS = ("taylor", "activation", "magnitude")
QUANT_METHODS = ("ptq_static", "ptq_dynamic", "weight_only", "qat", "auto")
#: the INT8 schemes ``method = "auto"`` measures per graph (fastest within the accuracy bound wins).
AUTO_SCHEMES = ("ptq_static", "ptq_dynamic", "weight_only")
_OP_TYPE = re.compile(r"^[A-Z][A-Za-z0-9]*$")
QUANT_BACKENDS = ("onnxruntime", "openvino")
CALIBRATION_METHODS = ("minmax", "entropy", "percentile")
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")


def _bad(name: str, value: Any, expected: str, owner: str) -> RecipeError:
    err = RecipeError(f"{name} = {value!r}: expected {expected} ({owner})")
    err.field = name  # type: ignore[attr-defined]
    return err


def _type_ok(value: Any, tp: Any) -> bool:
    """Does ``value`` have the declared type ``tp`` (the subset of typing this module uses)?"""
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        return any(_type_ok(value, a) for a in typing.get_args(tp))
    if tp is type(None):
        return value is None
    if tp is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if tp is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if origin is tuple:
        item = typing.get_args(tp)[0]
        return isinstance(value, tuple) and all(_type_ok(v, item) for v in value)
    if origin is dict:
        return isinstance(value, dict)
    return isinstance(value, tp)


def _type_text(tp: Any) -> str:
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        return " or ".join(_type_text(a) for a in typing.get_args(tp))
    if tp is type(None):
        return "absent"
    if origin is tuple:
        return f"a list of {_type_text(typing.get_args(tp)[0])}"
    if dataclasses.is_dataclass(tp):
        return f"a table ({tp.__name__})"
    if origin is dict:
        return "a table of tables"
    return {str: "a string", int: "an integer", float: "a number", bool: "true or false"}.get(tp, str(tp))


class _Config:
    """Base of every recipe dataclass: type checks first, then the class's own ``_validate``."""

    def __post_init__(self) -> None:
        hints = typing.get_type_hints(type(self))
        for f in dataclasses.fields(self):  # type: ignore[arg-type]
            value = getattr(self, f.name)
            if isinstance(value, list):  # lists from code or TOML become tuples (frozen, hashable)
                value = tuple(value)
                object.__setattr__(self, f.name, value)
            if not _type_ok(value, hints[f.name]):
                raise _bad(f.name, value, _type_text(hints[f.name]), type(self).__name__)
            if isinstance(value, float) and not math.isfinite(value):
                raise _bad(f.name, value, "a finite number", type(self).__name__)
        self._validate()

    def _validate(self) -> None:
        pass

    def _fail(self, name: str, expected: str) -> RecipeError:
        return _bad(name, getattr(self, name), expected, type(self).__name__)

    def _choice(self, name: str, choices: tuple[str, ...]) -> None:
        if getattr(self, name) not in choices:
            raise self._fail(name, "one of " + ", ".join(repr(c) for c in choices))

    def _subset(self, name: str, choices: tuple[str, ...]) -> None:
        value = getattr(self, name)
        if not value or any(v not in choices for v in value) or len(set(value)) != len(value):
            raise self._fail(name, "a non-empty list of distinct values from " + ", ".join(map(repr, choices)))

    def _range(self, name: str, text: str, ok: bool) -> None:
        if not ok:
            raise self._fail(name, text)

    def to_dict(self) -> dict[str, Any]:
        """The TOML layout: nested tables for nested configs, lists for tuples, ``None`` fields left out."""
        out: dict[str, Any] = {}
        for f in dataclasses.fields(self):  # type: ignore[arg-type]
            value = getattr(self, f.name)
            if value is None:
                continue
            if isinstance(value, _Config):
                value = value.to_dict()
            elif isinstance(value, tuple):
                value = list(value)
            out[f.name] = value
        return out


def _check_patterns(cfg: _Config, name: str) -> None:
    for p in getattr(cfg, name):
        if not p.strip():
            raise cfg._fail(name, "non-empty fnmatch patterns (e.g. '*attn*', 'MatMul', 'text_decoder')")


@dataclass(frozen=True)
class PruneConfig(_Config):
    """Structured pruning of attention heads and/or MLP neurons, removing the weights physically.

    ``ratio`` is the fraction removed, ``scope`` says whether it applies to all layers together
    (``global``: the least important units anywhere) or to each layer (``per_layer``); ``importance``
    scores units on ``calibration_size`` samples of ``calibration_source``. ``exclude`` keeps modules
    whose name matches a pattern (fnmatch) unpruned.
    """

    targets: tuple[str, ...] = ("heads", "neurons")
    parts: tuple[str, ...] = ("vision", "text")
    ratio: float = 0.3
    scope: str = "global"
    importance: str = "taylor"
    calibration_size: int = 64
    calibration_source: str = "shapes:train"
    exclude: tuple[str, ...] = ()

    def _validate(self) -> None:
        self._subset("targets", PRUNE_TARGETS)
        self._subset("parts", PRUNE_PARTS)
        self._range("ratio", "a number with 0 <= ratio < 1", 0.0 <= self.ratio < 1.0)
        self._choice("scope", PRUNE_SCOPES)
        self._choice("importance", IMPORTANCE_METHODS)
        self._range("calibration_size", "an integer in 1..100000", 1 <= self.calibration_size <= 100_000)
        self._range("calibration_source", "shapes:SPLIT, a folder of images or coco:PATH",
                    bool(self.calibration_source.strip()))
        _check_patterns(self, "exclude")


@dataclass(frozen=True)
class DistillConfig(_Config):
    """Knowledge distillation from the original (teacher) model into the current (student) model.

    loss = ``task_weight`` * task loss + ``kl_weight`` * T^2 KL(teacher_T || student_T) on logits
    + ``hidden_weight`` * MSE of hidden states, T = ``temperature``.
    """

    temperature: float = 2.0
    task_weight: float = 1.0
    kl_weight: float = 1.0
    hidden_weight: float = 0.0
    steps: int = 1000
    lr: float = 5e-5
    batch_size: int = 16
    data: str = "shapes:train"
    checkpoint_every: int = 200
    #: bfloat16 autocast for teacher and student forward passes (the losses are reduced in float32)
    bf16: bool = False

    def _validate(self) -> None:
        self._range("temperature", "a number > 0 (typically 1..10)", self.temperature > 0)
        for name in ("task_weight", "kl_weight", "hidden_weight"):
            self._range(name, "a number >= 0", getattr(self, name) >= 0)
        if self.task_weight + self.kl_weight + self.hidden_weight <= 0:
            raise self._fail("kl_weight", "at least one of task_weight, kl_weight, hidden_weight > 0")
        self._range("steps", "an integer in 1..10000000", 1 <= self.steps <= 10_000_000)
        self._range("lr", "a number with 0 < lr < 1", 0 < self.lr < 1)
        self._range("batch_size", "an integer in 1..4096", 1 <= self.batch_size <= 4096)
        self._range("data", "shapes:SPLIT, a folder of images or coco:PATH", bool(self.data.strip()))
        self._range("checkpoint_every", "an integer >= 0 (0: only at the end)", self.checkpoint_every >= 0)


@dataclass(frozen=True)
class CalibrationConfig(_Config):
    """Calibration data and range estimator for static quantisation.

    ``source``: ``auto`` (``shapes:train`` for a model trained on shape scenes, the demo zoo; the
    bundled real ``photos`` for any other model), ``shapes:train`` (procedural scenes), ``photos``, a
    folder of images, or ``coco:PATH``; ``size`` images are used (the decoder is calibrated on every
    step of a greedy decode of each image). ``percentile`` is used by ``method = "percentile"`` only.
    ``max_samples``: the most feeds one graph is calibrated on, evenly spaced (a decoder gives one per
    generated token: 64 images x 16 steps is four times more than its ranges need, at ~20 ms each on a
    BERT-base step). Ranges are collected once per graph and reused by every scheme and fallback
    candidate.
    """

    method: str = "minmax"
    size: int = 64
    source: str = "auto"
    percentile: float = 99.999
    max_samples: int = 256

    def _validate(self) -> None:
        self._choice("method", CALIBRATION_METHODS)
        self._range("size", "an integer in 1..100000", 1 <= self.size <= 100_000)
        self._range("source", "auto, shapes:SPLIT, photos, a folder of images or coco:PATH",
                    bool(self.source.strip()))
        self._range("percentile", "a number with 90 < percentile <= 100", 90 < self.percentile <= 100)
        self._range("max_samples", "an integer in 1..1000000", 1 <= self.max_samples <= 1_000_000)


@dataclass(frozen=True)
class QuantScheme(_Config):
    """Integer scheme of a tensor kind: symmetric (zero point 0) or asymmetric; per-channel or per-tensor.

    For weights of ``method = "weight_only"``: ``bits`` 8 or 4 and ``block_size`` weights per scale (a
    power of two >= 16; onnxruntime ``MatMulNBits`` blocks, NNCF's INT4 ``group_size``); on onnxruntime
    ``accuracy_level``, the compute type of the kernel: 0 unset, 1 fp32, 2 fp16, 3 bf16, 4 int8
    (activations quantised per block at run time: the fast one on VNNI / dot-product CPUs). Everything
    else is 8-bit.
    """

    symmetric: bool = True
    per_channel: bool = False
    bits: int = 8
    block_size: int = 32
    accuracy_level: int = 4

    def _validate(self) -> None:
        self._range("bits", "8, or 4 (weight-only)", self.bits in (4, 8))
        self._range("block_size", "a power of two >= 16 (e.g. 32, 64, 128)",
                    self.block_size >= 16 and self.block_size & (self.block_size - 1) == 0)
        self._range("accuracy_level", "an integer in 0..4 (4: int8 compute)", self.accuracy_level in range(5))


@dataclass(frozen=True)
class FallbackConfig(_Config):
    """Mixed-precision fallback: keep the fewest layers in FP32 needed to stay within tolerance.

    ``min_cosine``: every output of every quantised graph must keep at least this cosine similarity
    with FP32 on held-out calibration samples. ``max_metric_drop``: largest allowed relative drop of the
    task metric (CIDEr / mAP@.5), e.g. 0.01 for 99 % of FP32. ``max_rel_diff`` (optional, with
    ``min_cosine``): also require max |INT8 - FP32| <= max_rel_diff * max |FP32| per output (what
    `edgevlp export`'s parity checks, atol aside). ``max_layers`` caps how many layer groups may be kept
    in FP32. ``min_answer_match`` (a generating decoder's table, e.g. a VLM's
    ``[stages.quant.graphs.decoder.fallback]``): judge the candidates on whole answers instead of one
    step's outputs: at least this fraction of the held-out prompts must get a greedy answer token for
    token equal to FP32's (1.0: every one), the candidate decoder running on its own KV cache.
    """

    min_cosine: float | None = None
    max_metric_drop: float | None = None
    max_rel_diff: float | None = None
    max_layers: int = 16
    min_answer_match: float | None = None

    @property
    def bound(self) -> float | None:
        """The tolerance the fallback search holds the graph to (answers first, then cosine)."""
        return self.min_answer_match if self.min_answer_match is not None else self.min_cosine

    def _validate(self) -> None:
        if self.min_cosine is not None:
            self._range("min_cosine", "a number with 0 < min_cosine <= 1", 0 < self.min_cosine <= 1)
        if self.max_metric_drop is not None:
            self._range("max_metric_drop", "a number with 0 <= max_metric_drop < 1",
                        0 <= self.max_metric_drop < 1)
        if self.max_rel_diff is not None:
            self._range("max_rel_diff", "a number with 0 < max_rel_diff <= 1", 0 < self.max_rel_diff <= 1)
            if self.min_cosine is None:
                raise self._fail("min_cosine", "a min_cosine to go with max_rel_diff")
        self._range("max_layers", "an integer in 0..10000", 0 <= self.max_layers <= 10_000)
        if self.min_answer_match is not None:
            self._range("min_answer_match", "a fraction with 0 < min_answer_match <= 1",
                        0 < self.min_answer_match <= 1)
        if self.min_cosine is None and self.max_metric_drop is None and self.min_answer_match is None:
            raise self._fail("min_cosine", "min_cosine, min_answer_match and/or max_metric_drop (omit [fallback] "
                             "to disable it)")


@dataclass(frozen=True)
class QuantConfig(_Config):
    """INT8 quantisation of the exported graphs.

    ``include`` / ``exclude`` are fnmatch patterns tried on every node's name, its op type and its graph
    role (``vision_encoder``, ``text_decoder``, ...): a node is quantised when its op type is one of
    ``op_types``, some include pattern matches it and no exclude pattern does (``op_types`` defaults to
    the matrix products: quantising the Add/Mul/Softmax around them too costs a requantisation per op
    and was slower on CPU). ``train`` (QAT only): the fine-tuning schedule, distilled from the FP32
    model.

    ``method = "auto"`` measures each of ``schemes`` (default: every scheme the backend offers, from
    ``ptq_static``, ``ptq_dynamic``, ``weight_only``) on every graph and keeps the fastest whose outputs
    stay within ``fallback.min_cosine`` (and ``max_rel_diff``) of FP32; without a fallback table, the
    fastest. ``weight_only`` on onnxruntime is blockwise (``MatMulNBits``, 32 weights per scale) whatever
    ``weights.per_channel`` says (which applies to the other two).

    ``graphs``: per graph role, a table overriding this stage's ``method``, ``schemes``, ``weights``,
    ``activations``, ``include``, ``exclude``, ``op_types`` and ``fallback`` for that graph (e.g. a 4-bit
    weight-only ``decoder`` beside a static INT8 ``vision_encoder``); :meth:`for_role` gives the
    resulting config. Backend and calibration are the stage's.
    """

    method: str = "ptq_static"
    backend: str = "onnxruntime"
    calibration: CalibrationConfig = field(default_factory=CalibrationConfig)
    activations: QuantScheme = field(default_factory=lambda: QuantScheme(symmetric=False))
    weights: QuantScheme = field(default_factory=lambda: QuantScheme(symmetric=True, per_channel=True))
    include: tuple[str, ...] = ("*",)
    exclude: tuple[str, ...] = ()
    op_types: tuple[str, ...] = ("MatMul", "Gemm", "Conv")
    schemes: tuple[str, ...] = ()
    fallback: FallbackConfig | None = None
    train: DistillConfig | None = None
    graphs: dict[str, Any] = field(default_factory=dict, hash=False)  # compared, not hashed (a dict)

    #: the keys a ``graphs.ROLE`` table may override
    ROLE_KEYS: typing.ClassVar[tuple[str, ...]] = ("method", "schemes", "weights", "activations", "include",
                                                   "exclude", "op_types", "fallback")

    def for_role(self, role: str) -> "QuantConfig":
        """This stage's config for graph ``role``: its ``graphs.ROLE`` table merged over the rest.

        Example:
            >>> cfg = QuantConfig(method="ptq_static", graphs={"decoder": {"method": "weight_only",
            ...                                                           "weights": {"bits": 4}}})
            >>> cfg.for_role("decoder").weights.bits, cfg.for_role("vision_encoder").method
            (4, 'ptq_static')
        """
        override = self.graphs.get(role)
        if not override:
            return self
        base = {k: v for k, v in self.to_dict().items() if k != "graphs"}
        for key, value in override.items():
            base[key] = {**base.get(key, {}), **value} if isinstance(value, dict) and key != "fallback" else value
        return _build(QuantConfig, base, f"graphs.{role}.", "recipe")

    def _validate(self) -> None:
        self._choice("method", QUANT_METHODS)
        self._choice("backend", QUANT_BACKENDS)
        if not self.op_types or not all(_OP_TYPE.match(t) for t in self.op_types):
            raise self._fail("op_types", "a non-empty list of ONNX op types (e.g. ['MatMul', 'Gemm', 'Conv'])")
        if self.schemes and self.method != "auto":
            raise self._fail("schemes", f"no schemes list: only method 'auto' reads it (method is {self.method!r})")
        if self.schemes:
            self._subset("schemes", AUTO_SCHEMES)
        if not self.include:
            raise self._fail("include", "at least one pattern ('*' quantises everything)")
        _check_patterns(self, "include")
        _check_patterns(self, "exclude")
        if self.activations.per_channel:
            raise _bad("activations.per_channel", True, "false (per-channel applies to weights only)",
                       "QuantConfig")
        if self.activations.bits != 8:
            raise _bad("activations.bits", self.activations.bits, "8 (4 bits apply to weight-only weights)",
                       "QuantConfig")
        if self.weights.bits != 8 and self.method != "weight_only":
            raise _bad("weights.bits", self.weights.bits, "8, or 4 with method 'weight_only' (onnxruntime "
                       "MatMulNBits, NNCF INT4 weight compression)", "QuantConfig")
        if self.method == "qat" and self.train is None:
            raise self._fail("train", "a [train] table (DistillConfig: steps, lr, ...) for method 'qat'")
        if self.method != "qat" and self.train is not None:
            raise self._fail("train", f"no [train] table: only method 'qat' trains (method is {self.method!r})")
        self._validate_roles()
        if self.method == "weight_only" and self.backend == "onnxruntime" and self.weights.per_channel:
            raise _bad("weights.per_channel", True, "false for method 'weight_only' on onnxruntime (its "
                       "MatMulNBits INT8 weights are blockwise, one scale per 32 weights)", "QuantConfig")
        if self.backend == "openvino":
            if self.method == "ptq_dynamic" or "ptq_dynamic" in self.schemes:
                raise self._fail("method" if self.method == "ptq_dynamic" else "schemes",
                                 "ptq_static, weight_only, qat or auto for backend 'openvino' "
                                 "(OpenVINO has no dynamic quantisation; use backend 'onnxruntime')")
            if self.calibration.method == "entropy":
                raise _bad("calibration.method", "entropy",
                           "'minmax' or 'percentile' for backend 'openvino' (entropy is onnxruntime-only)",
                           "QuantConfig")

    def _validate_roles(self) -> None:
        for role, override in self.graphs.items():
            if not isinstance(override, dict) or not override:
                raise _bad(f"graphs.{role}", override, "a non-empty table of overrides", "QuantConfig")
            bad = sorted(set(override) - set(self.ROLE_KEYS))
            if bad:
                raise _bad(f"graphs.{role}.{bad[0]}", override[bad[0]], "one of the keys "
                           + ", ".join(self.ROLE_KEYS) + " (backend and calibration are the stage's)", "QuantConfig")
            self.for_role(role)  # validates the merged config

    def candidate_schemes(self) -> tuple[str, ...]:
        """The INT8 schemes to try on each graph: ``(method,)``, or for ``auto`` its ``schemes`` (default:
        every scheme the backend offers).

        Example:
            >>> QuantConfig(method="auto", backend="openvino").candidate_schemes()
            ('ptq_static', 'weight_only')
        """
        if self.method != "auto":
            return (self.method,)
        offered = tuple(s for s in AUTO_SCHEMES if self.backend != "openvino" or s != "ptq_dynamic")
        return self.schemes or offered


StageConfig = typing.Union[PruneConfig, DistillConfig, QuantConfig]
#: stage key in TOML / to_dict -> config type.
STAGE_KEYS: dict[str, type[_Config]] = {"prune": PruneConfig, "distill": DistillConfig, "quant": QuantConfig}
_KEY_OF = {cls: key for key, cls in STAGE_KEYS.items()}


@dataclass(frozen=True)
class Recipe(_Config):
    """A named, versioned, ordered list of stages; quantisation, if any, comes last (once).

    Example:
        >>> Recipe(name="p", stages=(PruneConfig(ratio=0.3), DistillConfig(steps=10))).stage_names()
        ['prune', 'distill']
    """

    name: str
    stages: tuple[PruneConfig | DistillConfig | QuantConfig, ...]
    version: int = RECIPE_VERSION
    description: str = ""

    def _validate(self) -> None:
        self._range("name", "1-64 characters from A-Z a-z 0-9 . _ - (starting with a letter or digit)",
                    bool(_NAME.match(self.name)))
        if self.version != RECIPE_VERSION:
            raise self._fail("version", f"{RECIPE_VERSION} (the recipe format this edgevlp reads)")
        if not self.stages:
            raise self._fail("stages", "at least one stage ([[stages]] with a prune, distill or quant table)")
        quant = [i for i, s in enumerate(self.stages) if isinstance(s, QuantConfig)]
        if len(quant) > 1 or (quant and quant[0] != len(self.stages) - 1):
            raise _bad("stages", self.stage_names(),
                       "at most one quant stage, and it must be the last (it works on the exported graphs)",
                       "Recipe")

    def stage_names(self) -> list[str]:
        return [_KEY_OF[type(s)] for s in self.stages]

    @property
    def quant(self) -> QuantConfig | None:
        """The quantisation stage, if any."""
        return next((s for s in self.stages if isinstance(s, QuantConfig)), None)

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"name": self.name, "version": self.version}
        if self.description:
            out["description"] = self.description
        out["stages"] = [{_KEY_OF[type(s)]: s.to_dict()} for s in self.stages]
        return out

    @classmethod
    def from_dict(cls, data: dict[str, Any], where: str = "recipe") -> "Recipe":
        """Build from the TOML layout; errors say ``where: stages[i].key.field = value: expected ...``."""
        return _build(cls, data, "", where)


# ------------------------------------------------------------------------------------------- loading
def _located(err: RecipeError, where: str, prefix: str) -> RecipeError:
    text = str(err)
    return RecipeError(f"{where}: {prefix}{text}")


def _build(cls: type, data: Any, prefix: str, where: str) -> Any:
    if not isinstance(data, dict):
        raise RecipeError(f"{where}: {prefix.rstrip('.') or 'recipe'} = {data!r}: expected a table "
                          f"({cls.__name__})")
    hints = typing.get_type_hints(cls)
    known = [f.name for f in dataclasses.fields(cls)]
    unknown = sorted(set(data) - set(known))
    if unknown:
        raise RecipeError(f"{where}: unknown key{'s' if len(unknown) > 1 else ''} "
                          f"{', '.join(prefix + k for k in unknown)} in {cls.__name__}; known keys: "
                          f"{', '.join(known)}")
    kwargs: dict[str, Any] = {}
    for key, value in data.items():
        tp = hints[key]
        nested = [a for a in (typing.get_args(tp) or (tp,)) if dataclasses.is_dataclass(a)]
        if cls is Recipe and key == "stages":
            value = _build_stages(value, where)
        elif nested and isinstance(value, dict):
            value = _build(nested[0], value, f"{prefix}{key}.", where)
        kwargs[key] = value
    missing = [f.name for f in dataclasses.fields(cls)
               if f.name not in kwargs and f.default is dataclasses.MISSING
               and f.default_factory is dataclasses.MISSING]  # type: ignore[misc]
    if missing:
        raise RecipeError(f"{where}: missing key{'s' if len(missing) > 1 else ''} "
                          f"{', '.join(prefix + m for m in missing)} ({cls.__name__})")
    try:
        return cls(**kwargs)
    except RecipeError as err:
        raise _located(err, where, prefix) from None


def _build_stages(value: Any, where: str) -> tuple[Any, ...]:
    if not isinstance(value, list):
        raise RecipeError(f"{where}: stages = {value!r}: expected an array of tables ([[stages]])")
    stages = []
    for i, item in enumerate(value):
        if not isinstance(item, dict) or len(item) != 1:
            keys = list(item) if isinstance(item, dict) else item
            raise RecipeError(f"{where}: stages[{i}] = {keys!r}: expected exactly one of "
                              f"{', '.join(STAGE_KEYS)} (e.g. [[stages]] then [stages.quant])")
        (key, body), = item.items()
        if key not in STAGE_KEYS:
            raise RecipeError(f"{where}: unknown stage type stages[{i}].{key}; known stage types: "
                              f"{', '.join(STAGE_KEYS)}")
        stages.append(_build(STAGE_KEYS[key], body, f"stages[{i}].{key}.", where))
    return tuple(stages)


def load_recipe(path: str | os.PathLike[str]) -> Recipe:
    """Read and validate a TOML recipe.

    Example:
        >>> load_recipe("recipes/int8-ptq.toml").quant.method   # doctest: +SKIP
        'ptq_static'
    """
    path = Path(path)
    if not path.is_file():
        shipped = Path(__file__).resolve().parents[2] / "recipes"
        hint = f"; shipped recipes: {', '.join(sorted(p.name for p in shipped.glob('*.toml')))}" \
            if shipped.is_dir() else ""
        raise RecipeError(f"recipe file {path} not found{hint}")
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as err:
        raise RecipeError(f"{path} is not valid TOML: {err}") from None
    return Recipe.from_dict(data, where=str(path))


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, str):
        return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'
    if isinstance(value, list):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    raise TypeError(f"cannot write {value!r} as TOML")


def _toml_table(data: dict[str, Any], header: str, lines: list[str]) -> None:
    lines.append(f"[{header}]")
    lines += [f"{k} = {_toml_value(v)}" for k, v in data.items() if not isinstance(v, dict)]
    for k, v in data.items():
        if isinstance(v, dict):
            lines.append("")
            _toml_table(v, f"{header}.{k}", lines)


def to_toml(recipe: Recipe) -> str:
    """The recipe as TOML text that :func:`load_recipe` reads back to an equal recipe.

    Example:
        >>> text = to_toml(Recipe(name="x", stages=(QuantConfig(),)))
        >>> Recipe.from_dict(tomllib.loads(text)) == Recipe(name="x", stages=(QuantConfig(),))
        True
    """
    data = recipe.to_dict()
    lines = [f"{k} = {_toml_value(v)}" for k, v in data.items() if k != "stages"]
    for stage in data["stages"]:
        (key, body), = stage.items()
        lines += ["", "[[stages]]"]
        _toml_table(body, f"stages.{key}", lines)
    return "\n".join(lines) + "\n"
