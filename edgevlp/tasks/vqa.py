"""``vqa``: answer a prompt about an image with an LLM-based VLM (SmolVLM, Idefics3); captioning is the
same call with the bundle's default prompt.

Graphs ``vision_encoder`` + ``embed_tokens`` + ``decoder`` (:mod:`edgevlp.export.assistant_graphs`); the
prompt (chat template, image splitting, image-token expansion) is built by the torch-free runtime from
the manifest; parity on the image features and on the greedy answer tokens against transformers
``generate`` for real photos split into one and into several tiles.

Calibration feeds (for ``edgevlp compress``'s quantisation, e.g. the 4-bit weight-only decoder of
``recipes/smolvlm-int4.toml``) run the FP32 graphs on each frame unsplit. Pruning importance is the
likelihood of the model's own greedy answer to the default prompt, teacher-forced on one unsplit tile;
distillation trains on the answer tokens of questions generated from shape scenes (cross-entropy on
the reference answer + KL to the teacher on the same tokens), or, on other images, on the teacher's
greedy answer to the default prompt (KL only).

Evaluation (``edgevlp eval``) asks the questions of :func:`edgevlp.data.questions.eval_questions` about
every shape scene (colour, shape, count, is-there, where) and scores exact match after
:func:`~edgevlp.data.questions.normalize_answer`: ``vqa_accuracy`` overall and ``vqa_<kind>`` per kind.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from edgevlp.errors import InputError
from edgevlp.tasks.base import Task

__all__ = ["VQATask", "VQA"]

#: longest self-generated answer the pruning importance scores
FISHER_MAX_TOKENS = 12
#: generated questions per image in a distillation batch (the image features are shared)
DISTILL_QUESTIONS = 2


def _answer_logits(adapter: Any, features: Any, questions: list[str], answers: list[Any]) -> tuple[Any, Any, Any]:
    """Next-token logits, targets and the answer-token mask of ``answers`` to ``questions``."""
    rows = adapter.answer_batch(questions, answers)
    logits = adapter.answer_logits(features, rows["input_ids"], rows["attention_mask"])
    return logits[:, :-1], rows["input_ids"][:, 1:], (rows["labels"][:, 1:] != -100).float()


def _own_answers(adapter: Any, pixel_values: Any) -> tuple[Any, list[str], list[list[int]]]:
    """Image features (with autograd where enabled), the default prompt per image and the model's
    own greedy answers to it."""
    features = adapter.connect(adapter.vision_tower()(pixel_values=pixel_values).last_hidden_state)
    questions = [adapter.default_prompt] * int(pixel_values.shape[0])
    return features, questions, adapter.greedy_answers(features.detach(), questions, FISHER_MAX_TOKENS)


_KIND_LABELS = {"colour": "colour questions", "shape": "shape questions", "count": "count questions",
                "exists": "is-there questions", "where": "where questions"}


class VQATask(Task):
    name = "vqa"
    runtime_class = "edgevlp.runtime.assistant:Assistant"
    app_slot = "assistant"
    metric = "vqa_accuracy"
    metric_labels = (("vqa_accuracy", "VQA accuracy"), *((f"vqa_{k}", v) for k, v in _KIND_LABELS.items()),
                     ("n_questions", "questions"))
    card_metrics = tuple(key for key, _ in metric_labels)
    metric_note = ("Greedy answers to 3-5 generated questions per scene (`edgevlp.data.questions`: what colour "
                   "is the <shape>, what shape is the <colour> object, how many <shape>s / shapes, is there a "
                   "<colour> <shape> (half yes), where is the <colour> <shape> (3x3 grid)), each asked only "
                   "where the scene has one answer; exact match after lower-casing, dropping punctuation and "
                   "articles, digits as words. vqa_accuracy is over all questions, vqa_<kind> per kind.")
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

    answer_role = "decoder"

    def answers(self, adapter: Any, graphs: dict[str, Path], run: Any, feeds: list[dict[str, Any]], *,
                max_new_tokens: int) -> list[list[int]]:
        from edgevlp.compress.calib import assistant_answers

        return assistant_answers(adapter, graphs, run, feeds, max_new_tokens)

    def run_forward(self, adapter: Any, batch: Any) -> None:
        features, questions, answers = _own_answers(adapter, batch.pixel_values)
        _answer_logits(adapter, features, questions, answers)

    def fisher_loss(self, adapter: Any, batch: Any, gen: Any) -> Any:
        """Cross-entropy of the model's own greedy answer to the default prompt, teacher-forced."""
        from edgevlp.tasks.losses import masked_token_ce

        features, questions, answers = _own_answers(adapter, batch.pixel_values)
        return masked_token_ce(*_answer_logits(adapter, features, questions, answers))

    def has_task_loss(self, split: str | None) -> bool:
        return split is not None  # shape scenes: reference answers to generated questions

    def distill_terms(self, job: Any, batch: dict[str, Any], student_states: Any,
                      teacher_states: Any) -> tuple[Any, Any]:
        """Answer-token cross-entropy (reference answers) and T^2 KL to the teacher on the same tokens."""
        import numpy as np
        import torch

        from edgevlp.data.questions import scene_questions
        from edgevlp.tasks.losses import caption_kd, masked_token_ce

        student, teacher, temp = job.student, job.teacher, job.cfg.temperature
        s_feats, t_feats = student.connect(student_states), teacher.connect(teacher_states).detach()
        scenes = batch.get("scenes")
        if scenes is not None:
            rows, questions, answers = [], [], []
            for i, scene in enumerate(scenes):
                qa = scene_questions(scene.phrases, [o.box_xyxy for o in scene.objects], scene.image.shape[1],
                                     seed=scene.seed)
                order = np.random.default_rng(scene.seed).permutation(len(qa))[:DISTILL_QUESTIONS]
                for j in order:
                    rows.append(i)
                    questions.append(qa[int(j)].question)
                    answers.append(qa[int(j)].answer)
        else:
            rows = list(range(int(s_feats.shape[0])))
            questions = [student.default_prompt] * len(rows)
            answers = teacher.greedy_answers(t_feats, questions, FISHER_MAX_TOKENS)
        index = torch.tensor(rows)
        s_logits, targets, mask = _answer_logits(student, s_feats[index], questions, answers)
        with torch.no_grad():
            t_logits, _, _ = _answer_logits(teacher, t_feats[index], questions, answers)
        task = masked_token_ce(s_logits, targets, mask) if scenes is not None else s_logits.sum() * 0.0
        return task, caption_kd(s_logits, t_logits, mask, temp)

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
        from edgevlp.data import parse_data_spec
        from edgevlp.data.questions import eval_questions, normalize_answer
        from edgevlp.eval.evaluate import answer_questions

        spec = parse_data_spec(data)
        if spec.kind != "shapes":
            raise InputError(f"{data}: vqa evaluation generates its questions from shape scenes; use --data "
                             "shapes:val (or shapes:heldout / shapes:test)")
        asked = [(i, qa) for i, s in enumerate(samples)
                 for qa in eval_questions(s.phrases, s.boxes, s.image.shape[1], i, heldout=spec.split == "heldout")]
        texts = answer_questions(predictor, samples, [(i, qa.question) for i, qa in asked], bundle=bundle,
                                 max_new_tokens=max_new_tokens, progress=progress)
        right: dict[str, list[bool]] = {}
        for (_, qa), text in zip(asked, texts):
            right.setdefault(qa.kind, []).append(normalize_answer(text) == normalize_answer(qa.answer))
        every = [r for rs in right.values() for r in rs]
        out: dict[str, Any] = {"vqa_accuracy": sum(every) / max(len(every), 1), "n_questions": len(every)}
        out.update({f"vqa_{kind}": sum(rs) / len(rs) for kind, rs in right.items()})
        return out


VQA = VQATask()
