"""edgevlp._preprocess (C++) and normalize_reference (numpy) agree: values, errors and messages.

The extension must be built (``pip install -e .``); nothing here is skipped without it.
"""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import tracemalloc
from typing import Any, Callable

import numpy as np
import pytest
from _same_error import assert_same_error
import skimage.data
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from edgevlp import _preprocess
from edgevlp.errors import InputError
from edgevlp.runtime import preprocess as pp

BLIP = ((0.48145466, 0.4578275, 0.40821073), (0.26862954, 0.26130258, 0.27577711))
HALF = ((0.5, 0.5, 0.5), (0.5, 0.5, 0.5))
TOL = 1e-5

EXT: Callable[..., np.ndarray] = _preprocess.normalize
REF: Callable[..., np.ndarray] = pp.normalize_reference
BOTH = pytest.mark.parametrize("impl", [EXT, REF], ids=["extension", "reference"])


def oracle(image: np.ndarray, mean: Any, std: Any, scale: float = 1 / 255, swap_rb: bool = True) -> np.ndarray:
    """The formula written the obvious way, in float64."""
    src = image.astype(np.float64)
    if swap_rb:
        src = src[..., ::-1]
    return ((src * scale - np.asarray(mean)) / np.asarray(std)).transpose(2, 0, 1)[None]


def check_both(image: np.ndarray, mean: Any, std: Any, **kw: Any) -> np.ndarray:
    """Run both implementations, assert layout, parity and closeness to the float64 formula."""
    before = image.copy()
    got_ext, got_ref = EXT(image, mean, std, **kw), REF(image, mean, std, **kw)
    h, w = image.shape[:2]
    for got in (got_ext, got_ref):
        assert got.shape == (1, 3, h, w)
        assert got.dtype == np.float32
        assert got.flags.c_contiguous
    np.testing.assert_array_equal(image, before)  # input untouched
    assert np.max(np.abs(got_ext - got_ref)) <= TOL
    want = oracle(image, mean, std, **kw)
    assert np.max(np.abs(got_ext - want)) <= TOL
    assert np.max(np.abs(got_ref - want)) <= TOL
    return got_ext


@pytest.fixture(scope="module", params=["astronaut", "coffee", "chelsea"])
def photo_rgb(request: pytest.FixtureRequest) -> np.ndarray:
    img = getattr(skimage.data, request.param)()
    assert img.dtype == np.uint8 and img.ndim == 3 and img.shape[2] == 3
    return img


# ---------------------------------------------------------------------------------- values


@pytest.mark.parametrize("mean_std", [BLIP, HALF], ids=["blip", "half"])
@pytest.mark.parametrize("contiguous", [False, True], ids=["bgr_view", "bgr_copy"])
def test_photos_match(photo_rgb: np.ndarray, mean_std: tuple, contiguous: bool) -> None:
    bgr = photo_rgb[..., ::-1]
    assert bgr.strides[2] == -1  # the cheap RGB->BGR view really has a negative channel stride
    if contiguous:
        bgr = np.ascontiguousarray(bgr)
    got = check_both(bgr, *mean_std)
    # swap_rb turns the BGR frame back into RGB: channel 0 of the output is the photo's red.
    np.testing.assert_allclose(got[0, 0], (photo_rgb[..., 0] / 255 - mean_std[0][0]) / mean_std[1][0], atol=TOL)


@BOTH
def test_one_pixel_by_hand(impl: Callable[..., np.ndarray]) -> None:
    bgr = np.array([[[10, 128, 250]]], np.uint8)  # B=10 G=128 R=250
    # (250/255 - 0.48145466) / 0.26862954 etc., computed by hand.
    np.testing.assert_allclose(impl(bgr, *BLIP).ravel(), [1.8573441, 0.1688972, -1.3380191], atol=TOL)
    np.testing.assert_allclose(impl(bgr, *BLIP, swap_rb=False).ravel(), [-1.6462783, 0.1688972, 2.0747967], atol=TOL)
    np.testing.assert_allclose(impl(bgr, *HALF, scale=1.0).ravel(), [499.0, 255.0, 19.0], atol=TOL)


def _views() -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    big = rng.integers(0, 256, (120, 200, 3), dtype=np.uint8)
    six = rng.integers(0, 256, (30, 40, 6), dtype=np.uint8)
    planar = rng.integers(0, 256, (3, 25, 35), dtype=np.uint8)
    return {
        "crop_step": big[10:50:2, 5:90:3],
        "flip_x": big[:, ::-1],
        "flip_all": big[::-1, ::-1, ::-1],
        "transposed": big.transpose(1, 0, 2),
        "fortran": np.asfortranarray(big),
        "channel_step": six[:, :, ::2],
        "planar": np.moveaxis(planar, 0, -1),
        "broadcast": np.broadcast_to(np.array([7, 99, 230], np.uint8), (16, 9, 3)),
        "readonly": np.frombuffer(big.tobytes(), np.uint8).reshape(big.shape),
    }


@pytest.mark.parametrize("name", list(_views()))
@pytest.mark.parametrize("swap_rb", [True, False])
def test_strided_views(name: str, swap_rb: bool) -> None:
    view = _views()[name]
    got = check_both(view, *BLIP, swap_rb=swap_rb)
    np.testing.assert_array_equal(got, EXT(np.ascontiguousarray(view), *BLIP, swap_rb=swap_rb))


@pytest.mark.parametrize("shape", [(1, 1, 3), (1, 5000, 3), (4097, 3, 3), (5000, 1, 3), (3, 7, 3)])
def test_odd_sizes(shape: tuple[int, int, int]) -> None:
    image = np.random.default_rng(1).integers(0, 256, shape, dtype=np.uint8)
    check_both(image, *BLIP)
    check_both(image, *HALF, swap_rb=False)


@BOTH
def test_swap_rb_false_equals_swapped_input(impl: Callable[..., np.ndarray]) -> None:
    img = skimage.data.coffee()
    np.testing.assert_array_equal(impl(img, *BLIP, swap_rb=False), impl(img[..., ::-1], *BLIP, swap_rb=True))
    assert not np.array_equal(impl(img, *BLIP, swap_rb=False), impl(img, *BLIP, swap_rb=True))


@BOTH
def test_scale_and_numpy_arguments(impl: Callable[..., np.ndarray]) -> None:
    img = skimage.data.chelsea()[::3, ::3]
    mean, std = np.array(BLIP[0]) * 255, np.array(BLIP[1], np.float32) * 255
    np.testing.assert_allclose(impl(img, mean, std, scale=np.float32(1.0)), impl(img, *BLIP), atol=TOL)


@BOTH
@pytest.mark.parametrize("out_shape", ["nchw", "chw"])
def test_out_buffer_is_reused(impl: Callable[..., np.ndarray], out_shape: str) -> None:
    frames = [skimage.data.astronaut()[..., ::-1], skimage.data.astronaut()[::-1]]  # both 512x512
    out = np.full((1, 3, 512, 512) if out_shape == "nchw" else (3, 512, 512), np.nan, np.float32)
    address = out.ctypes.data
    for frame in frames:
        got = impl(frame, *BLIP, out=out)
        assert got is out and out.ctypes.data == address
        np.testing.assert_allclose(out.reshape(1, 3, 512, 512), oracle(frame, *BLIP), atol=TOL)


def test_out_allocates_nothing() -> None:
    frame = np.random.default_rng(2).integers(0, 256, (1080, 1920, 3), dtype=np.uint8)
    out = np.empty((1, 3, 1080, 1920), np.float32)
    EXT(frame, *BLIP, out=out)  # warm up
    tracemalloc.start()
    try:
        EXT(frame, *BLIP)
        _, peak_fresh = tracemalloc.get_traced_memory()
        tracemalloc.reset_peak()
        EXT(frame, *BLIP, out=out)
        _, peak_reused = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak_fresh >= out.nbytes  # tracemalloc does see numpy's buffers...
    assert peak_reused < 64 * 1024  # ...and none is made when out= is given


def test_threads_share_nothing() -> None:
    rng = np.random.default_rng(3)
    frames = [rng.integers(0, 256, (300, 400, 3), dtype=np.uint8) for _ in range(8)]
    results: list[np.ndarray | None] = [None] * len(frames)

    def work(i: int) -> None:
        for _ in range(5):
            results[i] = EXT(frames[i][:, ::-1], *BLIP)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(len(frames))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for frame, got in zip(frames, results):
        np.testing.assert_allclose(got, oracle(frame[:, ::-1], *BLIP), atol=TOL)


# ---------------------------------------------------------------------------------- errors

_IMG = np.zeros((4, 5, 3), np.uint8)


def _overlapping_call() -> tuple[tuple, dict]:
    buf = np.zeros((1, 3, 4, 5), np.float32)
    image = buf.view(np.uint8).reshape(-1)[: 4 * 5 * 3].reshape(4, 5, 3)
    return (image, *BLIP), {"out": buf}


def _unaligned_out() -> np.ndarray:
    raw = np.zeros(3 * 4 * 5 * 4 + 1, np.uint8)
    out = raw[1:].view(np.float32).reshape(1, 3, 4, 5)
    assert not out.flags.aligned
    return out


def _readonly_out() -> np.ndarray:
    out = np.zeros((1, 3, 4, 5), np.float32)
    out.setflags(write=False)
    return out


BAD: dict[str, tuple[type[Exception], str, Callable[[], tuple[tuple, dict]]]] = {
    # name: (exception type, text the message must contain, () -> (args, kwargs))
    "float32": (ValueError, "got float32 with shape (4, 4, 3)", lambda: ((np.zeros((4, 4, 3), np.float32), *BLIP), {})),
    "float64": (ValueError, "convert it to uint8", lambda: ((np.zeros((4, 4, 3)), *BLIP), {})),
    "bool": (ValueError, "got bool", lambda: ((np.zeros((4, 4, 3), bool), *BLIP), {})),
    "uint16": (ValueError, "got uint16", lambda: ((np.zeros((4, 4, 3), np.uint16), *BLIP), {})),
    "int8": (ValueError, "got int8", lambda: ((np.zeros((4, 4, 3), np.int8), *BLIP), {})),
    "uint16_big_endian": (ValueError, "got >u2", lambda: ((np.zeros((4, 4, 3), ">u2"), *BLIP), {})),
    "gray_2d": (ValueError, "COLOR_GRAY2BGR", lambda: ((np.zeros((4, 4), np.uint8), *BLIP), {})),
    "gray_2d_rgb": (ValueError, "COLOR_GRAY2RGB", lambda: ((np.zeros((4, 4), np.uint8), *BLIP), {"swap_rb": False})),
    "one_channel": (ValueError, "shape (4, 4, 1)", lambda: ((np.zeros((4, 4, 1), np.uint8), *BLIP), {})),
    "four_channel": (ValueError, "COLOR_BGRA2BGR", lambda: ((np.zeros((4, 4, 4), np.uint8), *BLIP), {})),
    "batch_4d": (ValueError, "one frame at a time", lambda: ((np.zeros((2, 4, 4, 3), np.uint8), *BLIP), {})),
    "five_d": (ValueError, "shape (1, 1, 4, 4, 3)", lambda: ((np.zeros((1, 1, 4, 4, 3), np.uint8), *BLIP), {})),
    "one_d": (ValueError, "shape (3,)", lambda: ((np.zeros(3, np.uint8), *BLIP), {})),
    "zero_d": (ValueError, "shape ()", lambda: ((np.array(3, np.uint8), *BLIP), {})),
    "empty_h": (ValueError, "image is empty (shape (0, 5, 3))", lambda: ((np.zeros((0, 5, 3), np.uint8), *BLIP), {})),
    "empty_w": (ValueError, "image is empty", lambda: ((np.zeros((5, 0, 3), np.uint8), *BLIP), {})),
    "huge_broadcast": (
        ValueError,
        "too large",
        lambda: ((np.broadcast_to(np.zeros(3, np.uint8), (100_000, 100_000, 3)), *BLIP), {}),
    ),
    "just_over_2_31": (
        ValueError,
        "more than 2147483648 values",
        lambda: ((np.broadcast_to(np.zeros(3, np.uint8), (1, 715_827_883, 3)), *BLIP), {}),
    ),
    "none": (TypeError, "got NoneType", lambda: ((None, *BLIP), {})),
    "nested_list": (TypeError, "got list", lambda: (([[[0, 0, 0]]], *BLIP), {})),
    "mean_len_2": (ValueError, "mean must be a sequence of 3 numbers (R, G, B), got 2 values", lambda: ((_IMG, (0.5, 0.5), BLIP[1]), {})),
    "mean_str": (TypeError, "mean must be a sequence", lambda: ((_IMG, "abc", BLIP[1]), {})),
    "mean_none": (TypeError, "got None", lambda: ((_IMG, None, BLIP[1]), {})),
    "mean_set": (TypeError, "mean must be a sequence", lambda: ((_IMG, {1.0, 2.0, 3.0}, BLIP[1]), {})),
    "mean_item_str": (TypeError, "mean[1] must be a number, got '0.5'", lambda: ((_IMG, (0.5, "0.5", 0.5), BLIP[1]), {})),
    "mean_nan": (ValueError, "mean must contain finite numbers", lambda: ((_IMG, (0.5, float("nan"), 0.5), BLIP[1]), {})),
    "std_zero": (ValueError, "std must be > 0", lambda: ((_IMG, BLIP[0], (0.5, 0.0, 0.5)), {})),
    "std_negative": (ValueError, "std must be > 0", lambda: ((_IMG, BLIP[0], (0.5, -0.5, 0.5)), {})),
    "std_inf": (ValueError, "std must contain finite numbers", lambda: ((_IMG, BLIP[0], (0.5, float("inf"), 0.5)), {})),
    "std_array_len_4": (ValueError, "4 values", lambda: ((_IMG, BLIP[0], np.ones(4)), {})),
    "scale_str": (TypeError, "scale must be a number", lambda: ((_IMG, *BLIP), {"scale": "1/255"})),
    "scale_nan": (ValueError, "scale must be finite", lambda: ((_IMG, *BLIP), {"scale": float("nan")})),
    "swap_rb_none": (TypeError, "swap_rb must be True or False, got None", lambda: ((_IMG, *BLIP), {"swap_rb": None})),
    "swap_rb_int": (TypeError, "swap_rb must be True or False, got 1", lambda: ((_IMG, *BLIP), {"swap_rb": 1})),
    "out_shape": (
        ValueError,
        "out must be float32 with shape (1, 3, 4, 5) or (3, 4, 5), got float32 with shape (1, 3, 5, 4)",
        lambda: ((_IMG, *BLIP), {"out": np.zeros((1, 3, 5, 4), np.float32)}),
    ),
    "out_hwc": (ValueError, "shape (4, 5, 3)", lambda: ((_IMG, *BLIP), {"out": np.zeros((4, 5, 3), np.float32)})),
    "out_float64": (ValueError, "got float64", lambda: ((_IMG, *BLIP), {"out": np.zeros((1, 3, 4, 5))})),
    "out_big_endian": (ValueError, "got >f4", lambda: ((_IMG, *BLIP), {"out": np.zeros((1, 3, 4, 5), ">f4")})),
    "out_list": (TypeError, "out must be a numpy.ndarray", lambda: ((_IMG, *BLIP), {"out": [0.0] * 60})),
    "out_readonly": (ValueError, "out is read-only", lambda: ((_IMG, *BLIP), {"out": _readonly_out()})),
    "out_strided": (
        ValueError,
        "out is not C-contiguous",
        lambda: ((_IMG, *BLIP), {"out": np.zeros((1, 3, 4, 10), np.float32)[..., ::2]}),
    ),
    "out_fortran": (
        ValueError,
        "not C-contiguous",
        lambda: ((_IMG, *BLIP), {"out": np.asfortranarray(np.zeros((1, 3, 4, 5), np.float32))}),
    ),
    "out_unaligned": (ValueError, "not aligned", lambda: ((_IMG, *BLIP), {"out": _unaligned_out()})),
    "out_overlaps_image": (ValueError, "overlaps", _overlapping_call),
}


@pytest.mark.parametrize("case", list(BAD))
def test_bad_input_same_error(case: str) -> None:
    exc_type, text, make = BAD[case]
    assert_same_error((EXT, REF), exc_type, text, make)
    args, kwargs = make()
    with pytest.raises(InputError if exc_type is ValueError else TypeError):
        pp.normalize(*args, **kwargs)


def test_bad_out_left_untouched() -> None:
    out = np.full((1, 3, 5, 4), 7.0, np.float32)
    for impl in (EXT, REF):
        with pytest.raises(ValueError):
            impl(_IMG, *BLIP, out=out)
    assert np.all(out == 7.0)


# ---------------------------------------------------------------------------------- dispatch


def test_env_reference_forces_reference(monkeypatch: pytest.MonkeyPatch) -> None:
    class Broken:
        ABI_VERSION = 1

        @staticmethod
        def normalize(*args: Any, **kwargs: Any) -> np.ndarray:
            raise AssertionError("the extension must not be called")

    monkeypatch.setattr(pp, "_ext", Broken)
    monkeypatch.setenv(pp.ENV_VAR, "reference")
    assert pp.backend_name() == "reference"
    img = skimage.data.chelsea()
    np.testing.assert_array_equal(pp.normalize(img, *BLIP), REF(img, *BLIP))
    monkeypatch.setenv(pp.ENV_VAR, "auto")
    with pytest.raises(AssertionError, match="must not be called"):
        pp.normalize(img, *BLIP)


def test_env_auto_and_extension_use_extension(monkeypatch: pytest.MonkeyPatch) -> None:
    for value in ("", "auto", "extension"):
        monkeypatch.setenv(pp.ENV_VAR, value)
        assert pp.backend_name() == "extension"
    monkeypatch.delenv(pp.ENV_VAR)
    assert pp.backend_name() == "extension"
    calls = []
    monkeypatch.setattr(pp, "_ext", type("Spy", (), {"normalize": staticmethod(lambda *a: calls.append(a) or a[-1])}))
    out = np.empty((1, 3, 4, 5), np.float32)
    assert pp.normalize(_IMG, *BLIP, out=out) is out and len(calls) == 1


def test_env_extension_missing_raises_import_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(pp, "_ext", None)
    monkeypatch.setattr(pp, "_ext_error", "ImportError: simulated")
    monkeypatch.setenv(pp.ENV_VAR, "extension")
    with pytest.raises(ImportError, match="EDGEVLP_PREPROCESS=extension.*simulated"):
        pp.normalize(_IMG, *BLIP)
    monkeypatch.setenv(pp.ENV_VAR, "auto")  # without the demand, the reference takes over
    assert pp.backend_name() == "reference"
    np.testing.assert_array_equal(pp.normalize(_IMG, *BLIP), REF(_IMG, *BLIP))


def test_env_unknown_value_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(pp.ENV_VAR, "Reference")
    with pytest.raises(ValueError, match="'auto', 'extension', 'reference'"):
        pp.normalize(_IMG, *BLIP)


def test_env_in_fresh_process_and_no_torch() -> None:
    code = (
        "import sys, numpy as np\n"
        "from edgevlp.runtime import preprocess as pp\n"
        "x = pp.normalize(np.full((2, 2, 3), 255, np.uint8), (0, 0, 0), (1, 1, 1))\n"
        "assert x.shape == (1, 3, 2, 2) and float(x.min()) == 1.0, x\n"
        "assert 'torch' not in sys.modules and 'transformers' not in sys.modules\n"
        "print(pp.backend_name())\n"
    )
    for value, want in (("reference", "reference"), ("extension", "extension"), ("", "extension")):
        env = {**os.environ, pp.ENV_VAR: value}
        done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
        assert done.returncode == 0, done.stderr
        assert done.stdout.strip() == want


# ---------------------------------------------------------------------------------- fuzzing


def _axis(draw: st.DrawFn) -> tuple[int, slice]:
    """(base length, slice) giving a view of 0..9 items along one axis with step -3..3 (not 0)."""
    n = draw(st.sampled_from([0] + [1] * 3 + list(range(2, 10)) * 2))
    step = draw(st.sampled_from([1, 1, 2, 3, -1, -2]))
    pad = draw(st.integers(0, 2))  # extra items the view skips
    length = pad + max(0, (n - 1) * abs(step) + 1)
    return length, (slice(pad, None, step) if step > 0 else slice(length - 1 - pad, None, step))


@st.composite
def arrays_any_layout(draw: st.DrawFn) -> np.ndarray:
    """Mostly valid uint8 HxWx3 views with odd strides; sometimes a wrong dtype, rank or channel count."""
    dtype = draw(st.sampled_from([np.uint8] * 12 + [np.float32, np.bool_, np.uint16, np.int8]))
    ndim = draw(st.sampled_from([3] * 16 + [1, 2, 4, 5]))
    if ndim != 3:
        dims = draw(st.lists(st.integers(0, 6), min_size=ndim, max_size=ndim))
        return (np.arange(int(np.prod(dims))).reshape(dims) * 37 % 256).astype(dtype)
    (h, ys), (w, xs) = _axis(draw), _axis(draw)
    channels, cs = draw(
        st.sampled_from(
            [(3, slice(None))] * 8
            + [(3, slice(None, None, -1)), (6, slice(None, None, 2)), (6, slice(1, None, 2)), (4, slice(0, 3))]
            + [(1, slice(None)), (4, slice(None)), (2, slice(None))]
        )
    )
    base = (np.arange(h * w * channels).reshape(h, w, channels) * 37 % 256).astype(dtype)
    view = base[ys, xs, cs]
    if draw(st.integers(0, 2)) == 0:
        view = view.transpose(1, 0, 2)
    return view


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    image=arrays_any_layout(),
    swap_rb=st.booleans(),
    mean=st.tuples(*[st.floats(-2, 2, allow_nan=False)] * 3),
    std=st.tuples(*[st.floats(0.01, 3)] * 3),
    scale=st.sampled_from([1 / 255, 1.0, 2.5]),
    with_out=st.booleans(),
)
def test_fuzz_no_crash_and_parity(
    image: np.ndarray, swap_rb: bool, mean: tuple, std: tuple, scale: float, with_out: bool
) -> None:
    results = []
    for impl in (EXT, REF):
        kwargs: dict[str, Any] = {"scale": scale, "swap_rb": swap_rb}
        if with_out and image.ndim == 3:
            kwargs["out"] = np.full((1, 3, *image.shape[:2]), np.nan, np.float32)
        try:
            results.append(impl(image, mean, std, **kwargs))
        except (ValueError, TypeError) as err:
            results.append(err)
    ext, ref = results
    valid = image.dtype == np.uint8 and image.ndim == 3 and image.shape[2] == 3 and image.size > 0
    if valid:
        assert isinstance(ext, np.ndarray) and isinstance(ref, np.ndarray), (ext, ref)
        # One float32 rounding of x * scale / std (an FMA or not) is the only allowed difference.
        atol = TOL * max(1.0, scale * 255 / min(std))
        assert np.max(np.abs(ext - ref)) <= atol
        np.testing.assert_allclose(ext, oracle(image, mean, std, scale, swap_rb), atol=atol)
    else:
        assert isinstance(ext, Exception) and isinstance(ref, Exception), (ext, ref)
        assert (type(ext), str(ext)) == (ValueError, str(ref))
        assert isinstance(ref, InputError)
