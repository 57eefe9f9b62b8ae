"""``vqa``: answer a prompt about an image with an LLM-based VLM (SmolVLM, Idefics3); captioning is the
same call with the bundle's default prompt.

Graphs ``vision_encoder`` + ``embed_tokens`` + ``decoder`` (:mod:`edgevlp.export.assistant_graphs`); the
prompt (chat template, image splitting, image-token expansion) is built by the torch-free runtime from
the manifest; parity on the image features and on the greedy answer tokens against transformers
``generate`` for real photos split into one and into several tiles.

Calibration feeds (for ``edgevlp compress``'s quantisation, e.g. the 4-bit weight-only decoder of
``recipes/smolvlm-int4.toml``) run the FP32 graphs on each frame unsplit. Not landed yet for this task
(each raises :class:`~edgevlp.errors.NotAvailableYet` saying so): pruning signals, distillation and
``edgevlp eval``.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from edgevlp.errors import NotAvailableYet
from edgevlp.tasks.base import Task

__all__ = ["VQATask", "VQA"]

def _not_yet(what: str) -> NotAvailableYet:
    return NotAvailableYet(f"{what} for vqa models (SmolVLM, Idefics3) has not landed yet (issue #16: pruning "
                           "and distillation); quantise with recipes/smolvlm-int4.toml or export as is")


class VQATask(Task):
    name = "vqa"
    runtime_class = "edgevlp.runtime.assistant:Assistant"
    app_slot = "assistant"
    metric = "exact_match"
    metric_labels = (("exact_match", "exact match"),)
    card_metrics = ("exact_match",)
    metric_note = "answers compared with the reference answers after lower-casing and stripping punctuation."
    manifest_section = "generation"
    generates = True
    reference_note = "Idefics3Processor (chat template, image splitting) + generate"

    # ------------------------------------------------------------------------------------ export
    def graphs(self, adapter: Any) -> list[Any]:
        from edgevlp.export.assistant_graphs import assistant_graphs

        return assistant_graphs(adapter)

    def manifest_settings(self, adapter: Any, *, max_new_tokens: int,
                          roles: Mapping[str, Any]) -> dict[str, Any]:
        from edgevlp.runtime.vlm_processing import ImageSplitSpec

        prompt = adapter.prompt_settings()
        processor = prompt.pop("processor")
        prompt["image_splitting"] = ImageSplitSpec.from_processor_config(processor).to_dict()
        return {**adapter.generation_settings(), "max_new_tokens": max_new_tokens, "prompt": prompt,
                "decoder": "single graph (prefill: past_sequence 0; then one token per call), grouped-query "
                           "KV cache; image features replace the embeddings of the prompt's image tokens"}

    def parity(self, adapter: Any, model: Any, pixels: Any, diffs: Any, *,
               new_tokens: int, so_far: dict[str, Any]) -> dict[str, Any]:
        from edgevlp.export.parity import assistant_parity

        return so_far or assistant_parity(adapter, model, diffs, new_tokens)

    # ------------------------------------------------------------------------------- compression
    def calibration_feeds(self, adapter: Any, graphs: dict[str, Path], frames: list[Any],
                          pixels: list[Any], *, max_new_tokens: int) -> dict[str, list[dict[str, Any]]]:
        from edgevlp.compress.calib import assistant_feeds

        return assistant_feeds(adapter, graphs, frames, max_new_tokens)

    def run_forward(self, adapter: Any, batch: Any) -> None:
        raise _not_yet("activation-based pruning")

    def fisher_loss(self, adapter: Any, batch: Any, gen: Any) -> Any:
        raise _not_yet("pruning")

    def has_task_loss(self, split: str | None) -> bool:
        return False

    def distill_terms(self, job: Any, batch: dict[str, Any], student_states: Any,
                      teacher_states: Any) -> tuple[Any, Any]:
        raise _not_yet("distillation")

    # -------------------------------------------------------------------------------- evaluation
    def bench_call(self, model: Any, prompts: list[str], exact: bool) -> Any:
        question = prompts[0] if prompts else None
        if exact:  # eos suppressed until n: exactly n new tokens every call
            return lambda frame, n: model.ask(frame, question, max_new_tokens=n, min_new_tokens=n)
        return lambda frame, n: model.ask(frame, question, max_new_tokens=n)

    def reference_call(self, adapter: Any, processor: Any, prompts: list[str], exact: bool) -> Any:
        question = prompts[0] if prompts else adapter.default_prompt

        def call(pixels: Any, rgb: Any, n: int) -> int:
            extra = {"min_new_tokens": n} if exact else {}
            return int(adapter.answer_ids(rgb, question, max_new_tokens=n, **extra).shape[1])

        return call

    def evaluate(self, predictor: Any, samples: list[Any], phrases: tuple[str, ...], *, data: str,
                 bundle: bool, batch_size: int, max_new_tokens: int, progress: bool) -> dict[str, Any]:
        raise _not_yet("`edgevlp eval`")


VQA = VQATask()
