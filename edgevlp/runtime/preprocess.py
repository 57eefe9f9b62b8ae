"""Frame preprocessing for the runtime: uint8 HxWx3 frame -> normalised float32 NCHW tensor.

Two implementations with one contract: the C++ extension :mod:`edgevlp._preprocess` (fast, releases
the GIL) and :func:`normalize_reference` (pure numpy, always available). :func:`normalize` picks the
extension when it is built, unless the environment variable ``EDGEVLP_PREPROCESS`` says otherwise:

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

import math
import os
from typing import Any, Literal, Sequence

import numpy as np

from edgevlp.errors import InputError

__all__ = ["normalize", "normalize_reference", "backend_name", "ENV_VAR", "EXTENSION_ABI_VERSION"]

#: Environment variable that picks the implementation of :func:`normalize`.
ENV_VAR = "EDGEVLP_PREPROCESS"
#: The ``ABI_VERSION`` of ``edgevlp._preprocess`` this module was written against.
EXTENSION_ABI_VERSION = 1
#: One call handles at most this many values (H * W * 3), as in the extension.
_MAX_VALUES = 1 << 31

_ext: Any
_ext_error: str | None
try:
    from edgevlp import _preprocess as _ext
except ImportError as err:  # not built (e.g. a source checkout without a compiler)
    _ext, _ext_error = None, f"{type(err).__name__}: {err}"
else:
    if getattr(_ext, "ABI_VERSION", None) != EXTENSION_ABI_VERSION:
        _ext_error = (
            f"edgevlp._preprocess has ABI_VERSION {getattr(_ext, 'ABI_VERSION', None)!r}, "
            f"expected {EXTENSION_ABI_VERSION}: the build is stale; reinstall edgevlp"
        )
        _ext = None
    else:
        _ext_error = None


def backend_name() -> Literal["extension", "reference"]:
    """Which implementation :func:`normalize` uses now, given ``EDGEVLP_PREPROCESS``.

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
    if not isinstance(image, np.ndarray):
        raise TypeError(f"image must be a numpy.ndarray (uint8 HxWx3, {order}), got {type(image).__name__}")
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
        raise InputError(f"image must be uint8 HxWx3 ({order}), got {image.dtype} with shape {image.shape}{hint}")
    height, width = image.shape[:2]
    if height == 0 or width == 0:
        raise InputError(f"image is empty (shape {image.shape}); expected H >= 1 and W >= 1")
    if height * width * 3 > _MAX_VALUES:
        raise InputError(
            f"image is too large: shape {image.shape} has more than {_MAX_VALUES} values; "
            "resize or tile the frame first"
        )

    mean_v = _triplet(mean, "mean")
    std_v = _triplet(std, "std")
    if not all(s > 0.0 for s in std_v):
        raise InputError(f"std must be > 0 (it divides), got {std!r}")
    scale_v = _real(scale)
    if scale_v is None:
        raise TypeError(f"scale must be a number, got {scale!r}")
    if not math.isfinite(scale_v):
        raise InputError(f"scale must be finite, got {scale!r}")

    hw = f"{height}, {width}"
    if out is None:
        out = np.empty((1, 3, height, width), np.float32)
    else:
        if not isinstance(out, np.ndarray):
            raise TypeError(f"out must be a numpy.ndarray (float32, shape (1, 3, {hw})), got {type(out).__name__}")
        if out.dtype != np.dtype(np.float32) or out.shape not in ((1, 3, height, width), (3, height, width)):
            raise InputError(
                f"out must be float32 with shape (1, 3, {hw}) or (3, {hw}), got {out.dtype} with shape {out.shape}"
            )
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
            raise InputError(f"out is {', '.join(problems)}; pass np.empty((1, 3, {hw}), np.float32)")
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
