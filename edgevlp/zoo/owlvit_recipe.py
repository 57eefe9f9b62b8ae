"""``demo-owlvit``: a small OWL-ViT trained from scratch on phrase-labelled shape boxes.

DETR-style set loss (:func:`edgevlp.tasks.losses.set_loss`, shared with distillation): each object is matched to one patch (Hungarian, scipy) on
``2 * focal + 5 * L1 + 2 * (1 - GIoU)``; the class loss is a sigmoid focal loss of every patch
against every text query. The queries of a batch are shared and encoded once: all ordinary
colour-shape phrases (the negatives of each object) plus the one-word queries ("green",
"triangle"), which are positive for every object of that colour / shape and help the two be learned
apart. Held-out pairs are never queried in training, so their detection is compositional.

Size and schedule (issue #15's measured run): 128 px at patch 8 (a 16x16 grid; patch 16's 8x8 grid was
too coarse for small shapes), vision 128 x 4 layers, text 128 x 2, lr 5e-4 with warm-up then cosine,
the class head's logit shift -0.3 and scale bias 9.0 (logits start near -3, as the focal loss expects),
bfloat16 autocast for the forward pass (2.1x the images/s of float32 on this CPU).

transformers 4.57 notes: ``OwlViTForObjectDetection`` never calls ``post_init`` on its heads, so the
last box layer is zeroed (boxes start at their patch) and the logits start near -3; the text model
pools at ``argmax(input_ids)`` (EOS has the highest id) and pads with id 0.
"""

from __future__ import annotations

from typing import Any, ClassVar

import torch
from transformers import OwlViTConfig, OwlViTForObjectDetection, OwlViTImageProcessor

from edgevlp.data import COLOURS, SHAPES, SIZES, dataset
from edgevlp.models._tokenizers import clip_like_tokenizer
from edgevlp.models.owlvit import OwlViTAdapter
from edgevlp.tasks.losses import QUERIES, TRAIN_PHRASES, detection_targets, set_loss
from edgevlp._training import Recipe, to_pixels, train_index
from edgevlp.zoo.blip_recipe import CLIP_MEAN, CLIP_STD

__all__ = ["OwlViTRecipe", "forward_detector"]

_WORDS = (*COLOURS, *SHAPES, *SIZES, "a", "an", "shape", "object")

_SIZES = {
    # patch 8 at 128 px: a 16x16 grid of 256 patches (patch 16 gave 8x8, too coarse for small shapes);
    # narrower and shallower than before, so it trains ~2x more images per second (issue #15's facts)
    False: dict(image=128, patch=8, vision=(128, 4), text=(128, 2), heads=4, mlp=4),
    True: dict(image=64, patch=16, vision=(32, 1), text=(32, 1), heads=2, mlp=2),
}
MAX_TEXT = 8


def forward_detector(adapter: OwlViTAdapter, pixel_values: torch.Tensor, query_ids: torch.Tensor,
                     query_mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Logits ``(batch, patches, queries)`` and boxes ``(batch, patches, 4)`` (cxcywh in [0, 1]), with
    the queries encoded once and shared by every image (what HF's forward does per image)."""
    m = adapter.model
    feature_map = m.image_embedder(pixel_values=pixel_values)[0]
    b, h, w, d = feature_map.shape
    feats = feature_map.reshape(b, h * w, d)
    text = m.owlvit.get_text_features(input_ids=query_ids, attention_mask=query_mask)
    queries = text.unsqueeze(0).expand(b, -1, -1)
    logits, _ = m.class_head(feats, queries, None)
    boxes = m.box_predictor(feats, feature_map)
    return logits, boxes


class OwlViTRecipe(Recipe):
    name = "demo-owlvit"
    family = "owlvit"
    defaults: ClassVar[dict[str, Any]] = dict(steps=8000, batch_size=32, lr=5e-4, warmup=300, eval_every=1000,
                                              eval_n=64, checkpoint_every=200, bf16=True)

    def __init__(self) -> None:
        self.image_size = 128
        self._query_cache: tuple[torch.Tensor, torch.Tensor] | None = None

    def build(self, seed: int, tiny: bool) -> OwlViTAdapter:
        c = _SIZES[tiny]
        self.image_size = c["image"]
        tokenizer = clip_like_tokenizer(_WORDS)
        vocab = tokenizer.get_vocab()
        vw, vl = c["vision"]
        tw, tl = c["text"]
        text = dict(vocab_size=len(vocab), hidden_size=tw, intermediate_size=tw * c["mlp"], num_hidden_layers=tl,
                    num_attention_heads=c["heads"] if tw % c["heads"] == 0 else 2,
                    max_position_embeddings=MAX_TEXT, pad_token_id=vocab["!"],
                    bos_token_id=vocab["<|startoftext|>"], eos_token_id=vocab["<|endoftext|>"])
        text["num_attention_heads"] = 4 if tw % 4 == 0 else 2
        vision = dict(hidden_size=vw, intermediate_size=vw * c["mlp"], num_hidden_layers=vl,
                      num_attention_heads=c["heads"], image_size=c["image"], patch_size=c["patch"])
        # the class head maps vision features to text-hidden size and compares them with projected
        # text embeddings, so projection_dim must equal the text hidden size
        config = OwlViTConfig(text_config=text, vision_config=vision, projection_dim=tw)
        config.architectures = [OwlViTAdapter.architecture]
        torch.manual_seed(seed)
        model = OwlViTForObjectDetection(config)
        with torch.no_grad():
            last = model.box_head.dense2
            last.weight.zero_()
            last.bias.zero_()
            head = model.class_head
            head.logit_shift.weight.zero_()
            head.logit_shift.bias.fill_(-0.3)
            head.logit_scale.weight.zero_()
            head.logit_scale.bias.fill_(9.0)  # elu(9) + 1 = 10: logits start at 10 * (sim - 0.3), ~ -3
        processor = OwlViTImageProcessor(size={"height": c["image"], "width": c["image"]},
                                         crop_size={"height": c["image"], "width": c["image"]},
                                         image_mean=list(CLIP_MEAN), image_std=list(CLIP_STD)).to_dict()
        self._query_cache = None
        return OwlViTAdapter(model, processor_config=processor, tokenizer=tokenizer,
                             source=f"{self.name} (edgevlp zoo train, seed {seed})")

    def _queries(self, adapter: OwlViTAdapter) -> tuple[torch.Tensor, torch.Tensor]:
        if self._query_cache is None:
            enc = adapter.encode_prompts(list(QUERIES))
            self._query_cache = (enc["input_ids"], enc["attention_mask"])
        return self._query_cache

    def batch(self, step: int, batch_size: int, seed: int) -> dict[str, Any]:
        scenes = list(dataset("train", batch_size, size=self.image_size,
                              start=train_index(step, batch_size, seed, offset=333_331)))
        return {"pixel_values": to_pixels([s.image for s in scenes], CLIP_MEAN, CLIP_STD),
                "targets": detection_targets(scenes, self.image_size)}

    def loss(self, adapter: OwlViTAdapter, batch: dict[str, Any]) -> tuple[torch.Tensor, dict[str, float]]:
        ids, mask = self._queries(adapter)
        logits, boxes = forward_detector(adapter, batch["pixel_values"], ids, mask)
        return set_loss(logits.float(), boxes.float(), batch["targets"])  # the loss in float32 (bf16 autocast)

    def quick_eval(self, adapter: OwlViTAdapter, n: int) -> dict[str, float]:
        from edgevlp.eval.evaluate import detect_scenes_torch
        from edgevlp.eval.metrics import detection_scores

        scenes = list(dataset("val", n, size=self.image_size))
        records = detect_scenes_torch(adapter, scenes, list(TRAIN_PHRASES), progress=False)
        scores = detection_scores(records, list(TRAIN_PHRASES))
        return {"map": scores["map"], "map50": scores["map50"]}
