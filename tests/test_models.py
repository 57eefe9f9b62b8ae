"""Every registered adapter x its tiny config: load, parts, preprocessing, tokenizer, input dependence."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch

from edgevlp.errors import ModelLoadError, UnsupportedModelError
from edgevlp.models import adapter_class, known_architectures, load_model
from edgevlp.models.base import CaptionerAdapter, DetectorAdapter

#: the captioner and detector families; the vqa ones (SmolVLM, Idefics3: tiles, chat prompts) have
#: their own tests in tests/test_smolvlm.py
ARCHS = [a for a in known_architectures() if adapter_class(a).task != "vqa"]


def test_registry_lists_the_six_families() -> None:
    assert set(known_architectures()) == {
        "BlipForConditionalGeneration", "VisionEncoderDecoderModel", "OwlViTForObjectDetection",
        "Owlv2ForObjectDetection", "SmolVLMForConditionalGeneration", "Idefics3ForConditionalGeneration"}


@pytest.fixture(params=ARCHS)
def loaded(request, tiny_model_dir):
    model_dir = tiny_model_dir(request.param)
    return request.param, model_dir, load_model(model_dir)


def test_load_and_parts(loaded) -> None:
    arch, model_dir, adapter = loaded
    assert adapter.architecture == arch
    assert type(adapter.model).__name__ == json.loads((model_dir / "config.json").read_text())[
        "architectures"][0]
    counts = adapter.parameter_counts()
    total = sum(p.numel() for p in adapter.model.parameters())
    assert counts["total"] == total > 0
    assert sum(v for k, v in counts.items() if k != "total") == total
    kinds = {p.kind for p in adapter.parts}
    for part in adapter.parts:
        assert counts[part.name] > 0, f"part {part.name} matched no parameter"
    if isinstance(adapter, CaptionerAdapter):
        assert kinds == {"vision_encoder", "text_decoder"}
        assert any(p.kv_cache for p in adapter.parts)
    else:
        assert kinds == {"vision_encoder", "text_encoder", "detection_heads"}


def test_preprocess_spec_matches_processor_config(loaded) -> None:
    _, model_dir, adapter = loaded
    spec = adapter.preprocess_spec()
    cfg = json.loads((model_dir / "preprocessor_config.json").read_text())
    assert (spec.height, spec.width) == (cfg["size"]["height"], cfg["size"]["width"])
    assert spec.mean == pytest.approx(cfg["image_mean"]) and spec.std == pytest.approx(cfg["image_std"])
    assert all(0 <= m <= 1 for m in spec.mean) and all(s > 0 for s in spec.std)
    assert spec.rescale == pytest.approx(1 / 255)
    expected_mode = "pad_square" if cfg["image_processor_type"].startswith("Owlv2") else "stretch"
    assert spec.resize_mode == expected_mode
    expected_interp = {2: "bilinear", 3: "bicubic"}[cfg["resample"]]
    assert spec.interpolation == expected_interp
    assert type(spec).from_dict(json.loads(json.dumps(spec.to_dict()))) == spec


def test_tokenizer_round_trip(loaded, tmp_path) -> None:
    from tokenizers import Tokenizer

    _, _, adapter = loaded
    text = "a small red circle left of a blue square"
    ids = adapter.tokenizer(text, add_special_tokens=False)["input_ids"]
    assert adapter.tokenizer.decode(ids, skip_special_tokens=True) == text
    # The runtime only sees tokenizer.json through the `tokenizers` package: same ids there.
    path = adapter.save_tokenizer(tmp_path)
    runtime_tok = Tokenizer.from_file(str(path))
    assert runtime_tok.encode(text, add_special_tokens=False).ids == ids
    assert runtime_tok.decode(ids) == text


def _pixel_values(model_dir, photos_rgb) -> torch.Tensor:
    from transformers import AutoImageProcessor

    processor = AutoImageProcessor.from_pretrained(model_dir)
    return processor(images=[photos_rgb["astronaut"], photos_rgb["coffee"]], return_tensors="pt")[
        "pixel_values"]


def test_outputs_depend_on_the_image(loaded, photos_rgb) -> None:
    _, model_dir, adapter = loaded
    pixels = _pixel_values(model_dir, photos_rgb)
    outputs = adapter.forward(pixels)
    assert outputs
    for name, value in outputs.items():
        diff = (value[0] - value[1]).abs().max().item()
        scale = value.abs().max().item()
        assert diff > 1e-2 * max(scale, 1e-6), f"{name} barely depends on the image ({diff=}, {scale=})"
    if isinstance(adapter, CaptionerAdapter):
        ids = adapter.generate(pixels, max_new_tokens=8)
        assert ids.shape[0] == 2
        assert not torch.equal(ids[0], ids[1]), "greedy captions of two photos are identical"
    if isinstance(adapter, DetectorAdapter):
        a = adapter.forward(pixels[:1], prompts=["red circle", "blue square"])["logits"]
        b = adapter.forward(pixels[:1], prompts=["green star", "cat"])["logits"]
        assert (a - b).abs().max() > 1e-2, "detector logits ignore the prompts"


def test_save_and_reload_is_identical(loaded, tmp_path, photos_rgb) -> None:
    _, model_dir, adapter = loaded
    adapter.save_pretrained(tmp_path / "again")
    again = load_model(tmp_path / "again")
    pixels = _pixel_values(model_dir, photos_rgb)
    for name, value in adapter.forward(pixels).items():
        torch.testing.assert_close(again.forward(pixels)[name], value)


# ------------------------------------------------------------------------------------- errors
def test_unknown_architecture_lists_known(tmp_path) -> None:
    (tmp_path / "config.json").write_text(json.dumps({"architectures": ["LlamaForCausalLM"]}))
    with pytest.raises(UnsupportedModelError) as info:
        load_model(tmp_path)
    for arch in ARCHS:
        assert arch in str(info.value)


@pytest.mark.parametrize("content, needle", [
    ("{not json", "not valid JSON"),
    ("[1, 2]", "JSON object"),
    ("{}", "architectures"),
])
def test_bad_config(tmp_path, content, needle) -> None:
    (tmp_path / "config.json").write_text(content)
    with pytest.raises(ModelLoadError, match=needle):
        load_model(tmp_path)


def test_missing_and_non_model_paths(tmp_path) -> None:
    with pytest.raises(ModelLoadError, match="no such model directory"):
        load_model(tmp_path / "nope")
    with pytest.raises(ModelLoadError, match="no config.json"):
        load_model(tmp_path)


def test_uncached_hub_id_names_the_local_fix(monkeypatch, tmp_path) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    with pytest.raises(ModelLoadError, match="pass DIR in its place"):
        load_model("Salesforce/blip-image-captioning-base")


def test_pickle_weights_are_refused(tiny_model_dir, tmp_path) -> None:
    src = tiny_model_dir("BlipForConditionalGeneration")
    dst = tmp_path / "pickled"
    shutil.copytree(src, dst)
    for f in dst.glob("*.safetensors"):
        f.rename(f.with_name("pytorch_model.bin"))
    with pytest.raises(ModelLoadError, match="never unpickles"):
        load_model(dst)


def test_tiny_models_are_deterministic() -> None:
    from edgevlp.models import tiny_adapter

    a, b = tiny_adapter(ARCHS[0], seed=3), tiny_adapter(ARCHS[0], seed=3)
    for (na, pa), (_, pb) in zip(a.model.named_parameters(), b.model.named_parameters()):
        assert torch.equal(pa, pb), na
    assert np.isfinite(sum(p.sum().item() for p in a.model.parameters()))
