"""``caption``: image -> text with a KV-cache decoder (BLIP, VisionEncoderDecoder).

Graphs ``vision_encoder`` (+ ``cross_kv``) + one ``text_decoder`` step (:mod:`edgevlp.export.graphs`);
calibrated on every step of a greedy FP32 decode; parity on encoder states, first-step logits and
greedy tokens; trained and distilled on token cross-entropy; scored by CIDEr-D.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from edgevlp.errors import InputError
from edgevlp.tasks.base import Task

__all__ = ["CaptionTask", "CAPTION"]

#: Longest caption (tokens) distillation trains on.
MAX_CAPTION_TOKENS = 40


class CaptionTask(Task):
    name = "caption"
    runtime_class = "edgevlp.runtime.captioner:Captioner"
    app_slot = "captioner"
    metric = "cider"
    metric_labels = (("bleu4", "BLEU-4"), ("cider", "CIDEr"), ("bleu1", "BLEU-1"),
                     ("shape_accuracy", "shape right per object"), ("colour_accuracy", "colour right per object"),
                     ("pair_accuracy", "colour+shape right per object"), ("extra_mentions", "extra mentions"),
                     ("colour_recall", "colour recall"), ("shape_recall", "shape recall"),
                     ("pair_recall", "colour+shape recall"))
    card_metrics = tuple(key for key, _ in metric_labels)  # the card shows them in the same order
    metric_note = ("BLEU-4 and CIDEr-D from pycocoevalcap's scorers on simple lower-case whitespace "
                   "tokenisation (its Java PTB tokenizer is not used), greedy decoding, 3-5 "
                   "references per image. The recalls are the share of objects whose colour, shape "
                   "and colour-shape pair the caption names (read back with "
                   "`edgevlp.data.parse_caption`): BLEU and CIDEr also reward the template words. "
                   "'right per object' matches the caption's mentions one to one to the drawn "
                   "objects and counts an object when its own mention has the right word(s); extra "
                   "mentions are those matched to no object.")
    manifest_section = "generation"
    generates = True
    reference_note = "HF processor + generate"

    # ------------------------------------------------------------------------------------ export
    def graphs(self, adapter: Any) -> list[Any]:
        from edgevlp.export.graphs import captioner_graphs

        return captioner_graphs(adapter)

    def manifest_settings(self, adapter: Any, *, max_new_tokens: int,
                          roles: Mapping[str, Any]) -> dict[str, Any]:
        return {**adapter.generation_settings(), "max_new_tokens": max_new_tokens,
                "decoder": "single graph; past_sequence may be 0 (first step)"
                           + ("; cross-attention keys/values from cross_kv, once per image"
                              if "cross_kv" in roles else "")}

    def parity(self, adapter: Any, model: Any, pixels: Any, diffs: Any, *,
               new_tokens: int, so_far: dict[str, Any]) -> dict[str, Any]:
        from edgevlp.export.parity import captioner_parity

        one = captioner_parity(adapter, model, pixels, diffs, new_tokens)
        if so_far:
            one["greedy_tokens_identical"] &= so_far["greedy_tokens_identical"]
            one["source_token_ids"] = so_far["source_token_ids"] + one["source_token_ids"]
            one["exported_token_ids"] = so_far["exported_token_ids"] + one["exported_token_ids"]
        return one

    # ------------------------------------------------------------------------------- compression
    def calibration_feeds(self, adapter: Any, graphs: dict[str, Path], frames: list[Any],
                          pixels: list[Any], *, max_new_tokens: int) -> dict[str, list[dict[str, Any]]]:
        from edgevlp.compress.calib import decoder_feeds

        return {"vision_encoder": [{"pixel_values": p} for p in pixels],
                **decoder_feeds(adapter, graphs, pixels, max_new_tokens)}

    def run_forward(self, adapter: Any, batch: Any) -> None:
        from edgevlp.compress.signals import pseudo_captions, teacher_forced_logits

        teacher_forced_logits(adapter, batch.pixel_values, pseudo_captions(adapter, batch.pixel_values))

    def fisher_loss(self, adapter: Any, batch: Any, gen: Any) -> Any:
        """Cross-entropy of the model's own greedy caption, teacher-forced."""
        from edgevlp.compress.signals import pseudo_captions, teacher_forced_logits, token_mask
        from edgevlp.tasks.losses import masked_token_ce

        px = batch.pixel_values
        ids = pseudo_captions(adapter, px)
        logits = teacher_forced_logits(adapter, px, ids[:, :-1])
        mask = token_mask(ids[:, 1:], adapter.generation_settings().get("eos_token_id"))
        return masked_token_ce(logits, ids[:, 1:], mask)

    def has_task_loss(self, split: str | None) -> bool:
        return True  # reference captions (shapes:) or the teacher's own greedy captions

    def distill_terms(self, job: Any, batch: dict[str, Any], student_states: Any,
                      teacher_states: Any) -> tuple[Any, Any]:
        """Token cross-entropy on the reference (else the teacher's greedy) captions, and
        T^2 KL(softmax(t/T) || softmax(s/T)) per caption token, teacher-forced on the same tokens."""
        import torch

        from edgevlp.compress.signals import caption_ids, pseudo_captions, teacher_forced_logits, token_mask
        from edgevlp.tasks.losses import caption_kd, masked_token_ce

        student, teacher, temp = job.student, job.teacher, job.cfg.temperature
        px = batch["pixel_values"]
        if batch["captions"] is not None:
            ids = caption_ids(student, batch["captions"], MAX_CAPTION_TOKENS)
        else:
            ids = pseudo_captions(teacher, px, MAX_CAPTION_TOKENS)
        s_logits = teacher_forced_logits(student, px, ids[:, :-1], student_states)
        with torch.no_grad():
            t_logits = teacher_forced_logits(teacher, px, ids[:, :-1], teacher_states)
        mask = token_mask(ids[:, 1:], student.generation_settings().get("eos_token_id"))
        return masked_token_ce(s_logits, ids[:, 1:], mask), caption_kd(s_logits, t_logits, mask, temp)

    # -------------------------------------------------------------------------------- evaluation
    def bench_call(self, model: Any, prompts: list[str], exact: bool) -> Any:
        if exact:  # eos suppressed until n (min_new_tokens, as transformers does): exactly n every call
            return lambda frame, n: model.caption(frame, max_new_tokens=n, min_new_tokens=n)
        return lambda frame, n: model.caption(frame, max_new_tokens=n)

    def reference_call(self, adapter: Any, processor: Any, prompts: list[str], exact: bool) -> Any:
        def call(pixels: Any, rgb: Any, n: int) -> int:
            extra = {"min_new_tokens": n} if exact else {}
            return int(adapter.generate(pixels, max_new_tokens=n, **extra).shape[1])

        return call

    def evaluate(self, predictor: Any, samples: list[Any], phrases: tuple[str, ...], *, data: str,
                 bundle: bool, batch_size: int, max_new_tokens: int, progress: bool) -> dict[str, Any]:
        from edgevlp.eval.evaluate import caption_samples_bundle, caption_samples_torch, mention_recall
        from edgevlp.eval.metrics import caption_scores

        refs = {i: s.captions for i, s in enumerate(samples)}
        if not all(refs.values()):
            raise InputError(f"{data}: some images have no reference captions; captioners need them")
        if bundle:
            texts = caption_samples_bundle(predictor, samples, max_new_tokens=max_new_tokens, progress=progress)
        else:
            texts = caption_samples_torch(predictor, samples, batch_size=batch_size,
                                          max_new_tokens=max_new_tokens, progress=progress)
        result: dict[str, Any] = {**caption_scores(refs, dict(enumerate(texts))), **mention_recall(samples, texts)}
        result["examples"] = [{"prediction": t, "reference": s.captions[0]} for t, s in zip(texts[:5], samples)]
        return result


CAPTION = CaptionTask()
