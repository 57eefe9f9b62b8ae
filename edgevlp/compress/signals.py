"""Differentiable task outputs shared by pruning (importance) and distillation (losses).

Everything goes through the adapter contract (``encode_image``/``decode_step`` for captioners,
``image_heads``/``text_embeddings`` for detectors), so any family with an adapter can be pruned and
distilled; these are exactly the computations the exported graphs perform.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from edgevlp.models.base import CaptionerAdapter, DetectorAdapter, ModelAdapter
from edgevlp.tasks import get_task

__all__ = ["Batch", "load_batches", "teacher_forced_logits", "pseudo_captions", "caption_ids", "detector_outputs",
           "token_mask", "run_task"]


@dataclass
class Batch:
    """Preprocessed images, the phrases present in them (detector prompts) and reference captions."""

    pixel_values: torch.Tensor
    phrases: list[str]
    captions: list[str] | None = None


def load_batches(adapter: ModelAdapter, source: str, n: int, batch_size: int, start: int = 0) -> list[Batch]:
    """``n`` frames of ``source`` (shapes:SPLIT, a folder, coco:PATH) through the runtime's preprocessing."""
    from edgevlp.compress.calib import _pixels, load_frames

    size = max(64, adapter.preprocess_spec().height)
    frames = load_frames(source, n, start=start, size=size)
    pixels = _pixels(adapter, frames)
    phrases = sorted({p for f in frames for p in f.phrases})
    return [Batch(torch.from_numpy(np.concatenate(pixels[i:i + batch_size])), phrases)
            for i in range(0, len(frames), batch_size)]


def teacher_forced_logits(adapter: CaptionerAdapter, pixel_values: torch.Tensor, ids: torch.Tensor,
                          encoder_hidden_states: torch.Tensor | None = None) -> torch.Tensor:
    """Decoder logits ``(batch, len(ids), vocab)`` for the token sequence ``ids`` (start token first)."""
    from transformers.cache_utils import DynamicCache, EncoderDecoderCache

    enc = adapter.encode_image(pixel_values) if encoder_hidden_states is None else encoder_hidden_states
    logits, _ = adapter.decode_step(ids, enc, EncoderDecoderCache(DynamicCache(), DynamicCache()))
    return logits


def token_mask(ids: torch.Tensor, eos: int | None) -> torch.Tensor:
    """1 for every target token up to and including the first eos of each row, 0 after it."""
    if eos is None:
        return torch.ones_like(ids, dtype=torch.float32)
    after = (ids == int(eos)).long().cumsum(1) - (ids == int(eos)).long()  # eos itself counts
    return (after == 0).float()


def pseudo_captions(adapter: CaptionerAdapter, pixel_values: torch.Tensor, max_new_tokens: int = 20) -> torch.Tensor:
    """The model's own greedy captions as ``(batch, 1 + T)`` ids with the start token first."""
    with torch.no_grad():
        ids = adapter.generate(pixel_values, max_new_tokens=max_new_tokens)
    return torch.cat([adapter.start_ids(ids.shape[0]), ids], 1)


def caption_ids(adapter: CaptionerAdapter, captions: list[str], max_length: int = 40) -> torch.Tensor:
    """Reference captions as ``(batch, T)`` ids: start token, words, eos (then pad)."""
    tok = adapter.tokenizer
    settings = adapter.generation_settings()
    enc = tok(captions, padding="longest", truncation=True, max_length=max_length, add_special_tokens=False,
              return_tensors="pt")
    body = enc["input_ids"]
    eos, pad = int(settings["eos_token_id"]), int(settings["pad_token_id"] if settings["pad_token_id"] is not None
                                                   else settings["eos_token_id"])
    lengths = enc["attention_mask"].sum(1)
    out = torch.full((body.shape[0], body.shape[1] + 2), pad, dtype=torch.long)
    out[:, 0] = int(settings["decoder_start_token_id"])
    for i, n in enumerate(lengths.tolist()):
        out[i, 1:1 + n] = body[i, :n]
        out[i, 1 + n] = eos
    return out


def detector_outputs(adapter: DetectorAdapter, pixel_values: torch.Tensor, prompts: list[str]
                     ) -> tuple[torch.Tensor, torch.Tensor, dict[str, torch.Tensor]]:
    """Class logits ``(batch, patches, prompts)``, boxes and the image-head outputs, computed as the
    bundle does (prompts encoded once and shared by every image)."""
    heads = adapter.image_heads(pixel_values)
    text = adapter.encode_prompts(prompts)
    queries = adapter.text_embeddings(text["input_ids"], text["attention_mask"])
    logits = (heads["class_embeds"] @ queries.T + heads["logit_shift"]) * heads["logit_scale"]
    return logits, heads["pred_boxes"], heads


def run_task(adapter: ModelAdapter, batch: Batch) -> None:
    """One forward pass of ``adapter`` over ``batch`` as deployed (for hooks that observe activations):
    the model's own caption teacher-forced, or the detector on the batch's phrases (its task's
    :meth:`edgevlp.tasks.Task.run_forward`)."""
    get_task(adapter.task).run_forward(adapter, batch)
