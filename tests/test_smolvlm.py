"""The vqa family (SmolVLM, Idefics3) on tiny random models: the adapter's loop-free vision path equals
transformers', the three exported graphs carry HF's SmolVLM ONNX names, parity (greedy answers identical
to ``generate`` on real photos, split into 2 x 2 tiles + the global image and unsplit) holds on
onnxruntime and OpenVINO, and the torch-free ``Assistant`` streams, samples (seeded) and rejects bad input.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from edgevlp.errors import InputError, NotAvailableYet
from edgevlp.models.smolvlm import Idefics3Adapter, SmolVLMAdapter

FAMILIES = {"SmolVLMForConditionalGeneration": SmolVLMAdapter, "Idefics3ForConditionalGeneration": Idefics3Adapter}


@pytest.fixture(scope="module")
def bundles(tmp_path_factory):
    """(architecture, target) -> bundle of the tiny model (exported once per module)."""
    from edgevlp.export import export_model

    cache = {}

    def make(arch: str, target: str = "cpu"):
        if (arch, target) not in cache:
            out = tmp_path_factory.mktemp(f"{arch}-{target}") / "b"
            export_model(FAMILIES[arch].tiny(), out, target=target, progress=False)
            cache[arch, target] = out
        return cache[arch, target]

    return make


@pytest.mark.parametrize("arch", FAMILIES)
def test_vision_path_is_transformers_own(arch, photos_rgb) -> None:
    adapter = FAMILIES[arch].tiny()
    feats = []
    for name in ("astronaut", "coffee"):
        inputs = adapter.reference_inputs(photos_rgb[name], "what is it?")
        px, mask = inputs["pixel_values"], inputs["pixel_attention_mask"]
        assert px.shape[1] == 5  # 2 x 2 tiles + the global image
        partial = mask.clone()
        partial[:, -1, :, 20:] = 0  # a padded image: fewer real patches, other position buckets
        for m in (mask, partial):
            with torch.no_grad():
                ref = adapter.model.model.get_image_features(px, m)
                got = adapter.image_features(px, m)
            torch.testing.assert_close(got, ref, rtol=0, atol=0)
        feats.append(got)
    assert (feats[0] - feats[1]).abs().max() > 0.1, "image features barely depend on the image"
    a = adapter.answer_ids(photos_rgb["astronaut"], "what is it?", 8)
    b = adapter.answer_ids(photos_rgb["coffee"], "what is it?", 8)
    assert not torch.equal(a, b), "the answers ignore the image"


@pytest.mark.parametrize("target", ["cpu", "openvino"])
@pytest.mark.parametrize("arch", FAMILIES)
def test_bundle_parity_and_names(bundles, arch, target) -> None:
    import json

    import jsonschema

    from edgevlp.bundle import manifest_schema, read_manifest

    path = bundles(arch, target)
    jsonschema.validate(json.loads((path / "manifest.json").read_text()), manifest_schema())
    m = read_manifest(path)
    assert m.task == "vqa" and m.verified and m.parity["passed"]
    assert list(m.graphs) == ["vision_encoder", "embed_tokens", "decoder"]
    assert [t.name for t in m.graphs["vision_encoder"].inputs] == ["pixel_values", "pixel_attention_mask"]
    assert [t.name for t in m.graphs["decoder"].inputs][:4] == [
        "inputs_embeds", "attention_mask", "position_ids", "past_key_values.0.key"]
    assert m.graphs["decoder"].outputs[1].name == "present.0.key"
    assert m.graphs["decoder"].inputs[3].shape[1] == 2  # grouped-query: 2 kv heads for 4 query heads
    p = m.parity
    assert p["greedy_tokens_identical"] is True and p["prompt_ids_identical"] is True
    assert p["outputs"]["image_features"]["ok"] and p["outputs"]["image_features"]["max_abs_source"] > 0.1
    cases = p["cases"]
    assert sorted({c["images"] for c in cases}) == [1, 5]  # unsplit, and 2 x 2 tiles + global
    assert all(len(c["source_token_ids"]) >= 2 and c["source_token_ids"] == c["exported_token_ids"] for c in cases)
    assert cases[0]["source_token_ids"] != cases[2]["source_token_ids"], "both photos gave the same answer"


def test_ask_streams_samples_and_times(bundles, photos_bgr) -> None:
    from edgevlp.runtime import Answer, Assistant, load

    vlm = load(bundles("SmolVLMForConditionalGeneration"))
    assert isinstance(vlm, Assistant)
    frame = photos_bgr["chelsea"]
    pieces: list[str] = []
    greedy = vlm.ask(frame, "is there a cat?", max_new_tokens=12, stream=pieces.append)
    assert isinstance(greedy, Answer) and len(greedy.token_ids) == 12 and greedy.images == 5
    assert "".join(pieces) == greedy.text
    assert {"preprocess", "encode", "prefill", "decode", "decode_per_token"} <= set(greedy.timings)
    assert vlm.ask(frame, "is there a cat?", max_new_tokens=12).token_ids == greedy.token_ids
    assert vlm.ask(frame, "is there a dog?", max_new_tokens=12).token_ids != greedy.token_ids
    one = vlm.ask(frame, "is there a cat?", max_new_tokens=4, image_splitting=False)
    assert one.images == 1 and one.prompt_tokens < greedy.prompt_tokens
    s1 = vlm.ask(frame, "is there a cat?", max_new_tokens=12, do_sample=True, temperature=1.5, seed=1)
    s1b = vlm.ask(frame, "is there a cat?", max_new_tokens=12, do_sample=True, temperature=1.5, seed=1)
    s2 = vlm.ask(frame, "is there a cat?", max_new_tokens=12, do_sample=True, temperature=1.5, seed=2)
    assert s1.token_ids == s1b.token_ids and s1.token_ids != s2.token_ids
    top1 = vlm.ask(frame, "is there a cat?", max_new_tokens=12, do_sample=True, top_k=1, seed=3)
    assert top1.token_ids == greedy.token_ids  # top-k 1 is greedy
    assert vlm.caption(frame, max_new_tokens=3).token_ids == vlm.ask(frame, None, max_new_tokens=3).token_ids


@pytest.mark.parametrize("kwargs, needle", [
    ({"max_new_tokens": 0}, "max_new_tokens must be an int >= 1"),
    ({"temperature": 0.0, "do_sample": True}, "temperature must be > 0"),
    ({"top_p": 1.5}, r"top_p must be in \(0, 1\]"),
    ({"top_k": -1}, "top_k must be an int >= 0"),
])
def test_bad_generation_arguments_are_clear(bundles, photos_bgr, kwargs, needle) -> None:
    from edgevlp.runtime import load

    vlm = load(bundles("SmolVLMForConditionalGeneration"))
    with pytest.raises(InputError, match=needle):
        vlm.ask(photos_bgr["coffee"], "what?", **kwargs)


def test_bad_frame_and_question(bundles) -> None:
    from edgevlp.runtime import load

    vlm = load(bundles("SmolVLMForConditionalGeneration"))
    with pytest.raises(InputError, match="cv2.imread returns None"):
        vlm.ask(None, "what?")
    with pytest.raises(InputError, match="non-empty question"):
        vlm.ask(np.zeros((40, 40, 3), np.uint8), "  ")


def test_compression_of_vqa_models_says_it_has_not_landed() -> None:
    from edgevlp.tasks import get_task

    with pytest.raises(NotAvailableYet, match="issue #16"):
        get_task("vqa").calibration_feeds(None, {}, [], [], max_new_tokens=4)
