"""The adapter contract: what every model family tells the rest of edgevlp.

An adapter wraps one loaded ``transformers`` model with its processor config and fast tokenizer and
names its deployable parts. Export, compression and ``edgevlp info`` only talk to adapters.
"""

from __future__ import annotations

import json
import os
from abc import ABC, abstractmethod
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import torch
from transformers import AutoTokenizer, PreTrainedModel, PreTrainedTokenizerFast

from edgevlp._io import read_json_object
from edgevlp.errors import ModelLoadError
from edgevlp.spec import PreprocessSpec

__all__ = ["PartSpec", "ModelAdapter", "CaptionerAdapter", "DetectorAdapter", "AssistantAdapter"]

PROCESSOR_FILE = "preprocessor_config.json"


@dataclass(frozen=True)
class PartSpec:
    """A deployable part of a model: the parameters under ``prefixes`` belong to it.

    ``kind`` is one of ``vision_encoder``, ``text_decoder``, ``text_encoder``, ``detection_heads``.
    """

    name: str
    kind: str
    prefixes: tuple[str, ...]
    kv_cache: bool = False
    description: str = ""


class ModelAdapter(ABC):
    """One loaded model of a registered family.

    Example:
        >>> from edgevlp.models import load_model
        >>> adapter = load_model("demo-blip")            # doctest: +SKIP
        >>> adapter.parameter_counts()["total"]          # doctest: +SKIP
    """

    family: ClassVar[str]
    architecture: ClassVar[str]
    task: ClassVar[str]  # a task of edgevlp.tasks.TASKS: "caption" | "detect"
    parts: ClassVar[tuple[PartSpec, ...]]

    def __init__(
        self,
        model: PreTrainedModel,
        *,
        processor_config: dict[str, Any],
        tokenizer: PreTrainedTokenizerFast,
        source: str,
    ) -> None:
        self.model = model.eval()
        self.processor_config = dict(processor_config)
        self.tokenizer = tokenizer
        self.source = source

    # ----------------------------------------------------------------------------------- loading
    @classmethod
    @abstractmethod
    def model_class(cls) -> type[PreTrainedModel]:
        """The ``transformers`` class this family loads with."""

    @classmethod
    def from_pretrained(cls, model_dir: Path, *, source: str | None = None) -> "ModelAdapter":
        """Load weights (safetensors only), processor config and fast tokenizer from ``model_dir``."""
        model_dir = Path(model_dir)
        if not any(model_dir.glob("*.safetensors")):
            raise ModelLoadError(
                f"{model_dir} has no *.safetensors weights; edgevlp never unpickles .bin files - "
                "convert with model.save_pretrained(dir, safe_serialization=True)"
            )
        try:
            model = cls._load_model(model_dir)
        except ModelLoadError:
            raise
        except Exception as err:  # noqa: BLE001 - transformers raises many types for bad checkpoints
            raise ModelLoadError(f"could not load {cls.architecture} from {model_dir}: {err}") from None
        processor_path = model_dir / PROCESSOR_FILE
        if not processor_path.is_file():
            raise ModelLoadError(
                f"{model_dir} has no {PROCESSOR_FILE}, so the image preprocessing is unknown; save the "
                "model's image processor there (processor.save_pretrained(dir))"
            )
        processor_config = read_json_object(processor_path, ModelLoadError,
                                            "re-save the image processor or fix the file")
        try:
            tokenizer = AutoTokenizer.from_pretrained(model_dir, use_fast=True)
        except Exception as err:  # noqa: BLE001
            raise ModelLoadError(f"could not load the tokenizer from {model_dir}: {err}") from None
        if not getattr(tokenizer, "is_fast", False):
            raise ModelLoadError(
                f"the tokenizer in {model_dir} is not a fast tokenizer; the runtime needs tokenizer.json "
                "(save a PreTrainedTokenizerFast there)"
            )
        return cls(model, processor_config=processor_config, tokenizer=tokenizer,
                   source=source or str(model_dir))

    @classmethod
    def _load_model(cls, model_dir: Path) -> PreTrainedModel:
        """``from_pretrained``, or for a pruned model (non-uniform shapes, recorded in its config):
        build it from the config, give it the pruned shapes, then load the safetensors weights."""
        from edgevlp.models.pruning import CONFIG_KEY, rebuild_pruned

        model_class = cls.model_class()
        config = model_class.config_class.from_pretrained(model_dir)
        record = getattr(config, CONFIG_KEY, None)
        if not record:
            return model_class.from_pretrained(model_dir, use_safetensors=True)
        from safetensors.torch import load_file

        model = model_class(config)
        rebuild_pruned(model, record)
        state: dict[str, torch.Tensor] = {}
        for path in sorted(model_dir.glob("*.safetensors")):
            state.update(load_file(str(path)))
        model.tie_weights()
        by_storage: dict[int, set[str]] = {}
        for name, tensor in model.state_dict(keep_vars=True).items():
            by_storage.setdefault(tensor.data_ptr(), set()).add(name)
        missing, unexpected = model.load_state_dict(state, strict=False)
        # save_pretrained writes a tied weight once: a missing key is fine if an alias was loaded
        untied = [k for k in missing if not any(alias in state for alias in by_storage[
            model.state_dict(keep_vars=True)[k].data_ptr()])]
        if untied or unexpected:
            raise ModelLoadError(f"the weights in {model_dir} do not match its pruned config "
                                 f"(missing {untied[:3]}, unexpected {unexpected[:3]}); re-save the model")
        model.tie_weights()
        return model

    @classmethod
    @abstractmethod
    def tiny(cls, seed: int = 0) -> "ModelAdapter":
        """A tiny randomly initialised model of this family whose outputs depend on its input."""

    def save_pretrained(self, out_dir: str | os.PathLike[str]) -> Path:
        """Write config, safetensors weights, tokenizer and processor config (loadable again)."""
        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        self.model.save_pretrained(out, safe_serialization=True)
        self.tokenizer.save_pretrained(out)
        (out / PROCESSOR_FILE).write_text(json.dumps(self.processor_config, indent=2) + "\n")
        return out

    # ---------------------------------------------------------------------------------- contracts
    def preprocess_spec(self) -> PreprocessSpec:
        """Image size, resize mode, rescale and mean/std, from the processor config."""
        return PreprocessSpec.from_processor_config(self.processor_config, source=self.source)

    def save_tokenizer(self, out_dir: str | os.PathLike[str]) -> Path:
        """Write the fast tokenizer as ``out_dir/tokenizer.json`` (all the runtime needs)."""
        from tokenizers import Tokenizer

        path = Path(out_dir) / "tokenizer.json"
        backend = Tokenizer.from_str(self.tokenizer.backend_tokenizer.to_str())
        backend.no_truncation()  # HF leaves the last call's padding/truncation in the backend
        backend.no_padding()
        backend.save(str(path))
        return path

    def parameter_counts(self) -> dict[str, int]:
        """Parameters per part (first matching prefix wins), ``other`` for the rest, and ``total``.

        ``total`` equals ``sum(p.numel() for p in model.parameters())``.
        """
        counts = {part.name: 0 for part in self.parts}
        other = 0
        for name, param in self.model.named_parameters():
            for part in self.parts:
                if name.startswith(part.prefixes):
                    counts[part.name] += param.numel()
                    break
            else:
                other += param.numel()
        if other:
            counts["other"] = other
        counts["total"] = sum(p.numel() for p in self.model.parameters())
        return counts

    def tokenizer_summary(self) -> dict[str, Any]:
        tok = self.tokenizer
        backend = json.loads(tok.backend_tokenizer.to_str())
        return {
            "type": backend.get("model", {}).get("type", "unknown"),
            "vocab_size": tok.backend_tokenizer.get_vocab_size(with_added_tokens=True),
            "special_tokens": {k: v for k, v in tok.special_tokens_map.items() if isinstance(v, str)},
        }

    def summary(self) -> dict[str, Any]:
        """Everything ``edgevlp info`` prints, JSON-ready."""
        counts = self.parameter_counts()
        spec = self.preprocess_spec()
        parts = [
            {"name": p.name, "kind": p.kind, "parameters": counts[p.name], "kv_cache": p.kv_cache,
             "description": p.description}
            for p in self.parts
        ]
        if "other" in counts:
            parts.append({"name": "other", "kind": "unused_at_inference", "parameters": counts["other"],
                          "kv_cache": False, "description": "parameters outside the deployable parts"})
        return {
            "source": self.source,
            "family": self.family,
            "architecture": self.architecture,
            "task": self.task,
            "parameters": counts["total"],
            "parts": parts,
            "image_size": [spec.input_shape[2], spec.input_shape[3]],
            "preprocessing": spec.to_dict(),
            "tokenizer": self.tokenizer_summary(),
            **self._pruning_summary(),
            **self._extra_summary(),
        }

    def _extra_summary(self) -> dict[str, Any]:
        return {}

    def _pruning_summary(self) -> dict[str, Any]:
        from edgevlp.models.pruning import pruned_shapes

        shapes = pruned_shapes(self.model)
        return {"pruning": shapes} if any(shapes.values()) else {}

    def vision_tower(self) -> torch.nn.Module:
        """The vision transformer (it returns ``hidden_states`` when asked; distillation matches them)."""
        return getattr(self.model, "vision_model", None) or self.model.encoder

    # --------------------------------------------------------------------------------- reference
    @abstractmethod
    def forward(self, pixel_values: torch.Tensor, **inputs: Any) -> dict[str, torch.Tensor]:
        """Reference outputs of the source model (used by parity checks and tests)."""


class CaptionerAdapter(ModelAdapter):
    """A family that turns an image into text with a KV-cache decoder."""

    task = "caption"

    @abstractmethod
    def generation_settings(self) -> dict[str, Any]:
        """decoder_start/bos, eos and pad token ids and the maximum length."""

    def start_ids(self, batch: int) -> torch.Tensor:
        """``(batch, 1)`` decoder start tokens: the first-step input of the decoder."""
        start = self.generation_settings()["decoder_start_token_id"]
        return torch.full((batch, 1), int(start), dtype=torch.long)

    def generate(self, pixel_values: torch.Tensor, max_new_tokens: int = 20, **kwargs: Any) -> torch.Tensor:
        """Token ids (without the start token) from ``transformers`` generate; greedy by default,
        ``kwargs`` are passed on (e.g. ``num_beams``, ``repetition_penalty``)."""
        settings = {"do_sample": False, "num_beams": 1, **kwargs}
        with torch.no_grad():
            ids = self.model.generate(pixel_values=pixel_values, max_new_tokens=max_new_tokens, **settings)
        return ids[:, 1:]

    @abstractmethod
    def encode_image(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """The vision graph: pixel_values -> encoder hidden states, exactly as ``generate`` uses them."""

    def decode_step(self, input_ids: torch.Tensor, encoder_hidden_states: torch.Tensor,
                    cache: Any) -> tuple[torch.Tensor, Any]:
        """One decoder call with an ``EncoderDecoderCache``: ``(logits, updated cache)``.

        ``encoder_hidden_states`` are the vision graph's output; a cross-attention cache that already
        holds every layer's keys/values (see :meth:`cross_attention_kv`) is used as is."""
        return self.decoder_call(input_ids, self.project_encoder(encoder_hidden_states), cache)

    def project_encoder(self, encoder_hidden_states: torch.Tensor) -> torch.Tensor:
        """Encoder states in the decoder's width (identity unless the family has a projection)."""
        return encoder_hidden_states

    @abstractmethod
    def decoder_call(self, input_ids: torch.Tensor, encoder_states: torch.Tensor,
                     cache: Any) -> tuple[torch.Tensor, Any]:
        """The decoder module on already projected encoder states: ``(logits, updated cache)``."""

    def cross_attention_kv(self, encoder_hidden_states: torch.Tensor
                           ) -> list[tuple[torch.Tensor, torch.Tensor]] | None:
        """Per decoder layer, the cross-attention ``(key, value)``, each ``(batch, heads, encoder_sequence,
        head_dim)``, exactly as the decoder computes them from ``encoder_hidden_states``.

        They depend only on the image, so the export computes them once per image in a graph of their
        own and the decoder step graph takes them as inputs. ``None``: this decoder's layout is not
        known, and the decoder graph recomputes them at every step (correct, but ~60x the per-token work
        at BLIP-base size)."""
        return None

    def decode_with_cross_kv(self, input_ids: torch.Tensor, cache: Any) -> tuple[torch.Tensor, Any]:
        """One decoder step whose ``EncoderDecoderCache`` already holds the cross-attention keys/values
        of every layer: the decoder reuses them and never sees the encoder states (it is handed a
        zero-width placeholder of the right batch and length, for the cross-attention mask)."""
        keys = cache.cross_attention_cache.layers[0].keys
        placeholder = keys.new_zeros((keys.shape[0], keys.shape[2], 1))
        return self.decoder_call(input_ids, placeholder, cache)

    @abstractmethod
    def kv_layout(self) -> tuple[int, int, int]:
        """``(num_layers, num_heads, head_dim)`` of the decoder's self-attention KV cache (``num_heads``
        as configured; :meth:`kv_heads` has the per-layer counts of a pruned decoder)."""

    def kv_heads(self) -> list[int]:
        """Self-attention heads of each decoder layer (differ per layer once heads were pruned)."""
        layers, heads, _ = self.kv_layout()
        return [heads] * layers

    def caption(self, pixel_values: torch.Tensor, max_new_tokens: int = 20) -> list[str]:
        ids = self.generate(pixel_values, max_new_tokens=max_new_tokens)
        return self.tokenizer.batch_decode(ids, skip_special_tokens=True)

    def _extra_summary(self) -> dict[str, Any]:
        return {"generation": self.generation_settings()}


class AssistantAdapter(ModelAdapter):
    """An LLM-based VLM that answers a prompt about an image (task ``vqa``): a vision encoder whose
    features replace the image tokens of the prompt's embeddings, and a decoder-only language model with
    a (grouped-query) KV cache. Captioning is the same call with :attr:`default_prompt`."""

    task = "vqa"
    default_prompt: ClassVar[str] = "Describe this image briefly."

    @abstractmethod
    def image_features(self, pixel_values: torch.Tensor, pixel_attention_mask: torch.Tensor) -> torch.Tensor:
        """The vision graph: ``(batch, images, 3, T, T)`` tiles + ``(batch, images, T, T)`` pixel mask ->
        ``(batch * images, image_seq_len, text_hidden)`` features, exactly as ``generate`` merges them."""

    @abstractmethod
    def embed_tokens(self, input_ids: torch.Tensor) -> torch.Tensor:
        """Token ids -> the language model's input embeddings."""

    @abstractmethod
    def decoder_call(self, inputs_embeds: torch.Tensor, attention_mask: torch.Tensor,
                     position_ids: torch.Tensor, cache: Any) -> tuple[torch.Tensor, Any]:
        """The language model on embeddings with a ``DynamicCache``: ``(logits, updated cache)``."""

    @abstractmethod
    def kv_layout(self) -> tuple[int, int, int]:
        """``(num_layers, num_key_value_heads, head_dim)`` of the decoder's KV cache."""

    @abstractmethod
    def prompt_settings(self) -> dict[str, Any]:
        """What the runtime needs to build a prompt: chat template, image tokens and ids, image_seq_len,
        the image splitting settings (the processor config)."""

    @abstractmethod
    def processor(self, splitting: bool | None = None) -> Any:
        """The transformers processor a user would call (the reference of parity and bench);
        ``splitting`` overrides its image processor's ``do_image_splitting``."""

    @abstractmethod
    def generation_settings(self) -> dict[str, Any]:
        """eos (end of turn) and pad token ids and the longest context."""

    def reference_inputs(self, rgb: Any, question: str | list[str], splitting: bool | None = None
                         ) -> dict[str, torch.Tensor]:
        """What the transformers processor gives for one RGB uint8 image and a question (the chat
        template applied, one user turn, generation prompt added); ``splitting`` overrides the
        processor's ``do_image_splitting``. A list of questions about the same image is one batch,
        left-padded (as batched ``generate`` needs)."""
        proc = self.processor(splitting)
        questions = [question] if isinstance(question, str) else list(question)
        texts = [proc.apply_chat_template([{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": q}]}],
                                          add_generation_prompt=True) for q in questions]
        if len(texts) == 1:
            inputs = dict(proc(text=texts[0], images=[[rgb]], return_tensors="pt"))
        else:
            proc.tokenizer.padding_side = "left"
            inputs = dict(proc(text=texts, images=[[rgb]] * len(texts), padding=True, return_tensors="pt"))
        inputs.pop("token_type_ids", None)  # the tokenizer's, not a model input
        return inputs

    def answer_ids(self, rgb: Any, question: str | list[str], max_new_tokens: int = 20, *,
                   splitting: bool | None = None, **kwargs: Any) -> torch.Tensor:
        """The answer's token ids from transformers ``generate`` (greedy by default; the prompt stripped;
        one row per question, a finished row padded with the pad id)."""
        inputs = self.reference_inputs(rgb, question, splitting)
        settings = {"do_sample": False, "num_beams": 1, **kwargs}
        with torch.no_grad():
            out = self.model.generate(**inputs, max_new_tokens=max_new_tokens, **settings)
        return out[:, inputs["input_ids"].shape[1]:]

    def vision_tower(self) -> torch.nn.Module:
        return self.model.model.vision_model

    def _extra_summary(self) -> dict[str, Any]:
        settings = self.prompt_settings()
        return {"generation": self.generation_settings(),
                "prompt": {k: settings[k] for k in ("image_seq_len", "image_token") if k in settings}}


class DetectorAdapter(ModelAdapter):
    """An open-vocabulary detector: image graph + text graph + class head."""

    task = "detect"

    default_prompts: ClassVar[tuple[str, ...]] = ("a photo of a cat", "a photo of a dog")
    backbone: ClassVar[str]  # attribute holding the CLIP backbone ("owlvit" / "owlv2")

    def detection_settings(self) -> dict[str, Any]:
        """What the runtime needs to tokenise prompts and post-process the heads."""
        text = self.model.config.text_config
        # the tokenizer's pad id: real OWL configs carry CLIP's legacy pad_token_id 1, their processor
        # pads with "!" = 0 (padded positions are masked, but the runtime should pad as HF does)
        pad = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else text.pad_token_id
        return {"max_text_length": text.max_position_embeddings, "pad_token_id": pad,
                "objectness": hasattr(self.model, "objectness_predictor"),
                "box_format": "cxcywh_normalized", "class_head": "normalized_dot_shift_scale"}

    def vision_tower(self) -> torch.nn.Module:
        return getattr(self.model, self.backbone).vision_model

    def image_heads(self, pixel_values: torch.Tensor) -> dict[str, torch.Tensor]:
        """The image graph: everything per patch that does not depend on the prompts.

        ``class_embeds`` are L2-normalised (+1e-6) like HF's class head; the runtime finishes it with
        ``(class_embeds @ normalise(text_embeds).T + logit_shift) * logit_scale``.
        """
        m = self.model
        feature_map = m.image_embedder(pixel_values=pixel_values)[0]
        b, h, w, d = feature_map.shape
        feats = torch.reshape(feature_map, (b, h * w, d))
        head = m.class_head
        class_embeds = head.dense0(feats)
        class_embeds = class_embeds / (torch.linalg.norm(class_embeds, dim=-1, keepdim=True) + 1e-6)
        out = {
            "class_embeds": class_embeds,
            "logit_shift": head.logit_shift(feats),
            "logit_scale": head.elu(head.logit_scale(feats)) + 1,
            "pred_boxes": m.box_predictor(feats, feature_map),
        }
        if hasattr(m, "objectness_predictor"):
            out["objectness_logits"] = m.objectness_predictor(feats)
        return out

    def text_embeddings(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """The text graph: prompt ids -> L2-normalised text embeddings (``OwlViTModel.text_embeds``)."""
        clip = getattr(self.model, self.backbone)
        embeds = clip.get_text_features(input_ids=input_ids, attention_mask=attention_mask)
        return embeds / torch.linalg.norm(embeds, ord=2, dim=-1, keepdim=True)

    def encode_prompts(self, prompts: list[str], batch_size: int = 1) -> dict[str, torch.Tensor]:
        """Token ids and mask padded to the text model's length, repeated for ``batch_size`` images
        (the layout OWL-ViT expects: ``(batch * num_queries, seq)``)."""
        max_len = self.model.config.text_config.max_position_embeddings
        enc = self.tokenizer(list(prompts) * batch_size, padding="max_length", max_length=max_len,
                             truncation=True, return_tensors="pt")
        return {"input_ids": enc["input_ids"], "attention_mask": enc["attention_mask"]}

    def forward(self, pixel_values: torch.Tensor, **inputs: Any) -> dict[str, torch.Tensor]:
        prompts = list(inputs.get("prompts", self.default_prompts))
        text = self.encode_prompts(prompts, batch_size=pixel_values.shape[0])
        with torch.no_grad():
            out = self.model(pixel_values=pixel_values, **text)
        result = {"logits": out.logits, "pred_boxes": out.pred_boxes}
        if getattr(out, "objectness_logits", None) is not None:
            result["objectness_logits"] = out.objectness_logits
        return result


def reinit_(model: torch.nn.Module, std: float, seed: int) -> torch.nn.Module:
    """Re-initialise every matrix of a tiny random model with N(0, std), in place, seeded.

    Default inits of small random configs give near-constant outputs (BLIP's vision
    ``initializer_range`` is 1e-10), which would let parity tests pass vacuously.
    """
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for param in model.parameters():
            if param.dim() > 1:
                param.copy_(torch.randn(param.shape, generator=gen) * std)
    return model
