"""Evaluation: BLEU-4/CIDEr for captioners, COCO mAP for detectors, on models and bundles alike.

Example:
    >>> from edgevlp.eval import evaluate
    >>> evaluate("demo-owlvit", "shapes:heldout", n=100)["heldout_pairs"]["map50"]   # doctest: +SKIP
"""

from __future__ import annotations

from edgevlp.eval.evaluate import evaluate
from edgevlp.eval.metrics import DetectionRecord, caption_scores, detection_scores, tokenize

__all__ = ["evaluate", "caption_scores", "detection_scores", "DetectionRecord", "tokenize"]
