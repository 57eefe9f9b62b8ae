"""Frame preprocessing for the runtime: uint8 HxWx3 frame -> normalised float32 NCHW tensor.

* :func:`preprocess` / :func:`preprocess_batch`: what the runtime calls. Resize (as a
  :class:`~edgevlp.spec.PreprocessSpec` says), BGR -> RGB, normalise, and a :class:`Transform` to map
  detections back to frame pixels.
* :func:`normalize`: normalisation only, for frames already at the model's size.

Two implementations with one contract: the C++ extension :mod:`edgevlp._preprocess` (fast, releases
the GIL; :func:`preprocess_extension`) and the references :func:`preprocess_reference` (numpy +
cv2.resize on float32) and :func:`normalize_reference` (pure numpy). The resize twins take a
:class:`~edgevlp.spec.PreprocessSpec`, which validated every option when it was built; they check
only the frame and ``out`` against it (what memory safety needs), with the same words. The spec
reaches the extension through :func:`extension_params`, the one place its fields become binding
arguments; modes and filters map by name to the extension's ``Mode`` / ``Interp`` enums, and an
extension whose enum names are not :data:`edgevlp.spec.RESIZE_MODES` / ``INTERPOLATIONS`` is
treated as a stale build. The dispatchers pick the extension when it is built, unless the
environment variable ``EDGEVLP_PREPROCESS`` says otherwise:

* unset, empty or ``auto``: the extension if it imports, else the reference;
* ``reference``: always the reference;
* ``extension``: the extension, and :class:`ImportError` if it is not built.

The variable is read on every call, so tests and benchmarks can switch it at run time.

Example:
    >>> import numpy as np
    >>> frame = np.zeros((2, 4, 3), np.uint8)  # BGR, as cv2 returns it
    >>> x = normalize(frame, mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5))
    >>> x.shape, x.dtype, float(x[0, 0, 0, 0])
    ((1, 3, 2, 4), dtype('float32'), -1.0)
"""

from __future__ import annotations

import functools
import math
import os
from dataclasses import dataclass
from typing import Any, Literal, Sequence

import numpy as np

from edgevlp.errors import InputError
from edgevlp.spec import INTERPOLATIONS, RESIZE_MODES, PreprocessSpec

__all__ = [
    "normalize",
    "normalize_reference",
    "preprocess",
    "preprocess_batch",
    "preprocess_extension",
    "preprocess_batch_extension",
    "preprocess_reference",
    "preprocess_batch_reference",
    "extension_params",
    "Transform",
    "backend_name",
    "ENV_VAR",
    "EXTENSION_ABI_VERSION",
    "MAX_SIDE",
]

#: Environment variable that picks the implementation of :func:`normalize` and :func:`preprocess`.
ENV_VAR = "EDGEVLP_PREPROCESS"
#: The ``ABI_VERSION`` of ``edgevlp._preprocess`` this module was written against.
EXTENSION_ABI_VERSION = 4
#: One call handles at most this many values (H * W * 3), as in the extension.
_MAX_VALUES = 1 << 31


def _load_extension() -> tuple[Any, str | None]:
    """The extension module, or None and why not: not built, a stale ABI, or enum names that are not the spec's."""
    try:
        from edgevlp import _preprocess as ext
    except ImportError as err:  # not built (e.g. a source checkout without a compiler)
        return None, f"{type(err).__name__}: {err}"
    stale = "the build is stale; reinstall edgevlp"
    if getattr(ext, "ABI_VERSION", None) != EXTENSION_ABI_VERSION:
        return None, (f"edgevlp._preprocess has ABI_VERSION {getattr(ext, 'ABI_VERSION', None)!r}, "
                      f"expected {EXTENSION_ABI_VERSION}: {stale}")
    for enum, names, where in ((ext.Mode, RESIZE_MODES, "RESIZE_MODES"), (ext.Interp, INTERPOLATIONS, "INTERPOLATIONS")):
        if set(enum.__members__) != set(names):
            return None, (f"edgevlp._preprocess.{enum.__name__} names {sorted(enum.__members__)} are not "
                          f"edgevlp.spec.{where} {sorted(names)}: {stale}")
    return ext, None


_ext, _ext_error = _load_extension()


def backend_name() -> Literal["extension", "reference"]:
    """Which implementation :func:`normalize` and :func:`preprocess` use now, given ``EDGEVLP_PREPROCESS``.

    Raises :class:`ImportError` when the variable asks for the extension and it is not built, and
    :class:`ValueError` for a value other than ``auto``, ``extension`` or ``reference``.

    Example:
        >>> backend_name() in ("extension", "reference")
        True
    """
    choice = os.environ.get(ENV_VAR, "")
    if choice == "reference":
        return "reference"
    if choice == "extension":
        if _ext is None:
            raise ImportError(
                f"{ENV_VAR}=extension but the C++ extension edgevlp._preprocess is not usable "
                f"({_ext_error}); rebuild with `pip install -e .` (needs a C++17 compiler and cmake), "
                f"or unset {ENV_VAR}"
            )
        return "extension"
    if choice in ("", "auto"):
        return "extension" if _ext is not None else "reference"
    raise ValueError(f"{ENV_VAR}={choice!r} is not one of 'auto', 'extension', 'reference'")


def normalize(
    image: np.ndarray,
    mean: Sequence[float],
    std: Sequence[float],
    scale: float = 1.0 / 255.0,
    swap_rb: bool = True,
    out: np.ndarray | None = None,
) -> np.ndarray:
    """``(image * scale - mean) / std`` as a float32 ``(1, 3, H, W)`` tensor, channels in RGB order.

    Args:
        image: uint8 array of shape (H, W, 3), BGR when ``swap_rb`` (as cv2 gives it), RGB otherwise.
            Any strides work: crops, ``img[::2, ::2]``, ``img[:, ::-1]`` need no copy.
        mean, std: 3 numbers each, for the R, G, B output channels (in units of ``image * scale``).
        scale: factor applied to the raw uint8 value first (1/255 maps it to 0..1).
        swap_rb: True: the input is BGR and the output RGB. False: channels kept in order.
        out: optional float32 C-contiguous writable array of shape (1, 3, H, W) or (3, H, W),
            written in place and returned (no allocation per frame).

    Raises:
        InputError (a ValueError): wrong dtype, shape, empty or too large image, bad mean/std/out.
        TypeError: an argument of the wrong type (image not an ndarray, mean not a sequence, ...).

    Example:
        >>> import numpy as np
        >>> bgr = np.array([[[0, 0, 255]]], np.uint8)  # one pure red pixel in BGR
        >>> normalize(bgr, mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5))[0, :, 0, 0].tolist()
        [1.0, -1.0, -1.0]
    """
    if backend_name() == "reference":
        return normalize_reference(image, mean, std, scale, swap_rb, out)
    try:
        return _ext.normalize(image, mean, std, scale, swap_rb, out)
    except ValueError as err:
        raise InputError(str(err)) from None


def normalize_reference(
    image: np.ndarray,
    mean: Sequence[float],
    std: Sequence[float],
    scale: float = 1.0 / 255.0,
    swap_rb: bool = True,
    out: np.ndarray | None = None,
) -> np.ndarray:
    """Pure-numpy :func:`normalize`: same arguments, result (within 1e-5) and error messages.

    Example:
        >>> import numpy as np
        >>> normalize_reference(np.full((1, 1, 3), 255, np.uint8), (0, 0, 0), (1, 1, 1)).ravel().tolist()
        [1.0, 1.0, 1.0]
    """
    # Checks in the same order, with the same text, as runtime/preprocess.cpp.
    if not isinstance(swap_rb, (bool, np.bool_)):
        raise TypeError(f"swap_rb must be True or False, got {swap_rb!r}")
    order = "BGR" if swap_rb else "RGB"
    height, width = _check_image(image, order)

    mean_v = _triplet(mean, "mean")
    std_v = _triplet(std, "std")
    if not all(s > 0.0 for s in std_v):
        raise InputError(f"std must be > 0 (it divides), got {std!r}")
    scale_v = _real(scale)
    if scale_v is None:
        raise TypeError(f"scale must be a number, got {scale!r}")
    if not math.isfinite(scale_v):
        raise InputError(f"scale must be finite, got {scale!r}")

    out = _check_out(out, (1,), height, width)
    if np.may_share_memory(image, out):
        raise InputError("out overlaps the image's memory; pass a separate buffer")

    planes = out.reshape(3, height, width)  # a view: out is C-contiguous
    for c in range(3):  # c: output (RGB) channel
        src_c = 2 - c if swap_rb else c
        a = np.float32(scale_v / std_v[c])
        b = np.float32(-mean_v[c] / std_v[c])
        np.multiply(image[:, :, src_c], a, out=planes[c], dtype=np.float32)
        planes[c] += b
    return out


def _check_image(image: object, order: str, prefix: str = "") -> tuple[int, int]:
    """The frame: uint8 HxWx3, non-empty, not too large. Returns (H, W)."""
    if not isinstance(image, np.ndarray):
        raise TypeError(f"{prefix}image must be a numpy.ndarray (uint8 HxWx3, {order}), got {type(image).__name__}")
    is_u8 = image.dtype.kind == "u" and image.dtype.itemsize == 1
    if not is_u8 or image.ndim != 3 or image.shape[2] != 3:
        hint = ""
        if not is_u8:
            hint = "; convert it to uint8 (values 0..255) first"
        elif image.ndim == 2 or (image.ndim == 3 and image.shape[2] == 1):
            hint = f"; expand grayscale with cv2.cvtColor(img, cv2.COLOR_GRAY2{order})"
        elif image.ndim == 3 and image.shape[2] == 4:
            hint = f"; drop alpha with cv2.cvtColor(img, cv2.COLOR_{order}A2{order})"
        elif image.ndim == 4:
            hint = "; pass one frame at a time, e.g. batch[0]"
        raise InputError(
            f"{prefix}image must be uint8 HxWx3 ({order}), got {image.dtype} with shape {image.shape}{hint}"
        )
    height, width = image.shape[:2]
    if height == 0 or width == 0:
        raise InputError(f"{prefix}image is empty (shape {image.shape}); expected H >= 1 and W >= 1")
    if height * width * 3 > _MAX_VALUES:
        raise InputError(
            f"{prefix}image is too large: shape {image.shape} has more than {_MAX_VALUES} values; "
            "resize or tile the frame first"
        )
    return height, width


def _check_out(out: np.ndarray | None, lead: tuple[int, ...], height: int, width: int) -> np.ndarray:
    """None -> a new float32 array lead + (3, H, W); else check the caller's buffer."""
    want = (*lead, 3, height, width)
    if out is None:
        return np.empty(want, np.float32)
    shape_text = f"({', '.join(map(str, want))})"
    hw = f"{height}, {width}"
    single = lead == (1,)
    if not isinstance(out, np.ndarray):
        raise TypeError(f"out must be a numpy.ndarray (float32, shape {shape_text}), got {type(out).__name__}")
    shapes = (want, (3, height, width)) if single else (want,)
    if out.dtype != np.dtype(np.float32) or out.shape not in shapes:
        alt = f" or (3, {hw})" if single else ""
        raise InputError(f"out must be float32 with shape {shape_text}{alt}, got {out.dtype} with shape {out.shape}")
    problems = [
        what
        for what, bad in (
            ("not C-contiguous", not out.flags.c_contiguous),
            ("read-only", not out.flags.writeable),
            ("not aligned", not out.flags.aligned),
        )
        if bad
    ]
    if problems:
        raise InputError(f"out is {', '.join(problems)}; pass np.empty({shape_text}, np.float32)")
    return out


def _real(value: object) -> float | None:
    """``float(value)`` for numbers (anything with ``__float__`` or ``__index__``), None otherwise."""
    if isinstance(value, (str, bytes, bytearray)):
        return None
    if not (hasattr(type(value), "__float__") or hasattr(type(value), "__index__")):
        return None
    try:
        return float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError, OverflowError):
        return None


def _triplet(value: Sequence[float], name: str) -> tuple[float, float, float]:
    """mean / std: exactly 3 finite numbers."""
    expected = f"{name} must be a sequence of 3 numbers (R, G, B), got "
    if isinstance(value, (str, bytes, bytearray)):
        raise TypeError(f"{expected}{value!r}")
    try:
        n = len(value)
    except TypeError:
        raise TypeError(f"{expected}{value!r}") from None
    if n != 3:
        raise InputError(f"{expected}{n} values: {value!r}")
    numbers = []
    for i in range(3):
        try:
            item = value[i]
        except Exception:  # noqa: BLE001 - any failing __getitem__ means "not a sequence"
            raise TypeError(f"{expected}{value!r}") from None
        number = _real(item)
        if number is None:
            raise TypeError(f"{name}[{i}] must be a number, got {item!r}")
        numbers.append(number)
    if not all(math.isfinite(v) for v in numbers):
        raise InputError(f"{name} must contain finite numbers, got {value!r}")
    return numbers[0], numbers[1], numbers[2]


# ------------------------------------------------------------------------------- resize + normalise

#: Largest side of the resized image (``shortest_edge`` can ask for huge ones) and of the output, as in
#: the extension (``kMaxSide``): a frame that would exceed it is refused with an :class:`InputError`.
MAX_SIDE = 65536
#: cv2 flag per interpolation name (cv2 constants, spelled out so cv2 is only imported when used).
_CV2_FLAGS = {"nearest": 0, "bilinear": 1, "bicubic": 2, "area": 3, "lanczos": 4}


@dataclass(frozen=True)
class Transform:
    """Where a frame landed in the model input: ``model_x = frame_x * scale_x + offset_x``.

    The inverse, ``frame_x = (model_x - offset_x) / scale_x``, maps detections back. Coordinates are
    pixel edges (0 is the left edge of the first pixel, ``W`` the right edge of the last).

    Example:
        >>> t = Transform(scale_x=0.5, scale_y=0.5, offset_x=0.0, offset_y=32.0, frame_width=640, frame_height=384)
        >>> t.to_frame(np.array([[10.0, 32.0, 20.0, 40.0]])).tolist()
        [[20.0, 0.0, 40.0, 16.0]]
    """

    scale_x: float
    scale_y: float
    offset_x: float
    offset_y: float
    frame_width: int
    frame_height: int

    def to_frame(self, boxes_xyxy: np.ndarray) -> np.ndarray:
        """Model-input pixel boxes (N, 4) ``x1, y1, x2, y2`` -> frame pixel boxes, clipped to the frame.

        Example:
            >>> Transform(2.0, 2.0, 0.0, 0.0, 10, 10).to_frame(np.array([[0, 0, 30, 8]])).tolist()
            [[0.0, 0.0, 10.0, 4.0]]
        """
        res = self._map(boxes_xyxy, to_frame=True)
        np.clip(res[:, 0::2], 0.0, self.frame_width, out=res[:, 0::2])
        np.clip(res[:, 1::2], 0.0, self.frame_height, out=res[:, 1::2])
        return res

    def to_model(self, boxes_xyxy: np.ndarray) -> np.ndarray:
        """Frame pixel boxes (N, 4) -> model-input pixel boxes (not clipped); the inverse of :meth:`to_frame`.

        Example:
            >>> Transform(2.0, 2.0, 1.0, 0.0, 10, 10).to_model(np.array([[0, 0, 5, 4]])).tolist()
            [[1.0, 0.0, 11.0, 8.0]]
        """
        return self._map(boxes_xyxy, to_frame=False)

    def _map(self, boxes_xyxy: np.ndarray, to_frame: bool) -> np.ndarray:
        boxes = np.asarray(boxes_xyxy, dtype=np.float64)
        if boxes.ndim != 2 or boxes.shape[1] != 4:
            raise InputError(f"boxes must have shape (N, 4) (x1, y1, x2, y2), got {boxes.shape}")
        res = np.empty_like(boxes)
        for axis, scale, offset in ((0, self.scale_x, self.offset_x), (1, self.scale_y, self.offset_y)):
            coords = boxes[:, axis::2]
            res[:, axis::2] = (coords - offset) / scale if to_frame else coords * scale + offset
        return res


def preprocess(frame: np.ndarray, spec: PreprocessSpec, out: np.ndarray | None = None) -> tuple[np.ndarray, Transform]:
    """One BGR frame -> the model's float32 ``spec.input_shape`` tensor and its :class:`Transform`.

    Resizes as ``spec`` says (``resize_mode``, ``interpolation``, ``crop``, ``pad_value``) with
    cv2.resize semantics, swaps BGR to RGB when ``spec.channel_order`` is ``"RGB"`` and normalises:
    ``(pixel * spec.rescale - mean) / std``. Runs :func:`preprocess_extension` or
    :func:`preprocess_reference`, as :func:`backend_name` says. ``out`` (float32,
    ``spec.input_shape``) is filled in place when given.

    Raises:
        InputError (a ValueError): a frame or ``out`` that does not fit (see :func:`preprocess_reference`).
        TypeError: ``spec`` is not a :class:`~edgevlp.spec.PreprocessSpec` (which checked its own fields).

    Example:
        >>> from edgevlp.spec import INTERPOLATIONS, RESIZE_MODES, PreprocessSpec
        >>> spec = PreprocessSpec(height=4, width=4, resize_mode="letterbox", interpolation="area")
        >>> x, t = preprocess(np.zeros((2, 8, 3), np.uint8), spec)
        >>> x.shape, (t.scale_x, t.offset_y)
        ((1, 3, 4, 4), (0.5, 1.0))
    """
    impl = preprocess_reference if backend_name() == "reference" else preprocess_extension
    tensor, t = impl(frame, spec, out)
    return tensor, Transform(*t, frame_width=frame.shape[1], frame_height=frame.shape[0])


def preprocess_batch(
    frames: Sequence[np.ndarray], spec: PreprocessSpec, out: np.ndarray | None = None
) -> tuple[np.ndarray, list[Transform]]:
    """:func:`preprocess` for a list of BGR frames (any sizes) -> ``(N, 3, H, W)`` and N transforms.

    Example:
        >>> from edgevlp.spec import INTERPOLATIONS, RESIZE_MODES, PreprocessSpec
        >>> spec = PreprocessSpec(height=8, width=8)
        >>> x, ts = preprocess_batch([np.zeros((4, 4, 3), np.uint8), np.zeros((16, 8, 3), np.uint8)], spec)
        >>> x.shape, [t.scale_y for t in ts]
        ((2, 3, 8, 8), [2.0, 0.5])
    """
    impl = preprocess_batch_reference if backend_name() == "reference" else preprocess_batch_extension
    tensor, ts = impl(frames, spec, out)
    return tensor, [Transform(*t, frame_width=f.shape[1], frame_height=f.shape[0]) for t, f in zip(ts, frames)]


def _require_spec(spec: object) -> PreprocessSpec:
    if not isinstance(spec, PreprocessSpec):
        raise TypeError(f"spec must be an edgevlp.spec.PreprocessSpec, got {type(spec).__name__}")
    return spec


def extension_params(spec: PreprocessSpec) -> Any:
    """``spec`` as the extension's ``edgevlp._preprocess.Params``: the one place spec fields become
    binding arguments. Modes and interpolations map by name (``Mode.__members__[spec.resize_mode]``).
    Cached per spec (specs are frozen), so a stream of frames builds it once.

    Raises:
        ImportError: the extension is not usable (see :func:`backend_name`).

    Example:
        >>> from edgevlp.spec import INTERPOLATIONS, RESIZE_MODES, PreprocessSpec
        >>> extension_params(PreprocessSpec(height=8, width=8, resize_mode="letterbox")).mode.name
        'letterbox'
    """
    _require_spec(spec)
    if _ext is None:
        raise ImportError(f"the C++ extension edgevlp._preprocess is not usable ({_ext_error}); "
                          f"rebuild with `pip install -e .`, or set {ENV_VAR}=reference")
    return _extension_params(spec)


@functools.lru_cache(maxsize=64)
def _extension_params(spec: PreprocessSpec) -> Any:
    crop = spec.crop if spec.crop is not None else (0, 0)
    return _ext.Params(
        out_h=spec.height,
        out_w=spec.width,
        mode=_ext.Mode.__members__[spec.resize_mode],
        interpolation=_ext.Interp.__members__[spec.interpolation],
        mean=spec.mean,
        std=spec.std,
        scale=spec.rescale,
        swap_rb=_swap_rb(spec),
        pad_value=spec.pad_value,
        crop_h=crop[0],
        crop_w=crop[1],
        shortest_edge=spec.shortest_edge if spec.shortest_edge is not None else 0,
    )


def _swap_rb(spec: PreprocessSpec) -> bool:
    return spec.channel_order == "RGB"  # frames come BGR, as cv2 reads them


def _run_extension(name: str, frames: Any, spec: PreprocessSpec, out: np.ndarray | None, threads: int) -> Any:
    params = extension_params(spec)
    try:
        return getattr(_ext, name)(frames, params, out, threads)
    except ValueError as err:
        raise InputError(str(err)) from None


def preprocess_extension(
    image: np.ndarray, spec: PreprocessSpec, out: np.ndarray | None = None, threads: int = 0
) -> tuple[np.ndarray, tuple[float, float, float, float]]:
    """The C++ twin of :func:`preprocess_reference` (same arguments, errors and, to 1e-5, result).

    ``threads``: 0 picks a count from the work (at most 4), else the most worker threads to use
    (results are identical for any count). The GIL is released during the pixel work.

    Raises:
        ImportError: the extension is not usable. Otherwise as :func:`preprocess_reference`, and
        InputError / TypeError for ``threads`` outside 0..256 / not an int.

    Example:
        >>> from edgevlp.spec import INTERPOLATIONS, RESIZE_MODES, PreprocessSpec
        >>> x, t = preprocess_extension(np.zeros((2, 4, 3), np.uint8), PreprocessSpec(height=4, width=4), threads=1)
        >>> x.shape, t
        ((1, 3, 4, 4), (1.0, 2.0, 0.0, 0.0))
    """
    return _run_extension("preprocess", image, spec, out, threads)


def preprocess_batch_extension(
    images: Sequence[np.ndarray], spec: PreprocessSpec, out: np.ndarray | None = None, threads: int = 0
) -> tuple[np.ndarray, list[tuple[float, float, float, float]]]:
    """The C++ twin of :func:`preprocess_batch_reference`; ``threads`` as in :func:`preprocess_extension`.

    Example:
        >>> from edgevlp.spec import INTERPOLATIONS, RESIZE_MODES, PreprocessSpec
        >>> x, ts = preprocess_batch_extension([np.zeros((2, 2, 3), np.uint8)] * 3, PreprocessSpec(height=4, width=4))
        >>> x.shape, ts[0]
        ((3, 3, 4, 4), (2.0, 2.0, 0.0, 0.0))
    """
    return _run_extension("preprocess_batch", images, spec, out, threads)


def preprocess_reference(
    image: np.ndarray, spec: PreprocessSpec, out: np.ndarray | None = None
) -> tuple[np.ndarray, tuple[float, float, float, float]]:
    """Numpy + cv2 twin of :func:`preprocess_extension`: same errors and (to 1e-5) result.

    ``spec`` validated its fields when it was built; what is checked here is the frame (uint8 HxWx3,
    any strides), ``out`` (float32, C-contiguous, writable, aligned, ``spec.input_shape`` or that
    without the leading 1, not overlapping the frame) and, for ``shortest_edge``, that the resized
    frame stays within :data:`MAX_SIDE` a side: what the extension checks for memory safety, in
    the same words.

    The frame is converted to float32 first and resized with ``cv2.resize`` on the float image, so
    the weights are float (cv2's uint8 INTER_LINEAR / INTER_CUBIC use 11-bit fixed-point weights and
    round to uint8, which the C++ path does not copy). Interpolations map to cv2's INTER_NEAREST
    (``floor(x * src / dst)``, no half-pixel shift), INTER_LINEAR, INTER_CUBIC (a = -0.75),
    INTER_AREA and INTER_LANCZOS4, borders replicated. Note cv2's INTER_AREA averages pixel
    areas only when *both* axes shrink (non-integer ratios included); if either axis grows it is a
    bilinear-like filter on both axes. For big downscales (1080p -> 384) Hugging Face's PIL-based
    processors antialias: ``area`` is the closest cheap choice, ``bicubic`` without antialiasing aliases.

    Geometry (``spec.resize_mode``, with ``H x W`` = ``spec.height x spec.width`` and an ``h x w``
    frame); pixels outside the frame get ``spec.pad_value`` (in ``image * rescale`` units):

    * ``stretch``: resize to ``H x W``;
    * ``letterbox``: resize by ``s = min(W / w, H / h)`` to ``floor(w*s + 0.5) x floor(h*s + 0.5)``,
      centred (offsets rounded down) on an ``H x W`` canvas;
    * ``pad_square``: pad bottom/right to a ``max(h, w)`` square, resize that to ``H x W`` (OWLv2);
    * ``shortest_edge``: the short side becomes ``spec.shortest_edge``, the long one
      ``int(shortest_edge * long / short)`` (as Hugging Face), then centre-crop to ``H x W``.

    Then, when ``spec.crop`` is given, a centred window of that size (offset ``(size - crop) // 2``)
    is the output. The returned transform ``(scale_x, scale_y, offset_x, offset_y)`` maps frame
    pixels to output pixels: ``x_out = x_frame * scale_x + offset_x``.

    Raises:
        InputError (a ValueError): a frame or ``out`` that does not fit.
        TypeError: ``image``, ``out`` or ``spec`` of the wrong type.

    Example:
        >>> from edgevlp.spec import INTERPOLATIONS, RESIZE_MODES, PreprocessSpec
        >>> spec = PreprocessSpec(height=4, width=4, resize_mode="letterbox", interpolation="bilinear",
        ...                       pad_value=0.5)
        >>> x, t = preprocess_reference(np.zeros((2, 4, 3), np.uint8), spec)
        >>> x[0, 0, :, 0].tolist(), t
        ([0.5, 0.0, 0.0, 0.5], (1.0, 1.0, 0.0, 1.0))
    """
    _require_spec(spec)
    tensor, transforms = _run_reference([image], spec, out, batch=False)
    return tensor, transforms[0]


def preprocess_batch_reference(
    images: Sequence[np.ndarray], spec: PreprocessSpec, out: np.ndarray | None = None
) -> tuple[np.ndarray, list[tuple[float, float, float, float]]]:
    """Numpy twin of :func:`preprocess_batch_extension`: :func:`preprocess_reference` per frame.

    Example:
        >>> from edgevlp.spec import INTERPOLATIONS, RESIZE_MODES, PreprocessSpec
        >>> x, ts = preprocess_batch_reference([np.zeros((2, 2, 3), np.uint8)] * 3,
        ...                                    PreprocessSpec(height=4, width=4, interpolation="nearest"))
        >>> x.shape, ts[0]
        ((3, 3, 4, 4), (2.0, 2.0, 0.0, 0.0))
    """
    _require_spec(spec)
    if not isinstance(images, (list, tuple)):
        raise TypeError(f"images must be a list or tuple of uint8 HxWx3 frames, got {type(images).__name__}")
    if not images:
        raise InputError("images is empty; pass at least one frame")
    return _run_reference(list(images), spec, out, batch=True)


def _run_reference(
    images: list[np.ndarray], spec: PreprocessSpec, out: np.ndarray | None, batch: bool
) -> tuple[np.ndarray, list[tuple[float, float, float, float]]]:
    """run() of runtime/resize.cpp: frames, geometry, out, overlap (in that order), then the pixels."""

    def prefix(i: int, sep: str) -> str:
        return f"images[{i}]{sep}" if batch else ""

    order = "BGR" if _swap_rb(spec) else "RGB"
    sizes = [_check_image(img, order, prefix(i, ": ")) for i, img in enumerate(images)]
    geoms = [_geometry(spec, h, w, prefix(i, ": ")) for i, (h, w) in enumerate(sizes)]
    n, g0 = len(images), geoms[0]
    out = _check_out(out, (n,) if batch else (1,), g0.out_h, g0.out_w)
    for i, img in enumerate(images):
        if np.may_share_memory(img, out):
            raise InputError(f"out overlaps the {prefix(i, ' ')}image's memory; pass a separate buffer")
    planes = out.reshape(n, 3, g0.out_h, g0.out_w)  # a view: out is C-contiguous
    for img, g, dst in zip(images, geoms, planes):
        _resize_into(img, spec, g, dst)
    return out, [g.transform for g in geoms]


@dataclass(frozen=True)
class _Geometry:
    """As ``Geometry`` in runtime/resize.h: output pixel (oy, ox) shows resized pixel (oy - off_y, ox - off_x)."""

    virt_h: int
    virt_w: int
    res_h: int
    res_w: int
    out_h: int
    out_w: int
    off_y: int
    off_x: int

    @property
    def transform(self) -> tuple[float, float, float, float]:
        return (self.res_w / self.virt_w, self.res_h / self.virt_h, float(self.off_x), float(self.off_y))


def _geometry(spec: PreprocessSpec, src_h: int, src_w: int, prefix: str = "") -> _Geometry:
    """make_geometry() of runtime/resize_core.cpp, in the same double arithmetic."""
    out_h, out_w = spec.height, spec.width
    virt_h, virt_w, res_h, res_w = src_h, src_w, out_h, out_w
    canvas_h, canvas_w, top, left = out_h, out_w, 0, 0
    if spec.resize_mode == "letterbox":
        s = min(out_w / src_w, out_h / src_h)
        res_w = min(max(math.floor(src_w * s + 0.5), 1), out_w)
        res_h = min(max(math.floor(src_h * s + 0.5), 1), out_h)
        top, left = (out_h - res_h) // 2, (out_w - res_w) // 2
    elif spec.resize_mode == "pad_square":
        virt_h = virt_w = max(src_h, src_w)
    elif spec.resize_mode == "shortest_edge":
        se = spec.shortest_edge
        assert se is not None  # PreprocessSpec requires it with this mode
        if src_w <= src_h:
            res_w, res_h = se, int(se * src_h / src_w)
        else:
            res_h, res_w = se, int(se * src_w / src_h)
        if res_h > MAX_SIDE or res_w > MAX_SIDE:
            raise InputError(
                f"{prefix}mode 'shortest_edge' would resize the {src_h}x{src_w} frame to {res_h}x{res_w}, more "
                f"than {MAX_SIDE} pixels on a side; lower shortest_edge or crop the frame first"
            )
        canvas_h, canvas_w = res_h, res_w
    if spec.crop is not None:
        out_h, out_w = spec.crop
    off_y = top - (canvas_h - out_h) // 2
    off_x = left - (canvas_w - out_w) // 2
    return _Geometry(virt_h, virt_w, res_h, res_w, out_h, out_w, off_y, off_x)


def _resize_into(image: np.ndarray, spec: PreprocessSpec, g: _Geometry, planes: np.ndarray) -> None:
    """cv2.resize on the float32 frame (padded for pad_square), placed on a pad canvas, normalised."""
    import cv2  # only the reference path needs it

    src = np.ascontiguousarray(image[..., ::-1] if _swap_rb(spec) else image, dtype=np.float32)
    pad_raw = np.float32(spec.pad_value / spec.rescale)
    if g.virt_h != src.shape[0] or g.virt_w != src.shape[1]:
        square = np.full((g.virt_h, g.virt_w, 3), pad_raw, np.float32)
        square[: src.shape[0], : src.shape[1]] = src
        src = square
    resized = cv2.resize(src, (g.res_w, g.res_h), interpolation=_CV2_FLAGS[spec.interpolation])
    resized = resized.reshape(g.res_h, g.res_w, 3)
    canvas = np.full((g.out_h, g.out_w, 3), pad_raw, np.float32)
    ylo, yhi = max(0, -g.off_y), min(g.res_h, g.out_h - g.off_y)
    xlo, xhi = max(0, -g.off_x), min(g.res_w, g.out_w - g.off_x)
    if yhi > ylo and xhi > xlo:
        canvas[ylo + g.off_y : yhi + g.off_y, xlo + g.off_x : xhi + g.off_x] = resized[ylo:yhi, xlo:xhi]
    for c in range(3):
        a = np.float32(spec.rescale / spec.std[c])
        b = np.float32(-spec.mean[c] / spec.std[c])
        np.multiply(canvas[:, :, c], a, out=planes[c])
        planes[c] += b
