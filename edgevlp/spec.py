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
from typing import Any, Mapping

from edgevlp.errors import ModelLoadError

__all__ = ["PreprocessSpec", "RESIZE_MODES", "INTERPOLATIONS"]

#: How a frame is brought to the model's size.
#: ``stretch``: resize to (height, width) ignoring aspect; ``shortest_edge``: scale the short side to
#: ``shortest_edge`` then centre-crop to ``crop``; ``pad_square``: pad bottom/right to a square with
#: ``pad_value`` then resize (OWLv2); ``letterbox``: aspect-preserving resize, centred padding.
RESIZE_MODES = ("stretch", "shortest_edge", "pad_square", "letterbox")
INTERPOLATIONS = ("nearest", "bilinear", "bicubic", "area", "lanczos")

# PIL.Image.Resampling values as stored in HF preprocessor_config.json files.
_PIL_RESAMPLE = {0: "nearest", 1: "lanczos", 2: "bilinear", 3: "bicubic", 4: "area", 5: "bilinear"}


@dataclass(frozen=True)
class PreprocessSpec:
    """How a uint8 frame becomes the vision graph's float32 NCHW input.

    Pixel math, per channel of the RGB image: ``(pixel * rescale - mean) / std``. ``pad_value`` is in
    the same unit as the rescaled pixel (OWLv2 pads with 0.5, a mid-grey).
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
        problems = []
        for name in ("height", "width"):
            value = getattr(self, name)
            if not isinstance(value, int) or not 1 <= value <= 16384:
                problems.append(f"{name}={value!r} (expected an int in 1..16384)")
        if self.resize_mode not in RESIZE_MODES:
            problems.append(f"resize_mode={self.resize_mode!r} (expected one of {', '.join(RESIZE_MODES)})")
        if self.interpolation not in INTERPOLATIONS:
            problems.append(
                f"interpolation={self.interpolation!r} (expected one of {', '.join(INTERPOLATIONS)})"
            )
        if len(self.mean) != 3 or len(self.std) != 3:
            problems.append(f"mean/std need 3 values each, got {len(self.mean)} and {len(self.std)}")
        elif not all(math.isfinite(s) and s > 0 for s in self.std):
            problems.append(f"std={self.std} (every value must be finite and > 0)")
        if not (math.isfinite(self.rescale) and self.rescale > 0):
            problems.append(f"rescale={self.rescale} (must be finite and > 0)")
        if self.channel_order not in ("RGB", "BGR"):
            problems.append(f"channel_order={self.channel_order!r} (expected RGB or BGR)")
        if problems:
            raise ModelLoadError("invalid preprocessing spec: " + "; ".join(problems))

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
            raise ModelLoadError(
                f"preprocessing spec has unknown keys {sorted(unknown)}; upgrade edgevlp to read it"
            )
        kw = dict(d)
        for key in ("mean", "std"):
            if key in kw:
                kw[key] = tuple(float(v) for v in kw[key])
        if kw.get("crop") is not None:
            kw["crop"] = tuple(int(v) for v in kw["crop"])
        return cls(**kw)

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
