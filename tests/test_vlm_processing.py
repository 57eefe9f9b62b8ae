"""edgevlp.runtime.vlm_processing against transformers' Idefics3 / SmolVLM processors (no downloads).

Measured on the three scikit-image photos with SmolVLM-256M's settings (longest_edge 2048, tile 512,
LANCZOS, mean/std 0.5): ``method="pil"`` equals HF bit for bit (max abs diff 0); ``method="cv2"``
(LANCZOS4 up, AREA down) gives max / mean abs diff astronaut 0.133 / 0.0028, coffee 0.259 / 0.0036,
chelsea 0.078 / 0.0027 (normalised range [-1, 1]); feeding RGB instead of BGR gives mean 0.25-0.56.
"""

from __future__ import annotations

import ast
import json
import os
import subprocess
import sys
from pathlib import Path
from unittest import mock

import numpy as np
import pytest
from _same_error import assert_same_error

from edgevlp.errors import InputError, ModelLoadError
from edgevlp.runtime import preprocess as pp
from edgevlp.runtime import vlm_processing as vp
from edgevlp.runtime.vlm_processing import (
    ChatTemplate,
    ImageSplitSpec,
    ImageSplitSpecError,
    build_prompt,
    expand_image_tokens,
    pil_resize,
    split_image,
)

transformers = pytest.importorskip("transformers")
Image = pytest.importorskip("PIL.Image")

# HuggingFaceTB/SmolVLM-256M-Instruct preprocessor_config.json (image_seq_len 64 in processor_config.json)
SMOLVLM_256M = {
    "image_processor_type": "Idefics3ImageProcessor", "do_convert_rgb": True, "do_image_splitting": True,
    "do_normalize": True, "do_pad": True, "do_rescale": True, "do_resize": True, "image_mean": [0.5] * 3,
    "image_std": [0.5] * 3, "max_image_size": {"longest_edge": 512}, "resample": 1,
    "rescale_factor": 1 / 255, "size": {"longest_edge": 2048},
}
SMALL = {**SMOLVLM_256M, "size": {"longest_edge": 128}, "max_image_size": {"longest_edge": 64}}
HF_KEYS = ("do_convert_rgb", "do_image_splitting", "do_normalize", "do_pad", "do_rescale", "do_resize",
           "image_mean", "image_std", "max_image_size", "resample", "rescale_factor", "size")


def _hf(cfg: dict, kind: str = "Idefics3ImageProcessor"):
    return getattr(transformers, kind)(**{k: cfg[k] for k in HF_KEYS if k in cfg})


def _smooth(h: int, w: int, seed: int) -> np.ndarray:
    """A photo-like RGB image (smooth gradients and a few edges)."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:h, 0:w] / max(h, w)
    img = np.stack([np.sin(6 * x + c) * np.cos(4 * y - c) for c in rng.uniform(0, 3, 3)], -1)
    img = img + (x[..., None] > 0.5) * 0.5
    return np.clip(127 + 100 * img, 0, 255).astype(np.uint8)


def _compare(rgb: np.ndarray, cfg: dict, kind: str = "Idefics3ImageProcessor", method: str = "pil"):
    ref = _hf(cfg, kind)(rgb, return_tensors="np", return_row_col_info=True)
    out = split_image(np.ascontiguousarray(rgb[..., ::-1]), ImageSplitSpec.from_processor_config(cfg), method=method)
    assert out.pixel_values.shape == ref["pixel_values"].shape and out.pixel_values.dtype == np.float32
    assert (out.rows, out.cols) == (ref["rows"][0][0], ref["cols"][0][0])
    assert out.pixel_attention_mask.dtype == bool
    np.testing.assert_array_equal(out.pixel_attention_mask, ref["pixel_attention_mask"].astype(bool))
    return ref, out


@pytest.mark.parametrize("name", ["astronaut", "coffee", "chelsea"])
def test_real_photos_match_hf_smolvlm_256m(name: str) -> None:
    data = pytest.importorskip("skimage.data")
    rgb = getattr(data, name)()
    ref, out = _compare(rgb, SMOLVLM_256M)
    assert out.pixel_values.shape[1] == out.rows * out.cols + 1 > 1
    diff = np.abs(out.pixel_values - ref["pixel_values"])
    assert diff.max() < 1e-6, (name, diff.max())
    cv = split_image(np.ascontiguousarray(rgb[..., ::-1]), ImageSplitSpec.from_processor_config(SMOLVLM_256M),
                     method="cv2")
    cv_diff = np.abs(cv.pixel_values - ref["pixel_values"])
    assert cv_diff.mean() < 0.01 and cv_diff.max() < 0.4, (name, cv_diff.mean(), cv_diff.max())
    swapped = split_image(rgb, ImageSplitSpec.from_processor_config(SMOLVLM_256M))  # RGB fed as if BGR
    assert np.abs(swapped.pixel_values - ref["pixel_values"]).mean() > 0.1


@pytest.mark.parametrize("kind", ["Idefics3ImageProcessor", "SmolVLMImageProcessor"])
@pytest.mark.parametrize("hw", [(60, 100), (100, 60), (64, 64), (33, 47), (130, 20), (7, 300), (64, 65)])
def test_small_config_shapes_and_values(kind: str, hw: tuple[int, int]) -> None:
    ref, out = _compare(_smooth(*hw, seed=sum(hw)), {**SMALL, "image_processor_type": kind}, kind)
    assert np.abs(out.pixel_values - ref["pixel_values"]).max() < 1e-6


@pytest.mark.parametrize("cfg", [
    {**SMALL, "do_image_splitting": False},
    {**SMALL, "do_image_splitting": False, "do_resize": False},  # 90x70 straight to 64x64
    {**SMALL, "do_resize": False},
    {**SMALL, "do_normalize": False, "rescale_factor": 0.5 / 255},
    {**SMALL, "resample": 3, "image_mean": [0.1, 0.2, 0.3], "image_std": [0.3, 0.2, 0.1]},
])
def test_options_match_hf(cfg: dict) -> None:
    ref, out = _compare(_smooth(70, 90, seed=3), cfg)
    assert np.abs(out.pixel_values - ref["pixel_values"]).max() < 1e-5
    if not cfg["do_image_splitting"]:
        assert (out.rows, out.cols) == (0, 0) and out.pixel_values.shape == (1, 1, 3, 64, 64)


def _ext_pil_resize():
    """edgevlp._preprocess.pil_resize; skips (with the reason) when it is not built, fails under CI=true."""
    fn = getattr(pp._ext, "pil_resize", None)
    if fn is None:
        why = pp._ext_error or "edgevlp._preprocess has no pil_resize"
        if os.environ.get("CI") == "true":
            pytest.fail(f"the C++ extension must be built on CI: {why}")
        pytest.skip(f"C++ extension not built: {why}")
    return fn


@pytest.mark.parametrize("impl", ["reference", "extension"])
@pytest.mark.parametrize("resample", [1, 2, 3, 4, 5])
@pytest.mark.parametrize("size", [(37, 53, 100, 70), (300, 451, 1362, 2048), (2048, 1536, 512, 512), (64, 64, 30, 30),
                                  (64, 64, 17, 99), (40, 90, 30, 200)])
def test_pil_resize_equals_pillow(resample: int, size: tuple[int, int, int, int], impl: str) -> None:
    h, w, oh, ow = size
    fn = vp._pil_resize_reference if impl == "reference" else _ext_pil_resize()
    img = np.random.default_rng(h * w).integers(0, 256, (h, w, 3), dtype=np.uint8)
    ref = np.asarray(Image.fromarray(img).resize((ow, oh), resample=resample)).astype(int)
    # HAMMING 2048x1536 -> 512x512: a handful of pixels 1 off on noise (both shrink by different
    # factors, where Pillow 13's pass order is not matched; see the module docstring)
    assert np.abs(ref - fn(img, oh, ow, resample)).max() <= (1 if resample == 5 else 0)


# (h, w, out_h, out_w): up, down, mixed (both pass orders), one axis only, 1-pixel and odd sides, same size
RESIZE_GRID = [(1, 1, 1, 1), (1, 1, 5, 3), (5, 3, 1, 1), (1, 7, 1, 2), (7, 1, 3, 1), (2, 2, 3, 3), (3, 5, 7, 11),
               (17, 13, 5, 3), (64, 64, 30, 30), (64, 64, 30, 50), (64, 64, 17, 99), (40, 90, 30, 200),
               (90, 40, 200, 30), (31, 47, 31, 101), (31, 47, 97, 47), (33, 65, 33, 65), (100, 3, 7, 250),
               (257, 129, 64, 33), (11, 500, 400, 9)]


@pytest.mark.parametrize("resample", [1, 2, 3, 4, 5])
def test_extension_pil_resize_equals_reference_bit_for_bit(resample: int) -> None:
    ext = _ext_pil_resize()
    rng = np.random.default_rng(resample)
    pillow_checked = 0
    for h, w, oh, ow in RESIZE_GRID:
        for shape in ((h, w), (h, w, 1), (h, w, 3), (h, w, 4), (h, w, 5)):
            img = rng.integers(0, 256, shape, dtype=np.uint8)
            want = vp._pil_resize_reference(img, oh, ow, resample)
            got = ext(img, oh, ow, resample)
            assert got.dtype == np.uint8 and got.shape == (oh, ow) + shape[2:], (shape, oh, ow)
            np.testing.assert_array_equal(got, want, err_msg=f"{shape} -> {(oh, ow)} resample={resample}")
            if len(shape) == 2 or shape[2] == 3:  # Pillow modes L and RGB (RGBA resizes premultiplied)
                pil = np.asarray(Image.fromarray(img, "L" if len(shape) == 2 else "RGB").resize((ow, oh), resample))
                if np.array_equal(pil, want):  # where the reference equals Pillow, so does the extension
                    np.testing.assert_array_equal(got, pil)
                    pillow_checked += 1
                else:  # only where both sides shrink by different factors (pass order, module docstring)
                    assert oh < h and ow < w and oh / h != ow / w, (shape, oh, ow)
    assert pillow_checked >= 2 * len(RESIZE_GRID) - 4


def test_pil_resize_dispatch_and_strided_views(monkeypatch: pytest.MonkeyPatch) -> None:
    ext = _ext_pil_resize()
    img = np.random.default_rng(5).integers(0, 256, (61, 83, 3), dtype=np.uint8)
    calls = []
    monkeypatch.setattr(pp, "_ext", type("Spy", (), {"pil_resize": staticmethod(
        lambda *a: calls.append(a) or ext(*a))}))
    for view in (img, img[::2, ::3], img[:, ::-1], img[..., ::-1], img[5:40, 7:50]):
        want = vp._pil_resize_reference(view, 45, 29, 1)
        for env in ("", "auto", "extension", "reference"):
            monkeypatch.setenv(pp.ENV_VAR, env)
            n = len(calls)
            np.testing.assert_array_equal(pil_resize(view, 45, 29), want)
            assert len(calls) == n + (env != "reference")
    assert all(a[0].flags.c_contiguous for a in calls)
    out = pil_resize(img, 61, 83)  # same size: a copy
    assert out is not img and np.array_equal(out, img)
    monkeypatch.setattr(pp, "_ext", None)
    monkeypatch.setenv(pp.ENV_VAR, "extension")
    with pytest.raises(ImportError, match="EDGEVLP_PREPROCESS=extension"):
        pil_resize(img, 10, 10)
    monkeypatch.setenv(pp.ENV_VAR, "auto")
    np.testing.assert_array_equal(pil_resize(img, 45, 29), vp._pil_resize_reference(img, 45, 29, 1))


def test_split_image_extension_equals_reference(monkeypatch: pytest.MonkeyPatch) -> None:
    _ext_pil_resize()
    frame = _smooth(70, 90, seed=4)
    spec = ImageSplitSpec.from_processor_config(SMALL)
    outs = []
    for env in ("reference", "extension"):
        monkeypatch.setenv(pp.ENV_VAR, env)
        outs.append(split_image(frame, spec))
    np.testing.assert_array_equal(outs[0].pixel_values, outs[1].pixel_values)


_BIG = np.broadcast_to(np.zeros((1, 1, 3), np.uint8), (65536, 65536, 3))  # no memory behind it
BAD_RESIZE = {  # case: (exception, text, args)
    "not an array": (TypeError, "img must be a numpy.ndarray (uint8 HxW or HxWxC), got list", ([[0]], 2, 2)),
    "float": (ValueError, "img must be uint8 HxW or HxWxC, got float32 with shape (4, 4, 3)",
              (np.zeros((4, 4, 3), np.float32), 2, 2)),
    "4-d": (ValueError, "got uint8 with shape (1, 4, 4, 3)", (np.zeros((1, 4, 4, 3), np.uint8), 2, 2)),
    "1-d": (ValueError, "got uint8 with shape (4,)", (np.zeros(4, np.uint8), 2, 2)),
    "empty": (ValueError, "img is empty (shape (0, 4, 3))", (np.zeros((0, 4, 3), np.uint8), 2, 2)),
    "no channels": (ValueError, "img is empty (shape (4, 4, 0))", (np.zeros((4, 4, 0), np.uint8), 2, 2)),
    "height 0": (ValueError, "height must be in 1..65536, got 0", (np.zeros((4, 4, 3), np.uint8), 0, 2)),
    "width big": (ValueError, "width must be in 1..65536, got 65537", (np.zeros((4, 4, 3), np.uint8), 2, 65537)),
    "height float": (TypeError, "height must be an int, got 2.0", (np.zeros((4, 4, 3), np.uint8), 2.0, 2)),
    "width bool": (TypeError, "width must be an int, got True", (np.zeros((4, 4, 3), np.uint8), 2, True)),
    "width np.bool_": (TypeError, "width must be an int, got np.True_", (np.zeros((4, 4, 3), np.uint8), 2, np.True_)),
    "resample 0": (ValueError, "resample must be 1 (LANCZOS), 2 (BILINEAR), 3 (BICUBIC), 4 (BOX) or 5 (HAMMING), got 0",
                   (np.zeros((4, 4, 3), np.uint8), 2, 2, 0)),
    "resample 6": (ValueError, "or 5 (HAMMING), got 6", (np.zeros((4, 4, 3), np.uint8), 2, 2, 6)),
    "resample str": (TypeError, "resample must be an int, got 'lanczos'", (np.zeros((4, 4, 3), np.uint8), 2, 2, "lanczos")),
    "too large": (ValueError, "img is too large: shape (65536, 65536, 3) resized to (2, 2) needs more than 2147483648",
                  (_BIG, 2, 2)),
    "too large out": (ValueError, "img is too large: shape (4, 4, 3) resized to (65536, 65536)",
                      (np.zeros((4, 4, 3), np.uint8), 65536, 65536)),
}


@pytest.mark.parametrize("case", BAD_RESIZE)
def test_pil_resize_bad_input_same_error(case: str, monkeypatch: pytest.MonkeyPatch) -> None:
    ext = _ext_pil_resize()
    exc, text, args = BAD_RESIZE[case]

    def reference(*a: object) -> object:
        monkeypatch.setenv(pp.ENV_VAR, "reference")
        return pil_resize(*a)

    def dispatched(*a: object) -> object:
        monkeypatch.setenv(pp.ENV_VAR, "extension")
        return pil_resize(*a)

    assert_same_error([ext, reference, dispatched], exc, text, lambda: (args, {}))
    if exc is ValueError:
        with pytest.raises(InputError):
            reference(*args)


def test_extension_pil_resize_needs_c_contiguous_and_numpy_ints() -> None:
    ext = _ext_pil_resize()
    img = np.random.default_rng(0).integers(0, 256, (9, 8, 3), dtype=np.uint8)
    with pytest.raises(ValueError, match=r"C-contiguous; pass np.ascontiguousarray\(img\)"):
        ext(img[:, ::2], 4, 4)
    np.testing.assert_array_equal(ext(img, np.int64(5), np.int32(3), np.uint8(3)), vp._pil_resize_reference(img, 5, 3, 3))
    np.testing.assert_array_equal(pil_resize(img, np.int64(5), np.int32(3), np.uint8(3)),
                                  vp._pil_resize_reference(img, 5, 3, 3))


def _tokenizer():
    from tokenizers import Tokenizer, models, pre_tokenizers

    vocab = {"[UNK]": 0, **{c: i + 1 for i, c in enumerate("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ:?<>|_\n")}}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Split("", "isolated")
    special = ["<image>", "<fake_token_around_image>", "<global-img>", "<end_of_utterance>",
               *(f"<row_{i}_col_{j}>" for i in range(1, 7) for j in range(1, 7))]
    fast = transformers.PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="[UNK]")
    fast.add_special_tokens({"additional_special_tokens": special})
    return fast


def _smolvlm_template() -> str:
    """SmolVLM's DEFAULT_CHAT_TEMPLATE, read from transformers' source (its module needs torchvision)."""
    src = Path(transformers.__file__).parent / "models" / "smolvlm" / "processing_smolvlm.py"
    for node in ast.parse(src.read_text()).body:
        if isinstance(node, ast.Assign) and getattr(node.targets[0], "id", "") == "DEFAULT_CHAT_TEMPLATE":
            return ast.literal_eval(node.value)
    pytest.fail("DEFAULT_CHAT_TEMPLATE not found in processing_smolvlm.py")


@pytest.mark.parametrize("cfg,hw", [(SMALL, (60, 100)), (SMALL, (100, 230)), ({**SMALL, "do_image_splitting": False},
                                     (60, 100)), (SMALL, (40, 40))])
def test_expanded_prompt_equals_idefics3_processor(cfg: dict, hw: tuple[int, int]) -> None:
    tok = _tokenizer()
    proc = transformers.Idefics3Processor(image_processor=_hf(cfg), tokenizer=tok, image_seq_len=3,
                                          chat_template=_smolvlm_template())
    messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "What is this?"}]}]
    text = proc.apply_chat_template(messages, add_generation_prompt=True)
    rgb = _smooth(*hw, seed=1)
    seen: list = []
    call = type(tok).__call__

    def record(self, text, *args, **kwargs):  # the string the processor hands its tokenizer
        seen.append(text)
        return call(self, text, *args, **kwargs)

    with mock.patch.object(type(tok), "__call__", record):
        ids = proc(text=text, images=[rgb], return_tensors="np")["input_ids"][0]
    split = split_image(np.ascontiguousarray(rgb[..., ::-1]), ImageSplitSpec.from_processor_config(cfg))
    ours = build_prompt(_smolvlm_template(), "What is this?", split.rows, split.cols, 3)
    assert tok(ours, return_tensors="np")["input_ids"][0].tolist() == ids.tolist()
    assert seen[-1] == [ours]
    assert ours.count("<image>") == 3 * (split.rows * split.cols + 1)


def test_chat_template_equals_apply_chat_template() -> None:
    tok = _tokenizer()
    template = _smolvlm_template()
    for question in ("What is this?", "Describe {{ it }} <b>&</b>\n twice."):
        messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": question}]}]
        ref = tok.apply_chat_template(messages, chat_template=template, add_generation_prompt=True, tokenize=False)
        assert ChatTemplate(template).render_question(question) == ref
        assert ChatTemplate(template).render(messages, add_generation_prompt=False) == tok.apply_chat_template(
            messages, chat_template=template, add_generation_prompt=False, tokenize=False)
    assert ref.startswith("<|im_start|>User:<image>Describe") and ref.endswith("<end_of_utterance>\nAssistant:")
    fancy = ("{% for m in messages %}{% generation %}{{ m | tojson }}{% endgeneration %}{% endfor %}"
             "{% if messages|length > 5 %}{{ raise_exception('too long') }}{% endif %}{{ bos_token }}")
    msgs = [{"role": "user", "content": "é<"}]
    assert ChatTemplate(fancy, {"bos_token": "<s>"}).render(msgs) == \
        transformers.utils.chat_template_utils.render_jinja_template([msgs], chat_template=fancy,
                                                                     add_generation_prompt=True, bos_token="<s>")[0][0]


def test_expand_matches_hf_function_and_bad_prompts() -> None:
    from transformers.models.idefics3.processing_idefics3 import get_image_prompt_string

    for rows, cols in ((0, 0), (1, 1), (2, 3), (4, 4)):
        hf = get_image_prompt_string(rows, cols, 5, "<fake_token_around_image>", "<image>", "<global-img>")
        assert expand_image_tokens("a<image>b", rows, cols, image_seq_len=5) == "a" + hf + "b"
    with pytest.raises(InputError, match="exactly one '<image>'.*found 2"):
        expand_image_tokens("<image><image>", 0, 0, image_seq_len=2)
    with pytest.raises(InputError, match="found 0"):
        expand_image_tokens("no image", 0, 0, image_seq_len=2)
    with pytest.raises(InputError, match="rows=2, cols=0"):
        expand_image_tokens("<image>", 2, 0, image_seq_len=2)
    with pytest.raises(InputError, match="image_seq_len=0"):
        expand_image_tokens("<image>", 0, 0, image_seq_len=0)


def test_spec_round_trip_and_validation() -> None:
    spec = ImageSplitSpec.from_processor_config(SMOLVLM_256M)
    assert (spec.longest_edge, spec.tile_size, spec.resample) == (2048, 512, 1)
    assert ImageSplitSpec.from_dict(json.loads(json.dumps(spec.to_dict()))) == spec
    assert ImageSplitSpec.from_processor_config({}) == ImageSplitSpec()  # HF class defaults
    with pytest.raises(ImageSplitSpecError, match="unknown keys"):
        ImageSplitSpec.from_dict({**spec.to_dict(), "crop": 3})
    with pytest.raises(ModelLoadError, match="tile_size=0"):
        ImageSplitSpec.from_processor_config({**SMOLVLM_256M, "max_image_size": {"longest_edge": 0}})
    with pytest.raises(InputError, match="resample=0.*NEAREST is not supported"):
        ImageSplitSpec(resample=0)
    with pytest.raises(InputError, match=r"image_std=\(0.5, 0.0, 0.5\).*> 0"):
        ImageSplitSpec(image_std=[0.5, 0.0, 0.5])
    with pytest.raises(InputError, match="image_mean=.*3 numbers"):
        ImageSplitSpec(image_mean=[0.5, 0.5])
    with pytest.raises(ImageSplitSpecError, match="size=.*longest_edge"):
        ImageSplitSpec.from_processor_config({**SMOLVLM_256M, "size": {"height": 10, "width": 10}})
    with pytest.raises(ImageSplitSpecError, match="image_processor_type='BlipImageProcessor'.*Idefics3"):
        ImageSplitSpec.from_processor_config({"image_processor_type": "BlipImageProcessor"})
    with pytest.raises(ImageSplitSpecError, match="do_pad='yes'"):
        ImageSplitSpec(do_pad="yes")  # type: ignore[arg-type]


@pytest.mark.parametrize("frame,what", [
    (np.zeros((8, 8, 3), np.float32), "float32"),
    (np.zeros((8, 8), np.uint8), r"shape \(8, 8\)"),
    (np.zeros((8, 8, 4), np.uint8), r"shape \(8, 8, 4\)"),
    (np.zeros((0, 8, 3), np.uint8), r"shape \(0, 8, 3\)"),
    ([[0]], "list"),
])
def test_bad_frames(frame: object, what: str) -> None:
    with pytest.raises(InputError, match=f"uint8 HxWx3 BGR.*got.*{what}.*convert"):
        split_image(frame, ImageSplitSpec(longest_edge=64, tile_size=32))  # type: ignore[arg-type]
    with pytest.raises(InputError, match="method='torch'"):
        split_image(np.zeros((8, 8, 3), np.uint8), ImageSplitSpec(), method="torch")
    with pytest.raises(InputError, match="ImageSplitSpec.from_processor_config"):
        split_image(np.zeros((8, 8, 3), np.uint8), {"longest_edge": 64})  # type: ignore[arg-type]


def test_import_is_lean() -> None:
    code = ("import sys, edgevlp.runtime.vlm_processing as m\n"
            "m.ChatTemplate('{{ 1 }}').render([])\n"
            "print(sorted(k for k in ('torch', 'transformers', 'PIL', 'cv2') if k in sys.modules))")
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert res.stdout.strip() == "[]", res.stdout
