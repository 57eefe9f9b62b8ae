"""Contracts declared once: the preprocessing spec shared by adapters, exporter, manifest and runtime.

This module is torch-free: the runtime reads the spec back from a bundle's ``manifest.json``.

Example:
    >>> spec = PreprocessSpec.from_processor_config(
    ...     {"image_processor_type": "BlipImageProcessor", "size": {"height": 384, "width": 384},
    ...      "resample": 3, "rescale_factor": 1 / 255,
    ...      "image_mean": [0.48145466, 0.4578275, 0.40821073],
    ...      "image_std": [0.26862954, 0.26130258, 0.27577711]})
    >>> (spec.height, spec.width, spec.interpolation, spec.resize_mode)
    (384, 384, 'bicubic', 'stretch')
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Any, Callable, Mapping

from edgevlp.errors import InputError, ModelLoadError

__all__ = [
    "PreprocessSpec",
    "PreprocessSpecError",
    "PreprocessSpecTypeError",
    "RESIZE_MODES",
    "INTERPOLATIONS",
    "CHANNEL_ORDERS",
    "MAX_SPEC_SIDE",
]

#: How a frame is brought to the model's size. The one list of mode names: the C++ extension
#: exposes its enum by these names (``edgevlp._preprocess.Mode``) and the runtime checks they agree.
#: ``stretch``: resize to (height, width) ignoring aspect; ``shortest_edge``: scale the short side to
#: ``shortest_edge`` then centre-crop to (height, width); ``pad_square``: pad bottom/right to a square
#: with ``pad_value`` then resize (OWLv2); ``letterbox``: aspect-preserving resize, centred padding.
RESIZE_MODES = ("stretch", "shortest_edge", "pad_square", "letterbox")
#: Resize filters, with cv2.resize semantics (``edgevlp._preprocess.Interp`` has the same names).
INTERPOLATIONS = ("nearest", "bilinear", "bicubic", "area", "lanczos")
#: Channel order of the model input; frames arrive BGR (as cv2 reads them).
CHANNEL_ORDERS = ("RGB", "BGR")
#: Largest height, width, crop side and shortest_edge a spec may ask for.
MAX_SPEC_SIDE = 16384

# PIL.Image.Resampling values as stored in HF preprocessor_config.json files.
_PIL_RESAMPLE = {0: "nearest", 1: "lanczos", 2: "bilinear", 3: "bicubic", 4: "area", 5: "bilinear"}


class PreprocessSpecError(ModelLoadError, InputError):
    """A :class:`PreprocessSpec` field is invalid; the message names every bad field and what it takes.

    A :class:`~edgevlp.errors.ModelLoadError` (a spec comes from a model or bundle) and an
    :class:`~edgevlp.errors.InputError` (a ``ValueError``: a caller built it).
    """


class PreprocessSpecTypeError(PreprocessSpecError, TypeError):
    """A :class:`PreprocessSpecError` where a field has the wrong type (also a ``TypeError``)."""


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_real(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


_Report = Callable[..., None]


def _check_side(value: object, name: str, bad: _Report) -> None:
    if not _is_int(value):
        bad(f"{name}={value!r} (expected an int in 1..{MAX_SPEC_SIDE})", wrong_type=True)
    elif not 1 <= value <= MAX_SPEC_SIDE:  # type: ignore[operator]
        bad(f"{name}={value!r} (expected an int in 1..{MAX_SPEC_SIDE})")


def _check_choice(value: object, name: str, choices: tuple[str, ...], bad: _Report) -> None:
    if not isinstance(value, str):
        bad(f"{name}={value!r} (expected a str, one of {', '.join(choices)})", wrong_type=True)
    elif value not in choices:
        bad(f"{name}={value!r} (expected one of {', '.join(choices)}; names are case-sensitive)")


def _check_triplet(value: object, name: str, bad: _Report) -> bool:
    """mean / std (lists already made tuples): exactly 3 finite numbers (R, G, B). True when so."""
    if not isinstance(value, tuple):
        bad(f"{name}={value!r} (expected a list or tuple of 3 numbers (R, G, B))", wrong_type=True)
    elif len(value) != 3:
        bad(f"{name}={value!r} (expected 3 numbers (R, G, B), got {len(value)} values)")
    elif not all(_is_real(v) for v in value):
        bad(f"{name}={value!r} (every value must be an int or float)", wrong_type=True)
    elif not all(math.isfinite(v) for v in value):
        bad(f"{name}={value!r} (every value must be finite)")
    else:
        return True
    return False


def _check_real(value: object, name: str, bad: _Report, positive: bool) -> None:
    need = "finite and > 0" if positive else "finite"
    if not _is_real(value):
        bad(f"{name}={value!r} (expected a number, {need})", wrong_type=True)
    elif not math.isfinite(value) or (positive and not value > 0):  # type: ignore[arg-type, operator]
        bad(f"{name}={value!r} (must be {need})")


@dataclass(frozen=True)
class PreprocessSpec:
    """How a uint8 frame becomes the vision graph's float32 NCHW input.

    Pixel math, per channel of the RGB image: ``(pixel * rescale - mean) / std``. ``pad_value`` is in
    the same unit as the rescaled pixel (OWLv2 pads with 0.5, a mid-grey). ``crop``, when given, is a
    centred ``(height, width)`` window of the resized image (larger than it: padded).

    Every field is checked here, once; the runtime (:mod:`edgevlp.runtime.preprocess`, numpy and
    C++) trusts a constructed spec and checks only the frame and output buffer against it.

    Raises:
        PreprocessSpecError (a ModelLoadError and InputError): naming each bad field; a
        :class:`PreprocessSpecTypeError` (also a ``TypeError``) when one has the wrong type.

    Example:
        >>> PreprocessSpec(height=224, width=224, resize_mode="shortest_edge").input_shape
        Traceback (most recent call last):
        ...
        edgevlp.spec.PreprocessSpecError: invalid preprocessing spec: resize_mode 'shortest_edge' needs shortest_edge >= 1 (the short side after resizing)
        >>> PreprocessSpec(height=256, width=256, resize_mode="shortest_edge", shortest_edge=256,
        ...                crop=(224, 224)).input_shape
        (1, 3, 224, 224)
    """

    height: int
    width: int
    resize_mode: str = "stretch"
    interpolation: str = "bicubic"
    shortest_edge: int | None = None
    crop: tuple[int, int] | None = None
    pad_value: float = 0.0
    rescale: float = 1.0 / 255.0
    mean: tuple[float, float, float] = (0.0, 0.0, 0.0)
    std: tuple[float, float, float] = (1.0, 1.0, 1.0)
    channel_order: str = "RGB"
    source: str = field(default="", compare=False)

    def __post_init__(self) -> None:
        for name in ("mean", "std", "crop"):  # JSON and to_dict() give lists; the spec keeps tuples
            if isinstance(getattr(self, name), list):
                object.__setattr__(self, name, tuple(getattr(self, name)))
        problems: list[tuple[str, bool]] = []  # (what is wrong, is it a wrong type)

        def bad(text: str, wrong_type: bool = False) -> None:
            problems.append((text, wrong_type))

        for name in ("height", "width"):
            _check_side(getattr(self, name), name, bad)
        _check_choice(self.resize_mode, "resize_mode", RESIZE_MODES, bad)
        _check_choice(self.interpolation, "interpolation", INTERPOLATIONS, bad)
        if self.shortest_edge is not None:
            _check_side(self.shortest_edge, "shortest_edge", bad)
        if self.resize_mode == "shortest_edge" and self.shortest_edge is None:
            bad("resize_mode 'shortest_edge' needs shortest_edge >= 1 (the short side after resizing)")
        elif self.resize_mode in RESIZE_MODES and self.resize_mode != "shortest_edge" and self.shortest_edge is not None:
            bad(f"shortest_edge={self.shortest_edge!r} is only used by resize_mode 'shortest_edge'; "
                f"pass None with resize_mode {self.resize_mode!r}")
        if self.crop is not None:
            if not isinstance(self.crop, tuple) or len(self.crop) != 2:
                bad(f"crop={self.crop!r} (expected None or (height, width), two ints in 1..{MAX_SPEC_SIDE})",
                    wrong_type=not isinstance(self.crop, tuple))
            else:
                _check_side(self.crop[0], "crop[0] (height)", bad)
                _check_side(self.crop[1], "crop[1] (width)", bad)
        _check_real(self.pad_value, "pad_value", bad, positive=False)
        _check_real(self.rescale, "rescale", bad, positive=True)
        _check_triplet(self.mean, "mean", bad)
        if _check_triplet(self.std, "std", bad) and not all(s > 0 for s in self.std):
            bad(f"std={self.std!r} (every value must be > 0: it divides)")
        _check_choice(self.channel_order, "channel_order", CHANNEL_ORDERS, bad)
        if not isinstance(self.source, str):
            bad(f"source={self.source!r} (expected a str)", wrong_type=True)
        if problems:
            cls = PreprocessSpecTypeError if any(t for _, t in problems) else PreprocessSpecError
            raise cls("invalid preprocessing spec: " + "; ".join(text for text, _ in problems))

    @property
    def input_shape(self) -> tuple[int, int, int, int]:
        """NCHW shape of one preprocessed image."""
        if self.crop is not None:
            return (1, 3, self.crop[0], self.crop[1])
        return (1, 3, self.height, self.width)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict (tuples become lists), as written into ``manifest.json``."""
        d = asdict(self)
        d["mean"], d["std"] = list(self.mean), list(self.std)
        d["crop"] = list(self.crop) if self.crop is not None else None
        return d

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "PreprocessSpec":
        """Inverse of :meth:`to_dict`; unknown keys are an error (a newer manifest needs a newer edgevlp)."""
        known = set(cls.__dataclass_fields__)
        unknown = set(d) - known
        if unknown:
            raise PreprocessSpecError(
                f"preprocessing spec has unknown keys {sorted(unknown)}; upgrade edgevlp to read it"
            )
        missing = [k for k in ("height", "width") if k not in d]
        if missing:
            raise PreprocessSpecError(f"preprocessing spec lacks {' and '.join(missing)}; re-export the bundle")
        return cls(**d)

    @classmethod
    def from_processor_config(cls, cfg: Mapping[str, Any], *, source: str = "") -> "PreprocessSpec":
        """Derive the spec from a Hugging Face ``preprocessor_config.json`` dict.

        Understands the keys of the BLIP, ViT, DeiT, TrOCR, OWL-ViT and OWLv2 image processors
        (``size``, ``resample``, ``do_center_crop``/``crop_size``, ``do_pad``, ``do_rescale``/
        ``rescale_factor``, ``do_normalize``/``image_mean``/``image_std``).
        """
        kind = str(cfg.get("image_processor_type", ""))
        size = cfg.get("size", {})
        if isinstance(size, int):
            size = {"height": size, "width": size}
        if not isinstance(size, Mapping) or not size:
            raise ModelLoadError(
                f"preprocessor config {source or ''} has no usable 'size' ({size!r}); expected "
                "{'height': H, 'width': W} or {'shortest_edge': N}"
            )
        resample = cfg.get("resample", 2)
        interpolation = _PIL_RESAMPLE.get(int(resample), "bilinear")
        shortest_edge = None
        if "height" in size and "width" in size:
            height, width = int(size["height"]), int(size["width"])
            mode = "stretch"
        elif "shortest_edge" in size:
            shortest_edge = int(size["shortest_edge"])
            height = width = shortest_edge
            mode = "shortest_edge"
        else:
            raise ModelLoadError(f"preprocessor config size {dict(size)} is not understood")
        crop = None
        if cfg.get("do_center_crop"):
            cs = cfg.get("crop_size", size)
            if isinstance(cs, int):
                cs = {"height": cs, "width": cs}
            crop_hw = (int(cs["height"]), int(cs["width"]))
            if mode == "shortest_edge" or crop_hw != (height, width):
                crop = crop_hw
        pad_value = 0.0
        if cfg.get("do_pad") and kind.startswith("Owlv2"):
            mode, pad_value = "pad_square", 0.5
        do_rescale = cfg.get("do_rescale", True)
        do_norm = cfg.get("do_normalize", True)
        mean = tuple(float(v) for v in cfg.get("image_mean", (0.0,) * 3)) if do_norm else (0.0,) * 3
        std = tuple(float(v) for v in cfg.get("image_std", (1.0,) * 3)) if do_norm else (1.0,) * 3
        return cls(
            height=height,
            width=width,
            resize_mode=mode,
            interpolation=interpolation,
            shortest_edge=shortest_edge,
            crop=crop,
            pad_value=pad_value,
            rescale=float(cfg.get("rescale_factor", 1 / 255)) if do_rescale else 1.0,
            mean=mean,  # type: ignore[arg-type]
            std=std,  # type: ignore[arg-type]
            source=source or kind,
        )
