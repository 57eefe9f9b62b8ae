"""Greedy and beam-search decoding of exported captioners == transformers ``generate``, token for token.

Bundles are tiny re-initialised BLIP and VisionEncoderDecoder models exported for the cpu target, each
in two variants: as built, and with the eos logit raised (``eos``) so that hypotheses finish early,
at different steps per image and per beam, and the finished-hypothesis logic of beam search runs.
"""

from __future__ import annotations

import statistics
import time
from dataclasses import dataclass
from typing import Any

import numpy as np
import pytest
import torch

from edgevlp.errors import InputError

ARCHS = ["BlipForConditionalGeneration", "VisionEncoderDecoderModel"]
VARIANTS = ["plain", "eos"]
#: How much the eos logit is raised in the ``eos`` variant (chosen so that some images finish within
#: a few tokens and others run to max_new_tokens; ``test_eos_variant_finishes_early`` checks it).
EOS_BOOST = {"BlipForConditionalGeneration": 2.0, "VisionEncoderDecoderModel": 3.0}


@pytest.fixture(scope="module", autouse=True)
def one_torch_thread():
    """transformers on one thread: on a small shared machine, torch's thread pool competing with
    onnxruntime's makes the reference runs (and so this file) many times slower and timings noisy."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@dataclass
class Pair:
    adapter: Any  # edgevlp.models CaptionerAdapter (torch)
    model: Any  # edgevlp.runtime.Captioner (onnxruntime)
    pixels: np.ndarray  # (5, 3, H, W): two photos, three noise images
    eos: int


def _boost_eos(adapter: Any, arch: str) -> None:
    """Raise the eos logit of the torch model, before export (output side only)."""
    eos = adapter.generation_settings()["eos_token_id"]
    with torch.no_grad():
        if arch == "BlipForConditionalGeneration":
            adapter.model.text_decoder.cls.predictions.bias[eos] += EOS_BOOST[arch]
        else:  # GPT-2 head has no bias (tied to the embeddings): shift the final norm towards eos
            direction = adapter.model.decoder.lm_head.weight[eos]
            adapter.model.decoder.transformer.ln_f.bias += EOS_BOOST[arch] * direction / direction.norm()


@pytest.fixture(scope="session")
def pairs(tmp_path_factory: pytest.TempPathFactory, tiny_model_dir, exported):
    """Factory: (architecture, variant) -> Pair of the torch model and its exported cpu bundle."""
    from edgevlp.export import export_model
    from edgevlp.export.parity import parity_photos, parity_pixels
    from edgevlp.models import load_model, tiny_adapter
    from edgevlp.runtime import load
    from edgevlp.spec import PreprocessSpec

    cache: dict[tuple[str, str], Pair] = {}

    def make(arch: str, variant: str) -> Pair:
        if (arch, variant) not in cache:
            if variant == "eos":
                root = tmp_path_factory.mktemp(f"gen-{variant}")
                adapter = tiny_adapter(arch)
                _boost_eos(adapter, arch)
                model_dir, bundle = root / "model", root / "bundle"
                adapter.save_pretrained(model_dir)
                export_model(model_dir, bundle, target="cpu", progress=False)
            else:  # the suite's shared tiny model and its cpu bundle
                model_dir, bundle = tiny_model_dir(arch), exported(arch, "cpu")
            model = load(bundle)
            spec = PreprocessSpec.from_dict(model.manifest.preprocess)
            photos = parity_pixels(spec, parity_photos())
            noise = np.random.default_rng(1).normal(size=(3, *photos.shape[1:])).astype(np.float32)
            cache[arch, variant] = Pair(load_model(model_dir), model, np.concatenate([photos, noise]),
                                        int(model.generation["eos_token_id"]))
        return cache[arch, variant]

    return make


def hf_ids(adapter: Any, pixels: np.ndarray, **kw: Any) -> np.ndarray:
    """transformers' ids without the start token (what ``Captioner.generate`` returns)."""
    return adapter.generate(torch.from_numpy(pixels), **kw).numpy()  # do_sample=False, start stripped


def assert_same(pair: Pair, rows: list[int], **kw: Any) -> np.ndarray:
    ref = hf_ids(pair.adapter, pair.pixels[rows], **kw)
    got = pair.model.generate(pair.pixels[rows], **kw)
    assert got.dtype == np.int64
    assert got.shape == ref.shape and (got == ref).all(), f"{kw} rows {rows}:\nHF\n{ref}\nedgevlp\n{got}"
    return ref


BATCHES = [[0], [1], [2], [3], [4], [0, 1], [2, 4], [0, 1, 2, 3, 4]]
BEAM_BATCHES = [[0], [2], [4], [0, 1, 2, 3, 4]]


@pytest.mark.parametrize("max_new_tokens", [1, 5, 20])
@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize("arch", ARCHS)
def test_greedy_matches_transformers(pairs, arch, variant, max_new_tokens) -> None:
    pair = pairs(arch, variant)
    for rows in BATCHES:
        assert_same(pair, rows, max_new_tokens=max_new_tokens, num_beams=1)
        assert_same(pair, rows, max_new_tokens=max_new_tokens, num_beams=1, repetition_penalty=1.3)


@pytest.mark.parametrize("length_penalty", [1.0, 0.5, 2.0])
@pytest.mark.parametrize("num_beams", [2, 3])
@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize("arch", ARCHS)
def test_beam_search_matches_transformers(pairs, arch, variant, num_beams, length_penalty) -> None:
    pair = pairs(arch, variant)
    for max_new_tokens in (1, 5, 20):
        for rows in BEAM_BATCHES:
            assert_same(pair, rows, max_new_tokens=max_new_tokens, num_beams=num_beams,
                        length_penalty=length_penalty)


@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize("arch", ARCHS)
def test_beam_search_options_match_transformers(pairs, arch, variant) -> None:
    """Repetition penalty in beam search (applied to log-probs), early stopping, a wide beam."""
    pair = pairs(arch, variant)
    for rows in ([0], [3], [0, 1, 2, 3, 4]):
        for kw in (dict(num_beams=2, repetition_penalty=1.3), dict(num_beams=3, repetition_penalty=1.3),
                   dict(num_beams=3, repetition_penalty=0.7, length_penalty=2.0),
                   dict(num_beams=3, early_stopping=True), dict(num_beams=2, early_stopping="never"),
                   dict(num_beams=3, length_penalty=-0.5), dict(num_beams=6)):
            for max_new_tokens in (5, 20):
                assert_same(pair, rows, max_new_tokens=max_new_tokens, **kw)


@pytest.mark.parametrize("arch", ARCHS)
def test_eos_variant_finishes_early(pairs, arch) -> None:
    """The eos cases above are not vacuous: hypotheses finish early, at different steps, and shorter
    rows are padded (BLIP's pad id is 0, so transformers pads its beam output with eos)."""
    pair = pairs(arch, "eos")
    for kw in (dict(num_beams=1), dict(num_beams=3)):
        ids = assert_same(pair, [0, 1, 2, 3, 4], max_new_tokens=20, **kw)
        first_eos = [int(np.argmax(row == pair.eos)) if (row == pair.eos).any() else None for row in ids]
        early = [i for i in first_eos if i is not None and i < 8]
        assert early, f"{kw}: no image finished within 8 tokens: {first_eos}"
        assert None in first_eos or len(set(first_eos)) > 1, f"{kw}: every image finished alike"
    plain = hf_ids(pairs(arch, "plain").adapter, pair.pixels, max_new_tokens=20, num_beams=3)
    assert plain.shape[1] == 20, "the plain variant should also have images that never finish"


def test_bad_generation_arguments_are_refused(pairs) -> None:
    model = pairs("BlipForConditionalGeneration", "plain").model
    pixels = pairs("BlipForConditionalGeneration", "plain").pixels[:1]
    limit = int(model.generation["max_length"])
    bad = [dict(num_beams=0), dict(num_beams=-2), dict(num_beams=1.5), dict(num_beams=True),
           dict(max_new_tokens=0), dict(max_new_tokens=-1), dict(max_new_tokens=limit + 1),
           dict(max_new_tokens=3.0), dict(repetition_penalty=0.0), dict(repetition_penalty=-1.3),
           dict(repetition_penalty=float("nan")), dict(length_penalty=float("inf")),
           dict(length_penalty="long"), dict(early_stopping="sometimes")]
    for kw in bad:
        name = next(iter(kw))
        with pytest.raises(InputError, match=name):
            model.generate(pixels, **kw)
    frame = np.zeros((40, 50, 3), np.uint8)
    with pytest.raises(InputError, match="num_beams must be an integer >= 1"):
        model.caption(frame, num_beams=0)
    with pytest.raises(InputError, match=f"at most {limit}"):
        model.caption(frame, max_new_tokens=limit + 1)
    with pytest.raises(ValueError):  # InputError is a ValueError too
        model.generate(pixels, repetition_penalty=0)
    assert model.generate(pixels, max_new_tokens=limit, num_beams=2).shape[1] <= limit  # the limit itself is fine


def test_caption_takes_generation_options(pairs, photos_bgr) -> None:
    pair = pairs("BlipForConditionalGeneration", "eos")
    for frame in photos_bgr.values():
        pixels = pair.model.preprocess(frame)
        for kw in (dict(), dict(num_beams=3, length_penalty=2.0), dict(repetition_penalty=1.3)):
            cap = pair.model.caption(frame, max_new_tokens=12, **kw)
            ref = [int(t) for t in hf_ids(pair.adapter, pixels, max_new_tokens=12, **kw)[0]]
            if pair.eos in ref:
                ref = ref[: ref.index(pair.eos) + 1]
            assert cap.token_ids == ref, kw
            assert cap.text == pair.model.tokenizer.decode(ref)
            assert {"preprocess", "encode", "decode", "postprocess"} <= set(cap.timings)


@pytest.mark.parametrize("num_beams", [1, 3])
def test_caption_speed_vs_transformers(pairs, photos_bgr, num_beams) -> None:
    """Measured, not asserted (run with -s): end-to-end ``caption`` of a BGR frame vs transformers
    ``generate`` on the same pixel values, producing the same tokens."""
    pair = pairs("BlipForConditionalGeneration", "plain")
    frame = photos_bgr["astronaut"]
    pixels = torch.from_numpy(pair.model.preprocess(frame))
    kw = dict(max_new_tokens=20, num_beams=num_beams)
    cap = pair.model.caption(frame, **kw)
    with torch.no_grad():
        ref = pair.adapter.model.generate(pixel_values=pixels, do_sample=False, **kw)[0, 1:].tolist()
    assert cap.token_ids == ref[: len(cap.token_ids)]

    def median_ms(fn, runs: int = 7) -> float:
        fn()  # warm-up
        times = []
        for _ in range(runs):
            t0 = time.perf_counter()
            fn()
            times.append((time.perf_counter() - t0) * 1e3)
        return statistics.median(times)

    ours = median_ms(lambda: pair.model.caption(frame, **kw))
    with torch.no_grad():
        theirs = median_ms(lambda: pair.adapter.model.generate(pixel_values=pixels, do_sample=False, **kw))
    print(f"\n[tiny BLIP, {len(cap.token_ids)} tokens, num_beams={num_beams}] edgevlp caption (preprocess + "
          f"onnxruntime + decode) {ours:.2f} ms median vs transformers generate ({torch.get_num_threads()} "
          f"torch thread) {theirs:.2f} ms: transformers / edgevlp = {theirs / ours:.1f}x")
