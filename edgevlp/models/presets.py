"""``arch:NAME``: the exact shapes of real checkpoints, with seeded random weights, built offline.

A preset is accepted wherever a model is (``edgevlp info arch:blip-base``, ``export``, ``compress``,
``bench``, ``eval``): :func:`materialize` writes it once into ``$EDGEVLP_CACHE/arch/NAME/VERSION`` (default
``~/.cache/edgevlp``) as an ordinary model directory - ``config.json`` (with ``architectures``),
safetensors weights, ``preprocessor_config.json`` and a fast tokenizer with the real vocabulary size and
special-token ids - so the rest of edgevlp needs no special case. The config carries
``"edgevlp_preset": {"name", "source", "random_weights": true}`` and everything that reports on such a
model says "random weights: latency only": the presets measure real-size speed and memory, never accuracy.

This module is torch-free until a preset is built.

Example:
    >>> from edgevlp.models.presets import preset_names
    >>> preset_names()[:2]
    ['arch:blip-base', 'arch:blip-large']
    >>> from edgevlp.models import load_model
    >>> adapter = load_model("arch:blip-base")          # doctest: +SKIP
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import sys
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from edgevlp._lazy import import_object
from edgevlp.bundle import sibling_tempdir
from edgevlp.errors import ModelLoadError

if TYPE_CHECKING:
    import torch

__all__ = ["PREFIX", "CONFIG_KEY", "RANDOM_WEIGHTS_NOTE", "Preset", "PRESETS", "TOKENIZERS", "preset_names",
           "get_preset", "materialize", "preset_record", "cache_root"]

PREFIX = "arch:"
#: config.json key marking a model built from a preset
CONFIG_KEY = "edgevlp_preset"
RANDOM_WEIGHTS_NOTE = "random weights: latency only"
#: std of the N(0, std) weights of every matrix (norms are 1/0, biases 0)
INIT_STD = 0.02
SEED = 0
#: bump when what a build writes changes (init, tokenizer layout, files): cached presets are rebuilt
BUILD_VERSION = 1
#: tokenizer kind -> builder (``edgevlp.models._tokenizers``), called with the config's vocabulary size
TOKENIZERS: dict[str, str] = {
    "bert": "edgevlp.models._tokenizers:bert_tokenizer",
    "gpt2": "edgevlp.models._tokenizers:gpt2_tokenizer",
    "clip": "edgevlp.models._tokenizers:clip_tokenizer",
    "smolvlm": "edgevlp.models._tokenizers:smolvlm_tokenizer",
}


@dataclass(frozen=True)
class Preset:
    """One real checkpoint's architecture: ``config`` and ``processor`` are its ``config.json`` and
    ``preprocessor_config.json`` values (``config`` as ``AutoConfig.for_model`` takes them)."""

    name: str
    source: str  # hub id whose shapes are copied
    architecture: str  # architectures[0]
    config: Mapping[str, Any]
    processor: Mapping[str, Any]
    tokenizer: str  # key of TOKENIZERS
    vocab_size: int
    cited: str = ""  # where the values were read
    #: ``generation_config.json`` values (``GenerationConfig(**generation)``), for models whose adapter
    #: reads them from ``model.generation_config``
    generation: Mapping[str, Any] | None = None

    def version(self) -> str:
        """Hash of everything the build depends on (the cache directory's name)."""
        from importlib.metadata import version

        transformers = ".".join(version("transformers").split(".")[:2])
        blob = json.dumps({"build": BUILD_VERSION, "transformers": transformers, "seed": SEED, "std": INIT_STD,
                           "architecture": self.architecture, "config": self.config,
                           "processor": self.processor, "tokenizer": self.tokenizer,
                           "vocab_size": self.vocab_size, **({"generation": self.generation}
                                                               if self.generation else {})},
                          sort_keys=True, default=str)
        return hashlib.sha256(blob.encode()).hexdigest()[:12]

    def cache_dir(self) -> Path:
        return cache_root() / self.name / self.version()

    def record(self) -> dict[str, Any]:
        """What the built config carries under :data:`CONFIG_KEY`."""
        return {"name": f"{PREFIX}{self.name}", "source": self.source, "random_weights": True,
                "note": RANDOM_WEIGHTS_NOTE, "seed": SEED, "init_std": INIT_STD}


def cache_root() -> Path:
    """``$EDGEVLP_CACHE/arch`` (default ``~/.cache/edgevlp/arch``)."""
    return Path(os.environ.get("EDGEVLP_CACHE", "~/.cache/edgevlp")).expanduser() / "arch"


# ------------------------------------------------------------------------------------------ table
_CLIP_MEAN = [0.48145466, 0.4578275, 0.40821073]
_CLIP_STD = [0.26862954, 0.26130258, 0.27577711]
_RESCALE = 1 / 255


def _blip(vision: dict[str, Any], encoder_hidden_size: int) -> dict[str, Any]:
    """BlipForConditionalGeneration config: BERT-base text decoder with cross-attention to ``vision``."""
    return {
        "model_type": "blip", "projection_dim": 512, "image_text_hidden_size": 256, "initializer_factor": 1.0,
        "initializer_range": 0.02, "logit_scale_init_value": 2.6592, "label_smoothing": 0.0,
        "text_config": {
            "vocab_size": 30524, "hidden_size": 768, "encoder_hidden_size": encoder_hidden_size,
            "intermediate_size": 3072, "projection_dim": 768, "num_hidden_layers": 12,
            "num_attention_heads": 12, "max_position_embeddings": 512, "hidden_act": "gelu",
            "layer_norm_eps": 1e-12, "hidden_dropout_prob": 0.0, "attention_probs_dropout_prob": 0.0,
            "initializer_range": 0.02, "initializer_factor": 1.0, "bos_token_id": 30522, "eos_token_id": 2,
            "pad_token_id": 0, "sep_token_id": 102, "is_decoder": True, "use_cache": True,
            "tie_word_embeddings": True,
        },
        # The hub files say 0.02 too; BlipVisionConfig's default (1e-10) would make random outputs constant.
        "vision_config": {"image_size": 384, "patch_size": 16, "num_channels": 3, "hidden_act": "gelu",
                          "layer_norm_eps": 1e-5, "attention_dropout": 0.0, "dropout": 0.0,
                          "projection_dim": 512, "initializer_range": 0.02, "initializer_factor": 1.0,
                          **vision},
    }


def _blip_processor(**extra: Any) -> dict[str, Any]:
    return {"image_processor_type": "BlipImageProcessor", "processor_class": "BlipProcessor",
            "do_convert_rgb": True, "do_resize": True, "size": {"height": 384, "width": 384}, "resample": 3,
            "do_rescale": True, "rescale_factor": _RESCALE, "do_normalize": True, "image_mean": _CLIP_MEAN,
            "image_std": _CLIP_STD, **extra}


def _owl(model_type: str, image_size: int, patch_size: int) -> dict[str, Any]:
    """OWL-ViT / OWLv2 config: CLIP B text tower (16 positions) and a ViT-B/``patch_size`` image tower.

    Token ids are the tokenizer's (pad ``!`` = 0, ``<|startoftext|>`` 49406, ``<|endoftext|>`` 49407), as
    in the first upload of google/owlvit-base-patch32's config (dd7f3bc); the current hub configs carry
    CLIP-legacy ids (bos 0, eos 2, pad 1) that transformers ignores (it pools at argmax(input_ids)) but
    that edgevlp would use to pad prompts, where the HF processor pads with ``!`` = 0.
    """
    return {
        "model_type": model_type, "projection_dim": 512, "logit_scale_init_value": 2.6592,
        "initializer_factor": 1.0,
        "text_config": {"vocab_size": 49408, "hidden_size": 512, "intermediate_size": 2048,
                        "num_hidden_layers": 12, "num_attention_heads": 8, "max_position_embeddings": 16,
                        "hidden_act": "quick_gelu", "layer_norm_eps": 1e-5, "attention_dropout": 0.0,
                        "initializer_range": 0.02, "initializer_factor": 1.0, "pad_token_id": 0,
                        "bos_token_id": 49406, "eos_token_id": 49407},
        "vision_config": {"hidden_size": 768, "intermediate_size": 3072, "num_hidden_layers": 12,
                          "num_attention_heads": 12, "num_channels": 3, "image_size": image_size,
                          "patch_size": patch_size, "hidden_act": "quick_gelu", "layer_norm_eps": 1e-5,
                          "attention_dropout": 0.0, "initializer_range": 0.02, "initializer_factor": 1.0},
    }


def _owlvit_processor() -> dict[str, Any]:
    # hub: "OwlViTFeatureExtractor" (the old name of this processor), size [768, 768], no centre crop
    return {"image_processor_type": "OwlViTImageProcessor", "processor_class": "OwlViTProcessor",
            "do_convert_rgb": True, "do_resize": True, "size": {"height": 768, "width": 768}, "resample": 3,
            "do_center_crop": False, "crop_size": {"height": 768, "width": 768}, "do_rescale": True,
            "rescale_factor": _RESCALE, "do_normalize": True, "image_mean": _CLIP_MEAN,
            "image_std": _CLIP_STD}


_HF = "https://huggingface.co/"

#: SmolVLM / SmolLM2 ids (``_tokenizers.smolvlm_tokenizer``): <|im_start|> 1, <|im_end|> 2, <image> 49190,
#: <end_of_utterance> 49279
_SMOLVLM_IDS = {"bos": 1, "pad": 2, "image": 49190, "eos": 49279}


def _smolvlm(text: dict[str, Any]) -> dict[str, Any]:
    """SmolVLMForConditionalGeneration config: SigLIP base-patch16-512 (12 x 768) on 512 px tiles, pixel
    shuffle by 4 (64 tokens a tile), a SmolLM2 (Llama, grouped-query) decoder with its own LM head."""
    return {
        "model_type": "smolvlm", "image_token_id": _SMOLVLM_IDS["image"], "scale_factor": 4,
        "pad_token_id": _SMOLVLM_IDS["pad"], "tie_word_embeddings": False, "use_cache": True,
        "vision_config": {"model_type": "smolvlm_vision", "hidden_size": 768, "intermediate_size": 3072,
                          "num_hidden_layers": 12, "num_attention_heads": 12, "num_channels": 3,
                          "image_size": 512, "patch_size": 16, "hidden_act": "gelu_pytorch_tanh",
                          "layer_norm_eps": 1e-6, "attention_dropout": 0.0, "initializer_range": 0.02},
        "text_config": {"model_type": "llama", "vocab_size": 49280, "head_dim": 64,
                        "max_position_embeddings": 8192, "rms_norm_eps": 1e-5, "rope_theta": 100000.0,
                        "hidden_act": "silu", "attention_bias": False, "mlp_bias": False,
                        "initializer_range": 0.02, "pad_token_id": _SMOLVLM_IDS["pad"],
                        "bos_token_id": _SMOLVLM_IDS["bos"], "eos_token_id": _SMOLVLM_IDS["eos"],
                        "tie_word_embeddings": False, "use_cache": True, **text},
    }


def _smolvlm_processor() -> dict[str, Any]:
    # 256M and 500M share it: longest edge resized to 2048 (resample 1 = LANCZOS), split into 512 px tiles
    # plus the whole image at 512, mean/std 0.5; the hub names the Idefics3 classes (SmolVLM's are the
    # same image logic, SmolVLMProcessor also needs torchvision)
    return {"image_processor_type": "Idefics3ImageProcessor", "processor_class": "Idefics3Processor",
            "do_convert_rgb": True, "do_resize": True, "size": {"longest_edge": 2048},
            "max_image_size": {"longest_edge": 512}, "do_image_splitting": True, "resample": 1,
            "do_rescale": True, "rescale_factor": _RESCALE, "do_normalize": True,
            "image_mean": [0.5, 0.5, 0.5], "image_std": [0.5, 0.5, 0.5], "do_pad": True}


_SMOLVLM_CITED = (
    "config: github qewr1234/Lightweight-VLA tests/offline_vlm_cache.py (config.json and "
    "preprocessor_config.json of HuggingFaceTB/SmolVLM2-500M-Video-Instruct verbatim: SmolVLM-500M's shapes - "
    "text 960/2560/32 layers/15 heads/5 kv heads/head_dim 64, rope 100000, 8192 positions, vocab 49280; vision "
    "768/12 layers/12 heads/512 px/patch 16; scale_factor 4, image_token_id 49190, tie_word_embeddings false; "
    "processor longest_edge 2048, tiles 512, resample 1, mean/std 0.5, splitting; tokenizer_config: bos "
    "<|im_start|>, eos <end_of_utterance>, pad <|im_end|>); 256M text shapes (576/1536/30 layers/9 heads/3 kv "
    "heads, tie_word_embeddings false) in the nested idefics3 config test of a Rust ModelMetadata::from_hf_config "
    "(find_string '\"image_token_id\": 49190') and SmolLM2-135M's config.json; vision layer_norm_eps 1e-6 "
    "(SmolVLMVisionConfig default, as in that test); " + _HF + "HuggingFaceTB/SmolVLM-256M-Instruct model card "
    "(SigLIP base-patch16-512, 64 tokens per 512 px tile); the hub ships both as Idefics3ForConditionalGeneration "
    "(same modules and parameter names as SmolVLMForConditionalGeneration)"
)
_SMOLVLM_GENERATION = {"bos_token_id": _SMOLVLM_IDS["bos"], "eos_token_id": _SMOLVLM_IDS["eos"],
                       "pad_token_id": _SMOLVLM_IDS["pad"]}

PRESETS: dict[str, Preset] = {p.name: p for p in (
    Preset(
        "blip-base", "Salesforce/blip-image-captioning-base", "BlipForConditionalGeneration",
        _blip({"hidden_size": 768, "intermediate_size": 3072, "num_hidden_layers": 12,
               "num_attention_heads": 12}, encoder_hidden_size=768),
        _blip_processor(), "bert", 30524,
        cited="config: github whaler404/Hf-Learn transfomers_learn/api/models/multimodal_models/blip/blip.md "
              "(the hub config.json as loaded); processor: " + _HF + "Salesforce/blip-image-captioning-base/"
              "blob/refs%2Fpr%2F44/preprocessor_config.json (size 384, BLIP defaults: bicubic, 1/255)",
    ),
    Preset(
        "blip-large", "Salesforce/blip-image-captioning-large", "BlipForConditionalGeneration",
        _blip({"hidden_size": 1024, "intermediate_size": 4096, "num_hidden_layers": 24,
               "num_attention_heads": 16}, encoder_hidden_size=1024),
        _blip_processor(do_pad=True, size_divisor=32), "bert", 30524,
        cited="config: " + _HF + "thdangtr/blip_recipe1m_title_v2/blame/main/config.json (saved from "
              "Salesforce/blip-image-captioning-large: vision 1024/4096/16 heads/24 layers, text "
              "encoder_hidden_size 1024, 12 heads); processor: " + _HF + "Sof22/image-caption-large-copy/"
              "blob/main/preprocessor_config.json (duplicate of the hub repo)",
    ),
    Preset(
        # ViT-B/16 224 encoder, GPT-2 (124 M) decoder with cross-attention; both 768 wide, so the model
        # has no enc_to_dec_proj.
        "vit-gpt2", "nlpconnect/vit-gpt2-image-captioning", "VisionEncoderDecoderModel",
        {"model_type": "vision-encoder-decoder", "decoder_start_token_id": 50256, "bos_token_id": 50256,
         "eos_token_id": 50256, "pad_token_id": 50256, "tie_word_embeddings": False,
         "encoder": {"model_type": "vit", "hidden_size": 768, "num_hidden_layers": 12, "num_attention_heads": 12,
                     "intermediate_size": 3072, "hidden_act": "gelu", "hidden_dropout_prob": 0.0,
                     "attention_probs_dropout_prob": 0.0, "initializer_range": 0.02, "layer_norm_eps": 1e-12,
                     "image_size": 224, "patch_size": 16, "num_channels": 3, "qkv_bias": True,
                     "encoder_stride": 16},
         "decoder": {"model_type": "gpt2", "vocab_size": 50257, "n_positions": 1024, "n_ctx": 1024, "n_embd": 768,
                     "n_layer": 12, "n_head": 12, "n_inner": None, "activation_function": "gelu_new",
                     "resid_pdrop": 0.1, "embd_pdrop": 0.1, "attn_pdrop": 0.1, "layer_norm_epsilon": 1e-5,
                     "initializer_range": 0.02, "add_cross_attention": True, "is_decoder": True,
                     "bos_token_id": 50256, "eos_token_id": 50256, "decoder_start_token_id": 50256,
                     "pad_token_id": 50256, "use_cache": True}},
        # hub: "feature_extractor_type": "ViTFeatureExtractor" (the old name), size 224, bilinear, 0.5/0.5
        {"image_processor_type": "ViTImageProcessor", "do_resize": True, "size": {"height": 224, "width": 224},
         "resample": 2, "do_rescale": True, "rescale_factor": _RESCALE, "do_normalize": True,
         "image_mean": [0.5, 0.5, 0.5], "image_std": [0.5, 0.5, 0.5]},
        "gpt2", 50257,
        cited="config: " + _HF + "Xenova/transformers.js/blob/5aa93c98a5c06ec8daffa14c54b86351c7c7b20b/quantized/"
              "nlpconnect/vit-gpt2-image-captioning/vision2seq-lm-with-past/config.json (hub commit dc68f91); "
              "processor: same folder, preprocessor_config.json",
    ),
    Preset(
        "owlvit-b32", "google/owlvit-base-patch32", "OwlViTForObjectDetection", _owl("owlvit", 768, 32),
        _owlvit_processor(), "clip", 49408,
        cited="config: " + _HF + "google/owlvit-base-patch32/blame/dd7f3bc0b78606e1f7840a809049267d01af1ccf/"
              "config.json and the OwlViTConfig defaults it relies on; processor: " + _HF +
              "google/owlvit-base-patch32/blob/d5fe4813d5c6c716bfeb6fd64450682b78dc3523/preprocessor_config.json; "
              "tokenizer: " + _HF + "Thomasboosinger/owlvit-base-patch32/blob/"
              "d0d94dc6d7a4c379385838f0be64d765c036657a/tokenizer_config.json (pad '!', max length 16)",
    ),
    Preset(
        "owlvit-b16", "google/owlvit-base-patch16", "OwlViTForObjectDetection", _owl("owlvit", 768, 16),
        _owlvit_processor(), "clip", 49408,
        cited="config: " + _HF + "google/owlvit-base-patch16/blame/refs%2Fpr%2F6/config.json (B/16, 768 px); "
              "processor: " + _HF + "google/owlvit-base-patch16/blob/refs%2Fpr%2F8/preprocessor_config.json",
    ),
    Preset(
        "owlv2-b16", "google/owlv2-base-patch16-ensemble", "Owlv2ForObjectDetection", _owl("owlv2", 960, 16),
        # pad to a square (value 0.5 grey) before the resize, bilinear, 960 px
        {"image_processor_type": "Owlv2ImageProcessor", "processor_class": "Owlv2Processor", "do_pad": True,
         "do_resize": True, "size": {"height": 960, "width": 960}, "resample": 2, "do_rescale": True,
         "rescale_factor": _RESCALE, "do_normalize": True, "image_mean": _CLIP_MEAN, "image_std": _CLIP_STD},
        "clip", 49408,
        cited="config: " + _HF + "Xenova/owlv2-base-patch16-ensemble/blob/b807cea237369522d4e6821ab4612dec684c23bf/"
              "config.json (image_size 960, Owlv2Config defaults otherwise); processor: " + _HF +
              "google/owlv2-base-patch16-ensemble/blob/refs%2Fpr%2F2/preprocessor_config.json; "
              "tokenizer: same repo, added_tokens.json ('!' 0, <|startoftext|> 49406, <|endoftext|> 49407)",
    ),
    Preset(
        # SigLIP-B/16 512 (86 M) + connector (7 M) + SmolLM2-135M decoder with an untied LM head: 256.5 M
        "smolvlm-256m", "HuggingFaceTB/SmolVLM-256M-Instruct", "SmolVLMForConditionalGeneration",
        _smolvlm({"hidden_size": 576, "intermediate_size": 1536, "num_hidden_layers": 30,
                  "num_attention_heads": 9, "num_key_value_heads": 3}),
        _smolvlm_processor(), "smolvlm", 49280, generation=_SMOLVLM_GENERATION,
        cited=_SMOLVLM_CITED,
    ),
    Preset(
        # the same vision tower + connector (12288 -> 960) + SmolLM2-360M decoder, untied LM head: 507.5 M
        "smolvlm-500m", "HuggingFaceTB/SmolVLM-500M-Instruct", "SmolVLMForConditionalGeneration",
        _smolvlm({"hidden_size": 960, "intermediate_size": 2560, "num_hidden_layers": 32,
                  "num_attention_heads": 15, "num_key_value_heads": 5}),
        _smolvlm_processor(), "smolvlm", 49280, generation=_SMOLVLM_GENERATION,
        cited=_SMOLVLM_CITED,
    ),
)}


def preset_names() -> list[str]:
    """``arch:NAME`` of every preset, sorted."""
    return sorted(f"{PREFIX}{name}" for name in PRESETS)


def get_preset(name: str) -> Preset:
    """The preset ``name`` (with or without ``arch:``), or a :class:`ModelLoadError` listing them."""
    key = name[len(PREFIX):] if name.startswith(PREFIX) else name
    if key not in PRESETS:
        raise ModelLoadError(f"unknown architecture preset {PREFIX}{key}; known presets: "
                             f"{', '.join(preset_names())}")
    return PRESETS[key]


def preset_record(config: Any) -> dict[str, Any] | None:
    """The :data:`CONFIG_KEY` record of a config (object or dict), ``None`` for a real checkpoint."""
    record = config.get(CONFIG_KEY) if isinstance(config, Mapping) else getattr(config, CONFIG_KEY, None)
    return dict(record) if isinstance(record, Mapping) else None


# ------------------------------------------------------------------------------------------ build
def materialize(name: str, *, progress: bool = True) -> Path:
    """The model directory of preset ``name``, built on first use (atomically: a build runs in a hidden
    temp directory beside its target and is renamed into place once complete, so a killed build leaves
    nothing that is later used).

    Example:
        >>> materialize("arch:owlvit-b32")                        # doctest: +SKIP
        PosixPath('/home/me/.cache/edgevlp/arch/owlvit-b32/3f2a9c0d1e4b')
    """
    preset = get_preset(name)
    target = preset.cache_dir()
    if (target / "config.json").is_file():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = sibling_tempdir(target)  # also removes the temp dirs of killed builds
    try:
        build(preset, tmp, progress=progress)
        try:
            tmp.rename(target)
        except OSError:
            if not (target / "config.json").is_file():  # not a concurrent build that finished first
                raise
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return target


def build_model(preset: Preset, device: str = "cpu") -> "torch.nn.Module":
    """The preset's ``transformers`` model with uninitialised weights (``device="meta"``: no memory)."""
    import torch
    from transformers import AutoConfig
    from transformers.modeling_utils import no_init_weights

    from edgevlp.models.adapters import adapter_class

    config = AutoConfig.for_model(**json.loads(json.dumps(preset.config)))
    config.architectures = [preset.architecture]
    setattr(config, CONFIG_KEY, preset.record())
    model_class = adapter_class(preset.architecture).model_class()
    with torch.device(device), no_init_weights():
        model = model_class(config)
    model.tie_weights()  # skipped with the init under no_init_weights
    if preset.generation:  # save_pretrained writes generation_config.json from it
        from transformers import GenerationConfig

        model.generation_config = GenerationConfig(**dict(preset.generation))
    return model.eval()


def randomize_(model: "torch.nn.Module", seed: int = SEED, std: float = INIT_STD) -> "torch.nn.Module":
    """Seeded weights in place: N(0, ``std``) for matrices and embeddings, 1/0 for norm scales/shifts,
    0 for biases, N(0, ``std``) for the other vectors (class embeddings, scales)."""
    import torch

    norms = (torch.nn.LayerNorm, torch.nn.GroupNorm, torch.nn.BatchNorm2d)
    norm_params = {id(p) for m in model.modules() if isinstance(m, norms) for p in m.parameters(recurse=False)}
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if id(param) in norm_params:
                param.fill_(1.0) if name.endswith("weight") else param.zero_()
            elif param.dim() > 1 or not name.endswith("bias"):
                param.normal_(0.0, std, generator=gen)
            else:
                param.zero_()
    return model


def build(preset: Preset, out: Path, *, progress: bool = True) -> Path:
    """Write the preset's model directory into ``out`` (config, safetensors, processor, tokenizer)."""
    t0 = time.perf_counter()
    model = build_model(preset)
    params = sum(p.numel() for p in model.parameters())
    if progress:
        print(f"building {PREFIX}{preset.name} ({params / 1e6:.0f} M parameters, random weights; shapes of "
              f"{preset.source}) ...", file=sys.stderr, flush=True)
    randomize_(model)
    model.save_pretrained(out, safe_serialization=True)
    tokenizer = import_object(TOKENIZERS[preset.tokenizer])(preset.vocab_size)
    tokenizer.model_max_length = _max_text_length(preset)
    tokenizer.save_pretrained(out)
    (out / "preprocessor_config.json").write_text(json.dumps(dict(preset.processor), indent=2) + "\n")
    if progress:
        size = sum(p.stat().st_size for p in out.glob("*.safetensors")) / 1e6
        print(f"built {PREFIX}{preset.name} in {time.perf_counter() - t0:.1f} s ({size:.0f} MB of weights)",
              file=sys.stderr, flush=True)
    return out


def _max_text_length(preset: Preset) -> int:
    cfg = preset.config
    text = cfg.get("text_config") or cfg.get("decoder") or {}
    return int(text.get("max_position_embeddings") or text.get("n_positions") or 512)
