"""Torch-free input side of SmolVLM / Idefics3: one BGR frame and a question -> pixel tensors and prompt.

Reproduces, for ONE image, what transformers 4.57 does in

* ``Idefics3ImageProcessor.preprocess`` / ``SmolVLMImageProcessor.preprocess`` (the two are the
  same code): ``resize`` to ``size.longest_edge`` (``_resize_output_size_rescale_to_max_len``, its
  even-number rule, then ``_resize_output_size_scale_below_upper_bound`` at 4096),
  ``resize_for_vision_encoder`` (up to multiples of the tile side ``max_image_size.longest_edge``),
  ``split_image`` (row-major tiles, then the global image resized to one tile), ``rescale``,
  ``normalize``, ``pad`` (:func:`split_image`);
* ``get_image_prompt_string`` / ``_prompt_split_image`` / ``_prompt_single_image`` of
  ``processing_idefics3.py`` and ``processing_smolvlm.py``, which build the same string in 4.57.6
  (:func:`expand_image_tokens`);
* ``utils.chat_template_utils._compile_jinja_template`` / ``render_jinja_template`` as
  ``apply_chat_template`` calls them (:class:`ChatTemplate`, :func:`build_prompt`).

HF resizes with PIL. :func:`pil_resize` is a numpy port of Pillow's two-pass resampler (same
kernels, same bounds, 22-bit fixed point on uint8, horizontal pass first), run by the C++ extension
(``edgevlp._preprocess.pil_resize``, the same bytes, several times faster) when it is built, so the default
``method="pil"`` gives HF's pixels; ``method="cv2"`` (``cv2.resize``: LANCZOS4 up, AREA down) is
faster and close (figures in ``tests/test_vlm_processing.py``). Pass order: Pillow 13 (installed
here) runs the vertical pass first when the height shrinks and the width grows (matched here) and
for some pairs where both shrink by different factors (e.g. 64x64 -> 30x50; not matched: the
rule was not found, pixels there differ by up to ~0.2 of the normalised range on noise). Every
resize in the tests (photos, tiles, global images) equals HF. Imports numpy and stdlib only; cv2
when asked for, jinja2 when a template is rendered.

Example:
    >>> import numpy as np
    >>> spec = ImageSplitSpec(longest_edge=128, tile_size=64)
    >>> out = split_image(np.zeros((60, 100, 3), np.uint8), spec)
    >>> out.pixel_values.shape, (out.rows, out.cols)
    ((1, 5, 3, 64, 64), (2, 2))
    >>> expand_image_tokens("User:<image>Hi", 0, 0, image_seq_len=2)
    'User:<fake_token_around_image><global-img><image><image><fake_token_around_image>Hi'
"""

from __future__ import annotations

import functools
import json
import math
import operator
from dataclasses import asdict, dataclass
from datetime import datetime
from typing import Any, Callable, Mapping, Sequence

import numpy as np

from edgevlp.errors import DependencyError, InputError, ModelLoadError
from edgevlp.runtime import preprocess as _pp
from edgevlp.spec import _check_real, _check_side, _check_triplet, _is_int

__all__ = ["ImageSplitSpec", "ImageSplitSpecError", "SplitImage", "split_image", "pil_resize",
           "expand_image_tokens", "ChatTemplate", "build_prompt", "IMAGE_PROCESSORS", "MAX_IMAGE_SIDE"]

#: ``image_processor_type`` values whose slow (PIL) pipeline this module reproduces.
IMAGE_PROCESSORS = ("Idefics3ImageProcessor", "SmolVLMImageProcessor")
#: HF's ``MAX_IMAGE_SIZE``: the longest side after the first resize.
MAX_IMAGE_SIDE = 4096
_PRECISION_BITS = 32 - 8 - 2  # Pillow's Resample.c
#: :func:`pil_resize` limits, as in the extension: a side, and the values of a pass (input, output, between).
_MAX_RESIZE_SIDE = 65536
_MAX_RESIZE_VALUES = 1 << 31


def _sinc(x: np.ndarray) -> np.ndarray:
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(x == 0.0, 1.0, np.sin(x * math.pi) / (x * math.pi))


def _hamming(x: np.ndarray) -> np.ndarray:
    x = np.abs(x)
    with np.errstate(invalid="ignore", divide="ignore"):
        v = np.sin(x * math.pi) / (x * math.pi) * (0.54 + 0.46 * np.cos(x * math.pi))
    return np.where(x == 0.0, 1.0, np.where(x >= 1.0, 0.0, v))


def _bicubic(x: np.ndarray, a: float = -0.5) -> np.ndarray:
    x = np.abs(x)
    return np.where(x < 1.0, ((a + 2.0) * x - (a + 3.0)) * x * x + 1,
                    np.where(x < 2.0, (((x - 5) * x + 8) * x - 4) * a, 0.0))


#: PIL.Image.Resampling value -> (name, support, kernel), as in Pillow's Resample.c.
_PIL_FILTERS: dict[int, tuple[str, float, Callable[[np.ndarray], np.ndarray]]] = {
    1: ("LANCZOS", 3.0, lambda x: np.where((x >= -3.0) & (x < 3.0), _sinc(x) * _sinc(x / 3.0), 0.0)),
    2: ("BILINEAR", 1.0, lambda x: np.maximum(1.0 - np.abs(x), 0.0)),
    3: ("BICUBIC", 2.0, _bicubic),
    4: ("BOX", 0.5, lambda x: ((x > -0.5) & (x <= 0.5)).astype(np.float64)),
    5: ("HAMMING", 1.0, _hamming),
}


@functools.lru_cache(maxsize=64)
def _coeffs(in_size: int, out_size: int, resample: int) -> tuple[np.ndarray, np.ndarray]:
    """Pillow's ``precompute_coeffs`` + ``normalize_coeffs_8bpc``: (first index, int32 taps)."""
    _, support, kernel = _PIL_FILTERS[resample]
    scale = in_size / out_size
    filterscale = max(scale, 1.0)
    support *= filterscale
    ksize = math.ceil(support) * 2 + 1
    center = (np.arange(out_size) + 0.5) * scale
    xmin = np.maximum(np.trunc(center - support + 0.5), 0).astype(np.int64)
    count = np.minimum(np.trunc(center + support + 0.5), in_size).astype(np.int64) - xmin
    x = np.arange(ksize)
    w = np.where(x < count[:, None], kernel((x + xmin[:, None] - center[:, None] + 0.5) / filterscale), 0.0)
    ww = np.zeros(out_size)
    for i in range(ksize):  # left-to-right sum, as Pillow does
        ww = ww + w[:, i]
    w = np.where(ww[:, None] != 0.0, w / np.where(ww == 0.0, 1.0, ww)[:, None], w)
    one = float(1 << _PRECISION_BITS)
    k = np.trunc(np.where(w < 0, -0.5 + w * one, 0.5 + w * one)).astype(np.int32)
    return xmin, k


def _resample_axis(img: np.ndarray, out_size: int, axis: int, resample: int) -> np.ndarray:
    xmin, k = _coeffs(img.shape[axis], out_size, resample)
    last = img.shape[axis] - 1
    acc = np.full(img.shape[:axis] + (out_size,) + img.shape[axis + 1:], 1 << (_PRECISION_BITS - 1), np.int32)
    shape = [1] * img.ndim
    shape[axis] = out_size
    for i in range(k.shape[1]):
        taps = k[:, i]
        if not taps.any():
            continue
        src = np.take(img, np.minimum(xmin + i, last), axis=axis).astype(np.int32)
        acc += src * taps.reshape(shape)
    return np.clip(acc >> _PRECISION_BITS, 0, 255).astype(np.uint8)


def _pil_resize_reference(img: np.ndarray, height: int, width: int, resample: int = 1) -> np.ndarray:
    """The numpy port of Pillow's resampler (the reference of the extension's ``pil_resize``); no checks."""
    if img.shape[:2] == (height, width):
        return img.copy()
    if height < img.shape[0] and width > img.shape[1]:  # Pillow 13 goes vertical first here (measured)
        return _resample_axis(_resample_axis(img, height, 0, resample), width, 1, resample)
    if img.shape[1] != width:  # else horizontal first; each pass only when its size changes
        img = _resample_axis(img, width, 1, resample)
    if img.shape[0] != height:
        img = _resample_axis(img, height, 0, resample)
    return img


def _check_int(value: object, name: str, lo: int, hi: int, what: str) -> int:
    """``operator.index(value)`` in lo..hi (numpy ints pass, bools do not), as the extension takes it."""
    try:
        if isinstance(value, (bool, np.bool_)):
            raise TypeError
        v = operator.index(value)  # type: ignore[arg-type]
    except TypeError:
        raise TypeError(f"{name} must be an int, got {value!r}") from None
    if not lo <= v <= hi:
        raise InputError(f"{name} must be {what}, got {value!r}")
    return v


def _check_resize_args(img: object, height: object, width: object, resample: object) -> tuple[int, int, int]:
    """The extension's checks, same words: TypeError for a wrong type, InputError for a bad value."""
    if not isinstance(img, np.ndarray):
        raise TypeError(f"img must be a numpy.ndarray (uint8 HxW or HxWxC), got {type(img).__name__}")
    if img.dtype != np.uint8 or img.ndim not in (2, 3):
        raise InputError(f"img must be uint8 HxW or HxWxC, got {img.dtype} with shape {img.shape}")
    if img.size == 0:
        raise InputError(f"img is empty (shape {img.shape}); expected H, W (and C) >= 1")
    side = f"in 1..{_MAX_RESIZE_SIDE}"
    h = _check_int(height, "height", 1, _MAX_RESIZE_SIDE, side)
    w = _check_int(width, "width", 1, _MAX_RESIZE_SIDE, side)
    r = _check_int(resample, "resample", 1, 5, "1 (LANCZOS), 2 (BILINEAR), 3 (BICUBIC), 4 (BOX) or 5 (HAMMING)")
    channels = img.shape[2] if img.ndim == 3 else 1
    if max(img.shape[0], h) * max(img.shape[1], w) * channels > _MAX_RESIZE_VALUES:
        raise InputError(f"img is too large: shape {img.shape} resized to ({h}, {w}) needs more than "
                         f"{_MAX_RESIZE_VALUES} values in one pass")
    return h, w, r


def pil_resize(img: np.ndarray, height: int, width: int, resample: int = 1) -> np.ndarray:
    """Resize a uint8 HxWxC (or HxW) image exactly as ``PIL.Image.resize((width, height), resample)`` does.

    ``resample``: 1 LANCZOS, 2 BILINEAR, 3 BICUBIC, 4 BOX, 5 HAMMING (``PIL.Image.Resampling``).
    Runs the C++ extension (``edgevlp._preprocess.pil_resize``, same bytes) when it is built, else
    the numpy port; ``EDGEVLP_PREPROCESS`` picks as for :mod:`edgevlp.runtime.preprocess`
    (``reference``: numpy, ``extension``: the extension or :class:`ImportError`). Any strides.

    Raises:
        TypeError: ``img`` not an ndarray, a size or ``resample`` not an int.
        InputError (a ValueError): not uint8 HxW / HxWxC, empty, a side outside 1..65536,
            ``resample`` not in 1..5, or more than 2**31 values in a pass.

    Example:
        >>> pil_resize(np.full((4, 6, 3), 7, np.uint8), 2, 3).shape
        (2, 3, 3)
    """
    height, width, resample = _check_resize_args(img, height, width, resample)
    ext = _pp._ext if _pp.backend_name() == "extension" else None
    fn = getattr(ext, "pil_resize", None)
    if fn is None:
        return _pil_resize_reference(img, height, width, resample)
    return fn(np.ascontiguousarray(img), height, width, resample)


def _cv2_resize(img: np.ndarray, height: int, width: int, resample: int) -> np.ndarray:
    import cv2

    if img.shape[:2] == (height, width):
        return img.copy()
    down = height < img.shape[0] and width < img.shape[1]
    return cv2.resize(img, (width, height), interpolation=cv2.INTER_AREA if down else cv2.INTER_LANCZOS4)


_RESIZERS = {"pil": pil_resize, "cv2": _cv2_resize}


class ImageSplitSpecError(ModelLoadError, InputError):
    """An :class:`ImageSplitSpec` field is invalid; the message names each bad field and what it takes."""


@dataclass(frozen=True)
class ImageSplitSpec:
    """How the Idefics3 / SmolVLM image processor turns one image into tiles (written into the manifest).

    ``longest_edge`` is ``size.longest_edge``, ``tile_size`` is ``max_image_size.longest_edge``,
    ``resample`` a PIL filter int (1 LANCZOS, 2 BILINEAR, 3 BICUBIC, 4 BOX, 5 HAMMING). Defaults
    are the HF classes' own defaults.

    Example:
        >>> ImageSplitSpec(longest_edge=2048, tile_size=0)
        Traceback (most recent call last):
        ...
        edgevlp.runtime.vlm_processing.ImageSplitSpecError: invalid image split spec: tile_size=0 (expected an int in 1..16384)
    """

    longest_edge: int = 4 * 364
    tile_size: int = 364
    do_image_splitting: bool = True
    resample: int = 1
    do_resize: bool = True
    do_rescale: bool = True
    rescale_factor: float = 1 / 255
    do_normalize: bool = True
    image_mean: tuple[float, float, float] = (0.5, 0.5, 0.5)
    image_std: tuple[float, float, float] = (0.5, 0.5, 0.5)
    do_pad: bool = True

    def __post_init__(self) -> None:
        for name in ("image_mean", "image_std"):
            value = getattr(self, name)
            if isinstance(value, list):
                value = tuple(value)
            if isinstance(value, (int, float)) and not isinstance(value, bool):
                value = (value,) * 3  # HF takes one float for all channels
            object.__setattr__(self, name, value)
        problems: list[str] = []

        def bad(text: str, wrong_type: bool = False) -> None:
            problems.append(text)

        _check_side(self.longest_edge, "longest_edge", bad)
        _check_side(self.tile_size, "tile_size", bad)
        for name in ("do_image_splitting", "do_resize", "do_rescale", "do_normalize", "do_pad"):
            if not isinstance(getattr(self, name), bool):
                bad(f"{name}={getattr(self, name)!r} (expected true or false)")
        if not _is_int(self.resample) or self.resample not in _PIL_FILTERS:
            known = ", ".join(f"{k} {v[0]}" for k, v in _PIL_FILTERS.items())
            bad(f"resample={self.resample!r} (expected a PIL filter int: {known}; 0 NEAREST is not supported)")
        _check_real(self.rescale_factor, "rescale_factor", bad, positive=True)
        _check_triplet(self.image_mean, "image_mean", bad)
        if _check_triplet(self.image_std, "image_std", bad) and not all(s > 0 for s in self.image_std):
            bad(f"image_std={self.image_std!r} (every value must be > 0: it divides)")
        if problems:
            raise ImageSplitSpecError("invalid image split spec: " + "; ".join(problems))

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict (tuples become lists), as written into ``manifest.json``."""
        d = asdict(self)
        d["image_mean"], d["image_std"] = list(self.image_mean), list(self.image_std)
        return d

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> ImageSplitSpec:
        """Inverse of :meth:`to_dict`; unknown keys are an error (a newer manifest needs a newer edgevlp)."""
        unknown = set(d) - set(cls.__dataclass_fields__)
        if unknown:
            raise ImageSplitSpecError(f"image split spec has unknown keys {sorted(unknown)}; upgrade edgevlp")
        return cls(**d)

    @classmethod
    def from_processor_config(cls, cfg: Mapping[str, Any]) -> ImageSplitSpec:
        """From an ``Idefics3ImageProcessor`` / ``SmolVLMImageProcessor`` ``preprocessor_config.json`` dict.

        Example:
            >>> ImageSplitSpec.from_processor_config({"size": {"longest_edge": 2048},
            ...     "max_image_size": {"longest_edge": 512}}).tile_size
            512
        """
        kind = cfg.get("image_processor_type", IMAGE_PROCESSORS[0])
        if kind not in IMAGE_PROCESSORS:
            raise ImageSplitSpecError(f"preprocessor config image_processor_type={kind!r} is not one of "
                                      f"{', '.join(IMAGE_PROCESSORS)}; this module reproduces only those")
        sides = {}
        for key, default in (("size", 4 * 364), ("max_image_size", 364)):
            value = cfg.get(key, {"longest_edge": default})
            if not isinstance(value, Mapping) or set(value) != {"longest_edge"}:
                raise ImageSplitSpecError(f"preprocessor config {key}={value!r} (expected {{'longest_edge': N}}; "
                                          "height/width sizes are not supported)")
            sides[key] = value["longest_edge"]
        d = cls()
        return cls(longest_edge=sides["size"], tile_size=sides["max_image_size"],
                   **{f: cfg.get(f, getattr(d, f)) for f in ("do_image_splitting", "resample", "do_resize",
                      "do_rescale", "rescale_factor", "do_normalize", "image_mean", "image_std", "do_pad")})


@dataclass(frozen=True)
class SplitImage:
    """The vision inputs of one image: ``pixel_values`` float32 (1, N, 3, T, T), tiles row-major and
    the global image last; ``pixel_attention_mask`` bool (1, N, T, T); ``rows`` x ``cols`` tiles
    (0, 0 when the image was not split, N = 1)."""

    pixel_values: np.ndarray
    pixel_attention_mask: np.ndarray
    rows: int
    cols: int


def _longest_edge_size(height: int, width: int, max_len: int) -> tuple[int, int]:
    """HF ``get_resize_output_image_size``: longest side to ``max_len`` (even short side), then <= 4096."""
    aspect = width / height
    if width >= height:
        width, height = max_len, int(max_len / aspect)
        height += height % 2
    else:
        height, width = max_len, int(max_len * aspect)
        width += width % 2
    height, width = max(height, 1), max(width, 1)
    aspect = width / height
    if width >= height and width > MAX_IMAGE_SIDE:
        width, height = MAX_IMAGE_SIDE, int(MAX_IMAGE_SIDE / aspect)
    elif height > width and height > MAX_IMAGE_SIDE:
        height, width = MAX_IMAGE_SIDE, int(MAX_IMAGE_SIDE * aspect)
    return max(height, 1), max(width, 1)


def _vision_encoder_size(height: int, width: int, tile: int) -> tuple[int, int]:
    """HF ``resize_for_vision_encoder``: both sides up to multiples of ``tile``."""
    aspect = width / height
    if width >= height:
        width = math.ceil(width / tile) * tile
        height = math.ceil(int(width / aspect) / tile) * tile
    else:
        height = math.ceil(height / tile) * tile
        width = math.ceil(int(height * aspect) / tile) * tile
    return height, width


def split_image(frame_bgr: np.ndarray, spec: ImageSplitSpec, *, method: str = "pil") -> SplitImage:
    """Tile one uint8 HxWx3 BGR frame as the HF image processor does its RGB image.

    ``method``: ``"pil"`` (Pillow-exact resampling, HF's pixels) or ``"cv2"`` (faster, close).

    Example:
        >>> out = split_image(np.zeros((40, 40, 3), np.uint8), ImageSplitSpec(longest_edge=64, tile_size=64))
        >>> out.pixel_values.shape, out.rows, bool(out.pixel_attention_mask.all())
        ((1, 1, 3, 64, 64), 0, True)
    """
    if not isinstance(spec, ImageSplitSpec):
        raise InputError(f"spec must be an ImageSplitSpec, got {type(spec).__name__}; "
                         "build one with ImageSplitSpec.from_processor_config(cfg)")
    resize = _RESIZERS.get(method)
    if resize is None:
        raise InputError(f"method={method!r}; expected one of {', '.join(_RESIZERS)}")
    if not isinstance(frame_bgr, np.ndarray) or frame_bgr.dtype != np.uint8 or frame_bgr.ndim != 3 \
            or frame_bgr.shape[2] != 3 or min(frame_bgr.shape[:2]) < 1:
        what = (f"{frame_bgr.dtype} array of shape {frame_bgr.shape}" if isinstance(frame_bgr, np.ndarray)
                else type(frame_bgr).__name__)
        raise InputError(f"frame must be a uint8 HxWx3 BGR numpy array (as cv2 reads it), got {what}; "
                         "convert with frame.astype(np.uint8) / cv2.cvtColor(frame, cv2.COLOR_GRAY2BGR)")
    img = np.ascontiguousarray(frame_bgr[..., ::-1])  # HF works on RGB
    tile, r = spec.tile_size, spec.resample
    if spec.do_resize:
        img = resize(img, *_longest_edge_size(*img.shape[:2], spec.longest_edge), r)
    rows = cols = 0
    if spec.do_image_splitting:
        img = resize(img, *_vision_encoder_size(*img.shape[:2], tile), r)
        h, w = img.shape[:2]
        if h > tile or w > tile:
            rows, cols = math.ceil(h / tile), math.ceil(w / tile)
            th, tw = math.ceil(h / rows), math.ceil(w / cols)
            images = [img[y * th:min((y + 1) * th, h), x * tw:min((x + 1) * tw, w)]
                      for y in range(rows) for x in range(cols)]
            images.append(resize(img, tile, tile, r))
        else:
            images = [img]
    else:
        images = [resize(img, tile, tile, r)]
    lut = np.repeat(np.arange(256, dtype=np.float32)[None], 3, 0)  # per channel uint8 -> float32, as HF
    if spec.do_rescale:  # HF: float64 multiply, float32 cast, then float32 (x - mean) / std
        lut = (np.arange(256, dtype=np.float64) * spec.rescale_factor).astype(np.float32)[None].repeat(3, 0)
    if spec.do_normalize:
        lut = (lut - np.array(spec.image_mean, np.float32)[:, None]) / np.array(spec.image_std, np.float32)[:, None]
    ph, pw = max(i.shape[0] for i in images), max(i.shape[1] for i in images)
    pixels = np.zeros((1, len(images), 3, ph, pw), np.float32)
    mask = np.zeros((1, len(images), ph, pw), bool)
    for n, im in enumerate(images):
        for c in range(3):
            pixels[0, n, c, :im.shape[0], :im.shape[1]] = lut[c][im[..., c]]
        mask[0, n, :im.shape[0], :im.shape[1]] = True
    return SplitImage(pixels, mask, rows, cols)


def expand_image_tokens(prompt: str, rows: int, cols: int, *, image_seq_len: int, image_token: str = "<image>",
                        fake_token: str = "<fake_token_around_image>", global_token: str = "<global-img>") -> str:
    """Replace the one ``image_token`` in ``prompt`` by the string the processor substitutes.

    Idefics3Processor and SmolVLMProcessor (transformers 4.57.6) build the same string: per tile row,
    ``fake + <row_r_col_c> + image*seq_len`` for each column then ``"\\n"``; then ``"\\n" + fake +
    global + image*seq_len + fake`` (rows = cols = 0: the last part without the leading newline).

    Example:
        >>> expand_image_tokens("<image>", 1, 1, image_seq_len=1)
        '<fake_token_around_image><row_1_col_1><image>\\n\\n<fake_token_around_image><global-img><image><fake_token_around_image>'
    """
    if not _is_int(image_seq_len) or image_seq_len < 1:
        raise InputError(f"image_seq_len={image_seq_len!r}; expected an int >= 1 (the processor's image_seq_len)")
    if not (_is_int(rows) and _is_int(cols) and rows >= 0 and cols >= 0 and (rows == 0) == (cols == 0)):
        raise InputError(f"rows={rows!r}, cols={cols!r}; expected both 0 (not split) or both >= 1 (from split_image)")
    parts = prompt.split(image_token)
    if len(parts) != 2:
        raise InputError(f"prompt must contain exactly one {image_token!r} placeholder, found {len(parts) - 1}; "
                         "render it with a chat message holding one {'type': 'image'} item")
    text = ""
    for r in range(rows):
        text += "".join(f"{fake_token}<row_{r + 1}_col_{c + 1}>" + image_token * image_seq_len for c in range(cols))
        text += "\n"
    text += ("\n" if rows else "") + fake_token + global_token + image_token * image_seq_len + fake_token
    return parts[0] + text + parts[1]


@functools.lru_cache(maxsize=16)
def _compile(template: str) -> Any:
    """transformers' ``_compile_jinja_template``; ``{% generation %}`` blocks render their body."""
    try:
        import jinja2
        import jinja2.ext
        from jinja2.sandbox import ImmutableSandboxedEnvironment
    except ImportError as err:
        raise DependencyError("chat templates need jinja2>=3.1: pip install 'jinja2>=3.1'") from err

    class Generation(jinja2.ext.Extension):
        tags = frozenset({"generation"})

        def parse(self, parser: Any) -> Any:
            lineno = next(parser.stream).lineno
            body = parser.parse_statements(["name:endgeneration"], drop_needle=True)
            return jinja2.nodes.CallBlock(self.call_method("_body"), [], [], body).set_lineno(lineno)

        def _body(self, caller: Callable[[], str]) -> str:
            return caller()

    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True,
                                        extensions=[Generation, jinja2.ext.loopcontrols])

    def raise_exception(message: str) -> None:
        raise jinja2.exceptions.TemplateError(message)

    def tojson(x: Any, ensure_ascii: bool = False, indent: Any = None, separators: Any = None,
               sort_keys: bool = False) -> str:  # no HTML escaping, unlike jinja's own
        return json.dumps(x, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys)

    env.filters["tojson"] = tojson
    env.globals["raise_exception"] = raise_exception
    env.globals["strftime_now"] = lambda fmt: datetime.now().strftime(fmt)
    try:
        return env.from_string(template)
    except jinja2.TemplateSyntaxError as err:
        raise InputError(f"chat template does not parse (line {err.lineno}: {err.message}); "
                         "use the processor's chat_template string unchanged") from err


class ChatTemplate:
    """A HF chat template (the processor's ``chat_template`` jinja string), rendered as transformers does.

    ``special_tokens`` are passed to the template as ``apply_chat_template`` passes the tokenizer's
    ``special_tokens_map`` (``bos_token``, ...); SmolVLM's template uses none.

    Example:
        >>> ChatTemplate("{% for m in messages %}{{ m['role'] }}{% endfor %}").render_question("Hi")
        'user'
    """

    def __init__(self, template: str, special_tokens: Mapping[str, Any] | None = None) -> None:
        if not isinstance(template, str) or not template:
            raise InputError("chat template must be a non-empty str (the processor's chat_template)")
        self.template = template
        self.special_tokens = dict(special_tokens or {})
        self._compiled = _compile(template)

    def render(self, messages: Sequence[Mapping[str, Any]], *, add_generation_prompt: bool = True) -> str:
        """Render a conversation (``render_jinja_template`` with no tools or documents)."""
        return self._compiled.render(messages=list(messages), tools=None, documents=None,
                                     add_generation_prompt=add_generation_prompt, **self.special_tokens)

    def render_question(self, question: str) -> str:
        """One user turn: an image, then ``question``; with the generation prompt."""
        return self.render([{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": question}]}])


def build_prompt(template: ChatTemplate | str, question: str, rows: int, cols: int, image_seq_len: int,
                 **tokens: str) -> str:
    """Render ``question`` with an image through ``template`` and expand the image placeholder.

    ``tokens``: ``image_token`` / ``fake_token`` / ``global_token`` overrides for :func:`expand_image_tokens`.

    Example:
        >>> build_prompt("{{ messages[0]['content'][0]['type'] }}", "Hi", 0, 0, 1, image_token="image")
        '<fake_token_around_image><global-img>image<fake_token_around_image>'
    """
    chat = template if isinstance(template, ChatTemplate) else ChatTemplate(template)
    return expand_image_tokens(chat.render_question(question), rows, cols, image_seq_len=image_seq_len, **tokens)
