"""SmolVLM / Idefics3 (``SmolVLMForConditionalGeneration``, ``Idefics3ForConditionalGeneration``): a SigLIP
vision encoder on image tiles, a pixel-shuffle connector, and a Llama decoder with grouped-query attention
that answers a chat prompt whose ``<image>`` tokens are replaced by the image features.

The vision part is re-expressed without its per-image Python loop (:meth:`SmolVLMAdapter.image_features`:
the patch mask, the bucketed position ids and the 4-D attention mask computed for every tile at once), so
it traces into one graph that takes the HF processor's ``pixel_values`` and ``pixel_attention_mask``;
``tests/test_smolvlm.py`` checks it equals the model's own ``get_image_features``.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, ClassVar

import torch
from transformers import (Idefics3Config, Idefics3ForConditionalGeneration, Idefics3ImageProcessor,
                          PreTrainedModel, SmolVLMConfig, SmolVLMForConditionalGeneration, SmolVLMImageProcessor)
from transformers.modeling_attn_mask_utils import _prepare_4d_attention_mask

from edgevlp.models._tokenizers import TINY_WORDS, smolvlm_tokenizer
from edgevlp.models.base import AssistantAdapter, PartSpec, reinit_
from edgevlp.spec import PreprocessSpec

__all__ = ["SmolVLMAdapter", "Idefics3Adapter", "SMOLVLM_CHAT_TEMPLATE"]

#: SmolVLM-256M/500M-Instruct's chat template (their ``chat_template.json``); used when a checkpoint has
#: none of its own.
SMOLVLM_CHAT_TEMPLATE = (
    "<|im_start|>{% for message in messages %}{{message['role'] | capitalize}}"
    "{% if message['content'][0]['type'] == 'image' %}{{':'}}{% else %}{{': '}}{% endif %}"
    "{% for line in message['content'] %}{% if line['type'] == 'text' %}{{line['text']}}"
    "{% elif line['type'] == 'image' %}{{ '<image>' }}{% endif %}{% endfor %}<end_of_utterance>\n"
    "{% endfor %}{% if add_generation_prompt %}{{ 'Assistant:' }}{% endif %}"
)
CHAT_TEMPLATE_FILE = "chat_template.json"
IMAGE_TOKEN = "<image>"


def _bucket_table(side: int, length: int) -> torch.Tensor:
    """``table[nb, i]``: the position bucket HF's vision embeddings give patch ``i`` of a row of ``nb``
    real patches (``torch.bucketize(i / nb * (1 - 1e-6), boundaries, right=True)``, float32 as there),
    for every ``nb`` in ``0..length``: a constant of the graph, looked up by the mask's patch counts
    (the float arithmetic itself does not survive ONNX conversion bit for bit, and one ulp moves a
    patch to the next bucket)."""
    boundaries = torch.arange(1 / side, 1.0, 1 / side)
    index = torch.arange(length, dtype=torch.float32)
    rows = [torch.zeros(length, dtype=torch.long)]
    for nb in range(1, length + 1):
        rows.append(torch.bucketize(index / torch.tensor(float(nb)) * (1 - 1e-6), boundaries, right=True))
    return torch.stack(rows)


class SmolVLMAdapter(AssistantAdapter):
    """SmolVLM (SmolVLM-256M/500M/2.2B-Instruct).

    Example:
        >>> adapter = SmolVLMAdapter.tiny()
        >>> adapter.kv_layout()
        (2, 2, 8)
    """

    family = "smolvlm"
    architecture = "SmolVLMForConditionalGeneration"
    parts = (
        PartSpec("vision_encoder", "vision_encoder", ("model.vision_model.", "model.connector."),
                 description="SigLIP on 512 px tiles + pixel-shuffle connector -> image features"),
        PartSpec("text_decoder", "text_decoder", ("model.text_model.", "lm_head."), kv_cache=True,
                 description="Llama decoder (grouped-query KV cache) on merged embeddings -> logits"),
    )
    config_class: ClassVar[type] = SmolVLMConfig
    image_processor_class: ClassVar[type] = SmolVLMImageProcessor

    def __init__(self, model: PreTrainedModel, *, chat_template: str | None = None, **kwargs: Any) -> None:
        super().__init__(model, **kwargs)
        self.chat_template = chat_template or getattr(self.tokenizer, "chat_template", None) or SMOLVLM_CHAT_TEMPLATE

    @classmethod
    def model_class(cls) -> type[PreTrainedModel]:
        return SmolVLMForConditionalGeneration

    @classmethod
    def from_pretrained(cls, model_dir: Path, *, source: str | None = None) -> "SmolVLMAdapter":
        adapter = super().from_pretrained(model_dir, source=source)
        path = Path(model_dir) / CHAT_TEMPLATE_FILE
        if path.is_file():
            adapter.chat_template = json.loads(path.read_text())["chat_template"]
        return adapter  # type: ignore[return-value]

    def save_pretrained(self, out_dir: Any) -> Path:
        out = super().save_pretrained(out_dir)
        (out / CHAT_TEMPLATE_FILE).write_text(json.dumps({"chat_template": self.chat_template}, indent=2) + "\n")
        return out

    @classmethod
    def tiny(cls, seed: int = 0) -> "SmolVLMAdapter":
        """Tiles of 32 px in 8 px patches, scale factor 2: 4 image tokens per tile; images up to 64 px
        (2 x 2 tiles + the global image)."""
        tokenizer = smolvlm_tokenizer(448, 320, TINY_WORDS)
        ids = tokenizer.convert_tokens_to_ids
        vision = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                      image_size=32, patch_size=8, initializer_range=0.02)
        text = dict(model_type="llama", vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64,
                    num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2, head_dim=8,
                    max_position_embeddings=512, rms_norm_eps=1e-5, rope_theta=100000.0,
                    pad_token_id=ids("<|im_end|>"), bos_token_id=ids("<|im_start|>"),
                    eos_token_id=ids("<end_of_utterance>"), tie_word_embeddings=False)
        config = cls.config_class(vision_config=vision, text_config=text, scale_factor=2,
                                  image_token_id=ids(IMAGE_TOKEN), pad_token_id=ids("<|im_end|>"),
                                  tie_word_embeddings=False)
        config.architectures = [cls.architecture]
        torch.manual_seed(seed)
        model = reinit_(cls.model_class()(config), std=0.3, seed=seed)
        model.generation_config.eos_token_id = ids("<end_of_utterance>")
        model.generation_config.pad_token_id = ids("<|im_end|>")
        processor = cls.image_processor_class(size={"longest_edge": 64}, max_image_size={"longest_edge": 32}).to_dict()
        return cls(model, processor_config=processor, tokenizer=tokenizer, source=f"tiny-random-{cls.family}(seed={seed})")

    # ---------------------------------------------------------------------------------- contracts
    @property
    def tile_size(self) -> int:
        return int(self.processor_config.get("max_image_size", {}).get("longest_edge",
                                                                       self.model.config.vision_config.image_size))

    def preprocess_spec(self) -> PreprocessSpec:
        """One tile: ``tile x tile``, the processor's filter, rescale and mean/std (the splitting itself is
        in :meth:`prompt_settings`)."""
        cfg = {**self.processor_config, "size": {"height": self.tile_size, "width": self.tile_size}}
        return PreprocessSpec.from_processor_config(cfg, source=self.source)

    @property
    def image_seq_len(self) -> int:
        return int(self.model.model.image_seq_len)

    def prompt_settings(self) -> dict[str, Any]:
        tok = self.tokenizer
        return {"chat_template": self.chat_template, "image_token": IMAGE_TOKEN,
                "image_token_id": int(self.model.config.image_token_id),
                "fake_token": "<fake_token_around_image>", "global_token": "<global-img>",
                "image_seq_len": self.image_seq_len, "default_prompt": self.default_prompt,
                "bos_token_id": tok.bos_token_id, "processor": dict(self.processor_config)}

    def generation_settings(self) -> dict[str, Any]:
        text = self.model.config.text_config
        eos = self.model.generation_config.eos_token_id
        eos = eos if eos is not None else self.tokenizer.convert_tokens_to_ids("<end_of_utterance>")
        pad = self.model.generation_config.pad_token_id
        return {"eos_token_id": eos, "pad_token_id": pad if pad is not None else text.pad_token_id,
                "max_length": int(text.max_position_embeddings)}

    def processor(self, splitting: bool | None = None) -> Any:
        # SmolVLMProcessor needs torchvision (its video processor); Idefics3Processor expands the
        # <image> placeholder with the same functions, and Idefics3ImageProcessor is SmolVLM's image logic
        from transformers import Idefics3Processor

        config = {k: v for k, v in self.processor_config.items() if k not in ("image_processor_type", "processor_class")}
        if splitting is not None:
            config["do_image_splitting"] = bool(splitting)
        image = Idefics3ImageProcessor(**config)
        return Idefics3Processor(image_processor=image, tokenizer=self.tokenizer, image_seq_len=self.image_seq_len,
                                 chat_template=self.chat_template)

    def kv_layout(self) -> tuple[int, int, int]:
        text = self.model.config.text_config
        head_dim = getattr(text, "head_dim", None) or text.hidden_size // text.num_attention_heads
        return int(text.num_hidden_layers), int(text.num_key_value_heads), int(head_dim)

    # --------------------------------------------------------------------------------- graphs
    def image_features(self, pixel_values: torch.Tensor, pixel_attention_mask: torch.Tensor) -> torch.Tensor:
        m = self.model.model
        b, n, c, h, w = pixel_values.shape
        px = pixel_values.reshape(b * n, c, h, w).to(self.model.dtype)
        mask = pixel_attention_mask.reshape(b * n, h, w).bool()
        vm = m.vision_model
        emb = vm.embeddings
        p = emb.patch_size
        # HF: unfold into p x p cells, a patch is real where any of its pixels is
        patch_mask = mask.reshape(b * n, h // p, p, w // p, p).any(dim=4).any(dim=2)
        x = emb.patch_embedding(px).flatten(2).transpose(1, 2)
        side = emb.num_patches_per_side
        nb_h = patch_mask[:, :, 0].sum(dim=1)
        nb_w = patch_mask[:, 0, :].sum(dim=1)
        bucket_h = _bucket_table(side, h // p).to(px.device)[nb_h]  # (tiles, h // p)
        bucket_w = _bucket_table(side, w // p).to(px.device)[nb_w]
        pos = bucket_h[:, :, None] * side + bucket_w[:, None, :]
        pos = torch.where(patch_mask, pos, torch.zeros_like(pos)).reshape(b * n, -1)
        x = x + emb.position_embedding(pos)
        attn = _prepare_4d_attention_mask(patch_mask.reshape(b * n, -1), x.dtype)
        states = vm.post_layernorm(vm.encoder(inputs_embeds=x, attention_mask=attn).last_hidden_state)
        return m.connector(states)

    def embed_tokens(self, input_ids: torch.Tensor) -> torch.Tensor:
        return self.model.model.text_model.get_input_embeddings()(input_ids)

    def decoder_call(self, inputs_embeds: torch.Tensor, attention_mask: torch.Tensor,
                     position_ids: torch.Tensor, cache: Any) -> tuple[torch.Tensor, Any]:
        out = self.model.model.text_model(inputs_embeds=inputs_embeds, attention_mask=attention_mask,
                                          position_ids=position_ids, past_key_values=cache, use_cache=True,
                                          return_dict=True)
        return self.model.lm_head(out.last_hidden_state), out.past_key_values

    # ------------------------------------------------------- training (zoo, pruning, distillation)
    def connect(self, vision_states: torch.Tensor) -> torch.Tensor:
        """Image features (``(images, image_seq_len, text width)``) of the vision tower's last states."""
        return self.model.model.connector(vision_states)

    def prompt_ids(self, question: str) -> list[int]:
        """Token ids of the prompt the runtime builds for ``question`` about one unsplit image."""
        from edgevlp.runtime.vlm_processing import ChatTemplate, build_prompt

        cache = self.__dict__.setdefault("_prompt_ids", {})
        if question not in cache:
            text = build_prompt(ChatTemplate(self.chat_template), question, 0, 0, self.image_seq_len)
            cache[question] = self.tokenizer(text, add_special_tokens=False)["input_ids"]
        return cache[question]

    def answer_batch(self, questions: list[str], answers: list[str] | list[list[int]]) -> dict[str, torch.Tensor]:
        """Prompt + answer + ``<end_of_utterance>`` per row (answers as text, or as token ids already
        ending where they end), right-padded; ``labels`` are the answer's ids, -100 elsewhere."""
        settings = self.generation_settings()
        rows = []
        for question, answer in zip(questions, answers):
            prompt = self.prompt_ids(question)
            if isinstance(answer, str):
                answer = self.tokenizer(" " + answer, add_special_tokens=False)["input_ids"] + [settings["eos_token_id"]]
            rows.append((prompt + list(answer), len(prompt)))
        length = max(len(r) for r, _ in rows)
        ids = torch.full((len(rows), length), int(settings["pad_token_id"]), dtype=torch.long)
        labels = torch.full_like(ids, -100)
        mask = torch.zeros_like(ids)
        for i, (row, start) in enumerate(rows):
            ids[i, :len(row)] = torch.tensor(row)
            labels[i, start:len(row)] = ids[i, start:len(row)]
            mask[i, :len(row)] = 1
        return {"input_ids": ids, "attention_mask": mask, "labels": labels}

    def answer_logits(self, features: torch.Tensor, input_ids: torch.Tensor, attention_mask: torch.Tensor
                      ) -> torch.Tensor:
        """Logits ``(rows, tokens, vocab)`` of prompts whose image tokens take ``features`` (one image per
        row), teacher-forced, no cache."""
        return self.model(input_ids=input_ids, attention_mask=attention_mask, image_hidden_states=features,
                          use_cache=False).logits

    def greedy_answers(self, features: torch.Tensor, questions: list[str], max_new_tokens: int = 8) -> list[list[int]]:
        """The model's own greedy answers (token ids up to and including ``<end_of_utterance>``) to one
        question per image, re-running the whole sequence per token (short answers, no cache)."""
        eos = int(self.generation_settings()["eos_token_id"])
        answers: list[list[int]] = [[] for _ in questions]
        with torch.no_grad():
            for _ in range(max_new_tokens):
                open_rows = [i for i, a in enumerate(answers) if not a or a[-1] != eos]
                if not open_rows:
                    break
                batch = self.answer_batch([questions[i] for i in open_rows], [answers[i] for i in open_rows])
                logits = self.answer_logits(features[open_rows], batch["input_ids"], batch["attention_mask"])
                last = batch["attention_mask"].sum(1) - 1
                for row, i in enumerate(open_rows):
                    answers[i].append(int(logits[row, last[row]].argmax()))
        return answers

    def forward(self, pixel_values: torch.Tensor, **inputs: Any) -> dict[str, torch.Tensor]:
        mask = inputs.get("pixel_attention_mask")
        if mask is None:
            b, n, _, h, w = pixel_values.shape
            mask = torch.ones((b, n, h, w), dtype=torch.bool)
        with torch.no_grad():
            return {"image_features": self.model.model.get_image_features(pixel_values, mask)}


class Idefics3Adapter(SmolVLMAdapter):
    """Idefics3 (Idefics3-8B-Llama3 and SmolVLM checkpoints saved with the Idefics3 class)."""

    family = "idefics3"
    architecture = "Idefics3ForConditionalGeneration"
    config_class = Idefics3Config
    image_processor_class = Idefics3ImageProcessor

    @classmethod
    def model_class(cls) -> type[PreTrainedModel]:
        return Idefics3ForConditionalGeneration
