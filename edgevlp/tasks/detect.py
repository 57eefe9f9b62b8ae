"""``detect``: open-vocabulary detection with editable prompts (OWL-ViT, OWLv2).

Graphs ``image_encoder`` + ``text_encoder`` (:mod:`edgevlp.export.graphs`), the class head runs in the
runtime; calibrated on the frames and their phrases; parity on class logits, boxes and objectness for
two prompt sets; distilled on the sigmoid class probabilities and boxes (plus the set loss where shape
scenes give box labels); scored by COCO mAP@.5.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from edgevlp.tasks.base import Task

__all__ = ["DetectTask", "DETECT"]


class DetectTask(Task):
    name = "detect"
    runtime_class = "edgevlp.runtime.detector:Detector"
    app_slot = "detector"
    metric = "map50"
    card_metrics = ("map50", "map", "map75")
    metric_labels = (("map", "mAP@[.5:.95]"), ("map50", "mAP@.5"), ("map75", "mAP@.75"))
    metric_note = ("COCO box mAP@[.5:.95] (map) and mAP@.5 (map50) from pycocotools; every phrase of "
                   "the split is queried on every image (50 on val, 56 on heldout), so false "
                   "positives from all images count; the 100 best (box, phrase) pairs per image are "
                   "kept. \"held-out pairs only\" averages over the six unseen pairs.")
    manifest_section = "detection"
    generates = False
    reference_note = "HF processor + model + post_process_object_detection, prompts tokenised per frame"
    #: Gaussian sigma of the boxes sampled for the Fisher (pruning importance) loss.
    box_sigma = 0.05

    # ------------------------------------------------------------------------------------ export
    def graphs(self, adapter: Any) -> list[Any]:
        from edgevlp.export.graphs import detector_graphs

        return detector_graphs(adapter)

    def manifest_settings(self, adapter: Any, *, max_new_tokens: int,
                          roles: Mapping[str, Any]) -> dict[str, Any]:
        return adapter.detection_settings()

    def parity(self, adapter: Any, model: Any, pixels: Any, diffs: Any, *,
               new_tokens: int, so_far: dict[str, Any]) -> dict[str, Any]:
        from edgevlp.export.parity import detector_parity

        return detector_parity(adapter, model, pixels, diffs)

    # ------------------------------------------------------------------------------- compression
    def calibration_feeds(self, adapter: Any, graphs: dict[str, Path], frames: list[Any],
                          pixels: list[Any], *, max_new_tokens: int) -> dict[str, list[dict[str, Any]]]:
        """The image graph on the pixels, the text graph on each frame's phrases."""
        import numpy as np

        text = []
        for f in frames:
            enc = adapter.encode_prompts(list(f.phrases))
            text.append({k: v.numpy().astype(np.int64) for k, v in enc.items()})
        return {"image_encoder": [{"pixel_values": p} for p in pixels], "text_encoder": text}

    def run_forward(self, adapter: Any, batch: Any) -> None:
        from edgevlp.compress.signals import detector_outputs

        detector_outputs(adapter, batch.pixel_values, batch.phrases)

    def fisher_loss(self, adapter: Any, batch: Any, gen: Any) -> Any:
        """Likelihood of class labels (Bernoulli per patch and prompt) and boxes (Gaussian,
        :attr:`box_sigma`) sampled from the model's own outputs."""
        import torch
        import torch.nn.functional as F

        from edgevlp.compress.signals import detector_outputs

        px = batch.pixel_values
        logits, boxes, _ = detector_outputs(adapter, px, batch.phrases)
        with torch.no_grad():
            labels = torch.bernoulli(torch.sigmoid(logits), generator=gen)
            target = boxes + self.box_sigma * torch.randn(boxes.shape, generator=gen)
        bce = F.binary_cross_entropy_with_logits(logits, labels, reduction="sum")
        return (bce + ((boxes - target) ** 2).sum() / (2 * self.box_sigma ** 2)) / px.shape[0]

    def has_task_loss(self, split: str | None) -> bool:
        return split is not None  # shape scenes carry box labels; other images do not

    def distill_prompts(self, split: str | None, frames: list[Any] | None) -> list[str]:
        """The prompts a detector is distilled on: shape scenes' training queries (those the set loss
        matches against), else the phrases of the frames."""
        if split is not None:
            from edgevlp.tasks.losses import QUERIES

            return list(QUERIES)
        assert frames is not None
        return sorted({p for f in frames for p in f.phrases})

    def distill_terms(self, job: Any, batch: dict[str, Any], student_states: Any,
                      teacher_states: Any) -> tuple[Any, Any]:
        """T^2 KL between the per-patch, per-prompt sigmoid class probabilities plus L1 between the
        boxes; the task loss is the set loss on shape scenes' boxes (zero elsewhere or when unweighted)."""
        import torch
        import torch.nn.functional as F

        from edgevlp.compress.signals import detector_outputs
        from edgevlp.tasks.losses import bernoulli_kl, detection_targets, set_loss

        px = batch["pixel_values"]
        prompts = job.prompts()
        s_logits, s_boxes, _ = detector_outputs(job.student, px, prompts)
        with torch.no_grad():
            t_logits, t_boxes, _ = detector_outputs(job.teacher, px, prompts)
        kd = bernoulli_kl(t_logits, s_logits, job.cfg.temperature) + F.l1_loss(s_boxes, t_boxes)
        task = px.new_zeros(())
        if job.cfg.task_weight > 0:
            task, _ = set_loss(s_logits, s_boxes, detection_targets(batch["scenes"], job.spec.height))
        return task, kd

    # -------------------------------------------------------------------------------- evaluation
    def bench_call(self, model: Any, prompts: list[str], exact: bool) -> Any:
        model.set_prompts(prompts)  # once: the runtime caches the prompt embeddings
        return lambda frame, n: model.detect(frame, threshold=0.1)

    def reference_call(self, adapter: Any, processor: Any, prompts: list[str], exact: bool) -> Any:
        import torch

        def call(pixels: Any, rgb: Any, n: int) -> int:
            text = adapter.tokenizer(prompts, padding="max_length", truncation=True, return_tensors="pt",
                                     max_length=adapter.model.config.text_config.max_position_embeddings)
            out = adapter.model(pixel_values=pixels, input_ids=text["input_ids"],
                                attention_mask=text["attention_mask"])
            processor.post_process_object_detection(out, threshold=0.1,
                                                    target_sizes=torch.tensor([rgb.shape[:2]]))
            return 0

        return call

    def evaluate(self, predictor: Any, samples: list[Any], phrases: tuple[str, ...], *, data: str,
                 bundle: bool, batch_size: int, max_new_tokens: int, progress: bool) -> dict[str, Any]:
        from edgevlp.eval.evaluate import HELDOUT_PHRASES, detect_samples_bundle, detect_scenes_torch
        from edgevlp.eval.metrics import detection_scores

        if bundle:
            records = detect_samples_bundle(predictor, samples, list(phrases), progress=progress)
        else:
            records = detect_scenes_torch(predictor, samples, list(phrases), batch_size=batch_size,
                                          progress=progress)
        result: dict[str, Any] = {**detection_scores(records, list(phrases)), "queries": len(phrases)}
        if data.startswith("shapes:heldout"):
            sub = detection_scores(records, list(phrases), only=HELDOUT_PHRASES)
            result["heldout_pairs"] = {k: sub[k] for k in ("map", "map50", "map75")}
        return result


DETECT = DetectTask()
