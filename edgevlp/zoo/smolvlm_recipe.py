"""``demo-smolvlm``: a small Idefics3 (the SmolVLM architecture) trained from scratch to answer questions
about shape scenes (:mod:`edgevlp.data.questions`: what colour / what shape / how many / is there /
where), and to describe a scene when asked the default prompt.

The model: SigLIP-style vision encoder on one 128 px tile in 8 px patches (a 16x16 grid), a pixel-shuffle
connector with scale factor 4 (16 image tokens, each a 32 px cell), and a 3-layer Llama decoder with
grouped-query attention (4 query heads, 2 key/value heads); no image splitting (a frame is resized to
the tile). Each image is encoded once per step and its features answer four questions (the decoder's
sequences share them), so a step costs one vision pass per image. As for demo-blip, a per-patch shape
probe on the vision encoder's output (dropped before saving) gives the vision tower a dense shape
signal; the loss is the answer tokens' cross-entropy (the prompt is not scored).

Example:
    >>> recipe = SmolVLMRecipe()
    >>> adapter = recipe.build(seed=0, tiny=True)          # doctest: +SKIP
"""

from __future__ import annotations

from typing import Any, ClassVar

import numpy as np
import torch
from transformers import Idefics3Config, Idefics3ForConditionalGeneration, Idefics3ImageProcessor

from edgevlp._training import Recipe, patch_shape_labels, shape_probe_loss, to_pixels, train_index
from edgevlp.data import CAPTION_VOCAB, SHAPES, dataset
from edgevlp.data.questions import ANSWER_WORDS, QA, question_texts, scene_questions
from edgevlp.models._tokenizers import smolvlm_tokenizer
from edgevlp.models.smolvlm import IMAGE_TOKEN, Idefics3Adapter

__all__ = ["SmolVLMRecipe", "QUESTIONS_PER_IMAGE", "MEAN", "STD"]

MEAN = STD = (0.5, 0.5, 0.5)  # Idefics3ImageProcessor's defaults
#: (image size, patch, vision width x layers, text width x layers, heads, kv heads, vision mlp ratio,
#: text mlp width, scale factor); 2.6 M parameters (5.3 MB in float16) at full size
_SIZES = {
    False: dict(image=128, patch=8, vision=(128, 4), text=(192, 3), heads=4, kv=2, mlp=4, text_mlp=512, scale=4),
    True: dict(image=64, patch=16, vision=(32, 1), text=(32, 1), heads=2, kv=1, mlp=2, text_mlp=64, scale=2),
}
#: questions answered per image and step (the image's features are shared by their sequences)
QUESTIONS_PER_IMAGE = 4
#: share of the sequences that ask the default prompt and are answered with a reference caption
DESCRIBE_SHARE = 0.15
MAX_POSITIONS = 256
PROBE_WEIGHT = 0.5


class SmolVLMRecipe(Recipe):
    name = "demo-smolvlm"
    family = "idefics3"
    training_only = ("shape_probe.",)  # dropped by finalize()
    defaults: ClassVar[dict[str, Any]] = dict(steps=2500, batch_size=32, lr=1e-3, warmup=200, eval_every=500,
                                              eval_n=48, checkpoint_every=200, bf16=True)

    def __init__(self) -> None:
        self.image_size = 128
        self.patch = 8

    def build(self, seed: int, tiny: bool) -> Idefics3Adapter:
        c = _SIZES[tiny]
        self.image_size, self.patch = c["image"], c["patch"]
        words = sorted({*CAPTION_VOCAB, *ANSWER_WORDS, "describe", "this", "image", "briefly", "user", "assistant"})
        tokenizer = smolvlm_tokenizer(512, 448, words, texts=[*question_texts(), Idefics3Adapter.default_prompt])
        ids = tokenizer.convert_tokens_to_ids
        vw, vl = c["vision"]
        tw, tl = c["text"]
        vision = dict(hidden_size=vw, intermediate_size=vw * c["mlp"], num_hidden_layers=vl,
                      num_attention_heads=c["heads"], image_size=c["image"], patch_size=c["patch"],
                      attention_dropout=0.0, initializer_range=0.02)
        text = dict(model_type="llama", vocab_size=len(tokenizer), hidden_size=tw, intermediate_size=c["text_mlp"],
                    num_hidden_layers=tl, num_attention_heads=c["heads"], num_key_value_heads=c["kv"],
                    head_dim=tw // c["heads"], max_position_embeddings=MAX_POSITIONS, rms_norm_eps=1e-5,
                    rope_theta=10000.0, pad_token_id=ids("<|im_end|>"), bos_token_id=ids("<|im_start|>"),
                    eos_token_id=ids("<end_of_utterance>"), tie_word_embeddings=False, initializer_range=0.02)
        config = Idefics3Config(vision_config=vision, text_config=text, scale_factor=c["scale"],
                                image_token_id=ids(IMAGE_TOKEN), pad_token_id=ids("<|im_end|>"),
                                tie_word_embeddings=False)
        config.architectures = [Idefics3Adapter.architecture]
        torch.manual_seed(seed)
        model = Idefics3ForConditionalGeneration(config)
        model.generation_config.eos_token_id = ids("<end_of_utterance>")
        model.generation_config.pad_token_id = ids("<|im_end|>")
        model.shape_probe = torch.nn.Linear(vw, len(SHAPES) + 1)  # training only: see finalize()
        processor = Idefics3ImageProcessor(do_image_splitting=False, size={"longest_edge": c["image"]},
                                           max_image_size={"longest_edge": c["image"]},
                                           image_mean=list(MEAN), image_std=list(STD)).to_dict()
        return Idefics3Adapter(model, processor_config=processor, tokenizer=tokenizer,
                               source=f"{self.name} (edgevlp zoo train, seed {seed})")

    # ----------------------------------------------------------------------------------- data
    def questions(self, scene: Any, rng: np.random.Generator) -> list[QA]:
        """:data:`QUESTIONS_PER_IMAGE` questions about ``scene`` (repeated kinds where it has fewer)."""
        qa = scene_questions(scene.phrases, [o.box_xyxy for o in scene.objects], self.image_size,
                             seed=int(rng.integers(2**31)))
        order = rng.permutation(len(qa)).tolist()
        picked = [qa[order[i % len(qa)]] for i in range(QUESTIONS_PER_IMAGE)]
        if rng.random() < DESCRIBE_SHARE * QUESTIONS_PER_IMAGE:
            caption = scene.captions[int(rng.integers(len(scene.captions)))]
            picked[int(rng.integers(QUESTIONS_PER_IMAGE))] = QA(Idefics3Adapter.default_prompt, caption, "describe")
        return picked

    def batch(self, step: int, batch_size: int, seed: int) -> dict[str, Any]:
        scenes = list(dataset("train", batch_size, size=self.image_size,
                              start=train_index(step, batch_size, seed, offset=7_919)))
        rng = np.random.default_rng([seed, step, 3])
        return {"pixel_values": to_pixels([s.image for s in scenes], MEAN, STD),
                "qa": [self.questions(s, rng) for s in scenes],
                "patch_shapes": patch_shape_labels(scenes, self.image_size, self.patch)}

    # ----------------------------------------------------------------------------------- loss
    def loss(self, adapter: Idefics3Adapter, batch: dict[str, Any]) -> tuple[torch.Tensor, dict[str, float]]:
        model = adapter.model
        px = batch["pixel_values"].to(model.device)
        states = adapter.vision_tower()(pixel_values=px).last_hidden_state  # whole tiles: every patch real
        features = adapter.connect(states)  # (images, tokens, text width)
        per_image = len(batch["qa"][0])
        qa = [q for questions in batch["qa"] for q in questions]
        text = {k: v.to(px.device) for k, v in adapter.answer_batch([q.question for q in qa],
                                                                    [q.answer for q in qa]).items()}
        out = model(input_ids=text["input_ids"], attention_mask=text["attention_mask"], labels=text["labels"],
                    image_hidden_states=features.repeat_interleave(per_image, dim=0))
        shape_loss = shape_probe_loss(model.shape_probe(states), batch["patch_shapes"])
        answer_loss = out.loss.float()
        return answer_loss + PROBE_WEIGHT * shape_loss, {"answer": round(float(answer_loss.detach()), 4),
                                                         "probe": round(float(shape_loss.detach()), 4)}

    def finalize(self, adapter: Idefics3Adapter) -> None:
        """Drop the shape probe: the saved model is a plain ``Idefics3ForConditionalGeneration``."""
        if hasattr(adapter.model, "shape_probe"):
            del adapter.model.shape_probe

    def quick_eval(self, adapter: Idefics3Adapter, n: int) -> dict[str, float]:
        """`edgevlp eval`'s exact-match accuracy (greedy, transformers ``generate``) on ``n`` val scenes."""
        from edgevlp.eval import evaluate

        result = evaluate(adapter, "shapes:val", n, max_new_tokens=4, progress=False)
        return {"vqa_accuracy": round(result["vqa_accuracy"], 4)}
