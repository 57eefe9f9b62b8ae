"""arch: presets: real parameter counts, real tokenizer layouts, an atomic build that every verb can load."""

from __future__ import annotations

import json

import pytest

from _presets import tiny_preset
from edgevlp.errors import ModelLoadError
from edgevlp.models import presets
from edgevlp.models.presets import PRESETS, build_model, get_preset, preset_names

MB = 1e6
#: Parameters of the real checkpoints, from the weight files in their hub repos (fp32, 4 bytes each; the
#: "Files and versions" listings, found with the search tool):
#: - blip-base: huggingface.co/Salesforce/blip-image-captioning-base/tree/9cfcdbc: model.safetensors
#:   990 MB; the file holds the LM head beside the word embeddings it is tied to (30524 x 768).
#: - blip-large: huggingface.co/Salesforce/blip-image-captioning-large/tree/353689b: model.safetensors
#:   1.88 GB, the same tied LM head.
#: - vit-gpt2: huggingface.co/nlpconnect/vit-gpt2-image-captioning/tree/93857e5: 982 MB, of which 24
#:   uint8 causal masks of 1024 x 1024 (self- and cross-attention of 12 layers, saved by transformers
#:   4.1x); a copy saved without them (motheecreator/ViT-GPT2-Image_Captioning_model) is 957 MB.
#: - owlvit-b32 613 MB (google/owlvit-base-patch32/tree/main), owlvit-b16 611 MB
#:   (google/owlvit-base-patch16/tree/10e8424), owlv2-b16 620 MB
#:   (google/owlv2-base-patch16-ensemble/tree/7c77fc1).
#: - smolvlm-256m: 256,484,928 parameters counted on the loaded checkpoint (a DocVQA baseline's log, "SmolVLM-256M
#:   ... params 256484928", found with find_string), and the same count beside a 513,028,808-byte bf16
#:   model.safetensors for docling-project/SmolDocling-256M-preview (SmolVLM-256M-Instruct fine-tuned, same
#:   shapes); the LM head is untied (49280 x 576 of it).
#: - smolvlm-500m: 507 M in a model table ("HuggingFaceTB/SmolVLM-500M-Instruct | 507M"); mlx-vlm prints
#:   "507.48M total" for SmolVLM2-500M, the same shapes.
#: The issue's own figures agree: BLIP-base 224 M, OWL-ViT B/32 153 M.
_TIED_LM_HEAD = 30524 * 768
REAL_PARAMETERS = {
    "blip-base": 990 * MB / 4 - _TIED_LM_HEAD,
    "blip-large": 1880 * MB / 4 - _TIED_LM_HEAD,
    "vit-gpt2": (982 * MB - 24 * 1024 * 1024) / 4,
    "owlvit-b32": 613 * MB / 4,
    "owlvit-b16": 611 * MB / 4,
    "owlv2-b16": 620 * MB / 4,
    "smolvlm-256m": 256_484_928,
    "smolvlm-500m": 507.48 * MB,
}


def test_every_preset_has_a_real_count() -> None:
    assert sorted(REAL_PARAMETERS) == sorted(PRESETS)
    assert preset_names() == sorted(f"arch:{n}" for n in PRESETS)


@pytest.mark.parametrize("name", sorted(REAL_PARAMETERS))
def test_parameter_count_matches_the_real_checkpoint(name: str) -> None:
    model = build_model(PRESETS[name], device="meta")  # shapes only: no memory, no init
    count = sum(p.numel() for p in model.parameters())
    assert abs(count - REAL_PARAMETERS[name]) <= 0.01 * REAL_PARAMETERS[name], (name, count)
    if name == "vit-gpt2":  # equal widths: transformers creates no enc_to_dec_proj
        assert getattr(model, "enc_to_dec_proj", None) is None


@pytest.mark.parametrize("kind, size, ids", [
    ("bert", 30524, {"[PAD]": 0, "[UNK]": 100, "[CLS]": 101, "[SEP]": 102, "[MASK]": 103, "[DEC]": 30522,
                     "[ENC]": 30523}),
    ("gpt2", 50257, {"<|endoftext|>": 50256}),
    ("clip", 49408, {"!": 0, "<|startoftext|>": 49406, "<|endoftext|>": 49407}),
    ("smolvlm", 49280, {"<|endoftext|>": 0, "<|im_start|>": 1, "<|im_end|>": 2, "<global-img>": 49152,
                        "<row_1_col_1>": 49153, "<row_6_col_6>": 49188, "<fake_token_around_image>": 49189,
                        "<image>": 49190, "<end_of_utterance>": 49279}),
])
def test_tokenizers_have_the_real_layout(kind: str, size: int, ids: dict[str, int]) -> None:
    from edgevlp._lazy import import_object

    tok = import_object(presets.TOKENIZERS[kind])(size)
    assert len(tok) == size == tok.backend_tokenizer.get_vocab_size(with_added_tokens=True)
    assert max(tok.get_vocab().values()) == size - 1
    assert {t: tok.convert_tokens_to_ids(t) for t in ids} == ids
    for prompt in ("a photo of a cat", "A photo of an astronaut, riding a horse!"):
        enc = tok(prompt)["input_ids"]
        assert enc and all(0 <= i < size for i in enc)
        if kind == "clip":  # OWL pools at argmax(input_ids): the end-of-text token
            assert enc[0] == 49406 and enc[-1] == 49407 and enc.index(max(enc)) == len(enc) - 1
        if kind not in ("gpt2", "smolvlm"):  # byte-level BPE has no unknown token at all
            assert tok.unk_token_id not in enc[1:-1]
    assert tok.decode([5, 500, size - 3])  # any id decodes (random weights emit any id)


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_preset_ids_and_processor_agree_with_the_tokenizer(name: str) -> None:
    from edgevlp.spec import PreprocessSpec

    preset = PRESETS[name]
    cfg = preset.config
    text = cfg.get("text_config") or cfg["decoder"]
    assert text["vocab_size"] == preset.vocab_size
    if preset.tokenizer == "bert":
        assert (text["bos_token_id"], text["sep_token_id"], text["pad_token_id"]) == (30522, 102, 0)
        assert cfg["vision_config"]["initializer_range"] == 0.02
    elif preset.tokenizer == "smolvlm":
        from edgevlp._lazy import import_object

        tok = import_object(presets.TOKENIZERS["smolvlm"])(preset.vocab_size)
        ids = tok.convert_tokens_to_ids
        assert cfg["image_token_id"] == ids("<image>") == 49190
        assert preset.generation["eos_token_id"] == text["eos_token_id"] == ids("<end_of_utterance>") == 49279
        assert preset.generation["pad_token_id"] == cfg["pad_token_id"] == ids("<|im_end|>") == 2
        assert preset.generation["bos_token_id"] == tok.bos_token_id == 1
        assert cfg["tie_word_embeddings"] is False and text["tie_word_embeddings"] is False
        assert text["num_attention_heads"] * text["head_dim"] == text["hidden_size"]
        assert cfg["vision_config"]["image_size"] == preset.processor["max_image_size"]["longest_edge"] == 512
        processor = {**preset.processor, "size": {"height": 512, "width": 512}}  # one tile, as the adapter
        spec = PreprocessSpec.from_processor_config(processor)
        assert (spec.height, spec.interpolation, spec.mean, spec.std) == (512, "lanczos", (0.5,) * 3, (0.5,) * 3)
        assert preset.processor["size"] == {"longest_edge": 2048} and preset.processor["do_image_splitting"]
        assert preset.cited and preset.source.count("/") == 1
        return
    elif preset.tokenizer == "gpt2":
        assert cfg["decoder_start_token_id"] == cfg["eos_token_id"] == cfg["pad_token_id"] == 50256
        assert cfg["encoder"]["hidden_size"] == cfg["decoder"]["n_embd"] == 768
    else:
        assert (text["pad_token_id"], text["eos_token_id"]) == (0, preset.vocab_size - 1)
    spec = PreprocessSpec.from_processor_config(preset.processor)
    expect = {"blip-base": (384, "bicubic", "stretch"), "blip-large": (384, "bicubic", "stretch"),
              "vit-gpt2": (224, "bilinear", "stretch"), "owlvit-b32": (768, "bicubic", "stretch"),
              "owlvit-b16": (768, "bicubic", "stretch"), "owlv2-b16": (960, "bilinear", "pad_square")}[name]
    assert (spec.height, spec.interpolation, spec.resize_mode) == expect and spec.width == spec.height
    assert preset.cited and preset.source.count("/") == 1


def test_unknown_preset_lists_the_known_ones() -> None:
    from edgevlp.models import resolve_model_dir

    with pytest.raises(ModelLoadError, match="arch:blip-base, arch:blip-large") as info:
        resolve_model_dir("arch:blip-huge")
    assert "arch:blip-huge" in str(info.value) and "arch:owlv2-b16" in str(info.value)
    with pytest.raises(ModelLoadError, match="known presets"):
        get_preset("nope")


def test_preset_builds_once_atomically_and_loads_everywhere(monkeypatch, tmp_path, capsys) -> None:
    """resolve_model_dir builds the preset once into $EDGEVLP_CACHE/arch/NAME/VERSION (a killed or failed
    build leaves nothing there); load_model, info and export read it like any model directory."""
    import numpy as np
    import torch

    from edgevlp.cli import main
    from edgevlp.models import load_model, resolve_model_dir

    monkeypatch.setenv("EDGEVLP_CACHE", str(tmp_path))
    preset = tiny_preset("blip-base")
    monkeypatch.setitem(PRESETS, preset.name, preset)
    real_build = presets.build

    def failing(p, out, **kw):  # the weights are written, then the build dies
        real_build(p, out, **kw)
        raise KeyboardInterrupt

    monkeypatch.setattr(presets, "build", failing)
    with pytest.raises(KeyboardInterrupt):
        resolve_model_dir(f"arch:{preset.name}")
    assert not any((tmp_path / "arch" / preset.name).iterdir())  # no target, no temp dir left
    monkeypatch.setattr(presets, "build", real_build)

    model_dir = resolve_model_dir(f"arch:{preset.name}")
    assert model_dir == tmp_path / "arch" / preset.name / preset.version()
    assert "building arch:tiny-blip-base (" in capsys.readouterr().err
    assert resolve_model_dir(f"arch:{preset.name}") == model_dir and not capsys.readouterr().err  # cached
    config = json.loads((model_dir / "config.json").read_text())
    assert config["architectures"] == ["BlipForConditionalGeneration"]
    assert config["edgevlp_preset"]["random_weights"] is True
    assert {p.name for p in model_dir.iterdir()} >= {"config.json", "model.safetensors", "tokenizer.json",
                                                    "preprocessor_config.json"}

    adapter = load_model(f"arch:{preset.name}")
    assert len(adapter.tokenizer) == 30524 and adapter.generation_settings()["decoder_start_token_id"] == 30522
    pixels = torch.from_numpy(np.random.default_rng(0).normal(size=(2, 3, 32, 32)).astype(np.float32))
    out = adapter.forward(pixels)["logits"]
    assert out.shape[-1] == 30524 and (out[0] - out[1]).abs().max() > 1e-4  # outputs depend on the input
    std = torch.cat([p.detach().flatten() for p in adapter.model.parameters() if p.dim() > 1]).std()
    assert 0.015 < float(std) < 0.025

    assert main(["info", f"arch:{preset.name}"]) == 0
    assert "random weights: latency only" in capsys.readouterr().out
    assert main(["info", f"arch:{preset.name}", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["preset"]["name"] == f"arch:{preset.name}"


def test_export_manifest_says_random_weights(monkeypatch, tmp_path, capsys) -> None:
    from edgevlp.cli import main
    from edgevlp.export import export_model

    monkeypatch.setenv("EDGEVLP_CACHE", str(tmp_path))
    preset = tiny_preset("owlvit-b32")
    monkeypatch.setitem(PRESETS, preset.name, preset)
    manifest = export_model(f"arch:{preset.name}", tmp_path / "bundle", target="cpu", progress=False)
    assert manifest.source["random_weights"] is True
    assert manifest.source["note"] == "random weights: latency only"
    assert manifest.source["preset"] == f"arch:{preset.name}" and manifest.verified
    assert main(["info", str(tmp_path / "bundle")]) == 0
    assert "random weights: latency only" in capsys.readouterr().out


def test_smolvlm_preset_builds_and_loads_with_its_generation_ids(monkeypatch, tmp_path) -> None:
    """The tiny smolvlm preset: the real vocabulary and special ids, generation_config.json written, the
    adapter reading eos <end_of_utterance> / pad <|im_end|> from it, image features that depend on the input."""
    import torch

    from edgevlp.models import load_model, resolve_model_dir

    monkeypatch.setenv("EDGEVLP_CACHE", str(tmp_path))
    preset = tiny_preset("smolvlm-256m")
    monkeypatch.setitem(PRESETS, preset.name, preset)
    model_dir = resolve_model_dir(f"arch:{preset.name}")
    generation = json.loads((model_dir / "generation_config.json").read_text())
    assert (generation["eos_token_id"], generation["pad_token_id"], generation["bos_token_id"]) == (49279, 2, 1)
    adapter = load_model(f"arch:{preset.name}")
    assert type(adapter).__name__ == "SmolVLMAdapter" and len(adapter.tokenizer) == 49280
    settings = adapter.generation_settings()
    assert (settings["eos_token_id"], settings["pad_token_id"]) == (49279, 2)
    assert adapter.prompt_settings()["image_token_id"] == adapter.tokenizer.convert_tokens_to_ids("<image>") == 49190
    assert adapter.kv_layout() == (2, 2, 8) and adapter.tile_size == 32
    pixels = torch.from_numpy(__import__("numpy").random.default_rng(0).normal(size=(2, 1, 3, 32, 32))
                              .astype("float32"))
    feats = adapter.forward(pixels)["image_features"]
    assert feats.shape == (2, 4, 32) and (feats[0] - feats[1]).abs().max() > 1e-4
