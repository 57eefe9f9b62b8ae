"""Caption and detection metrics: BLEU-4 / CIDEr (pycocoevalcap scorers) and COCO mAP (pycocotools).

Captions are tokenised by :func:`tokenize` (lower case, words and single punctuation marks split on
whitespace), **not** by pycocoevalcap's PTBTokenizer, which needs Java. On our captions the two agree
except that the PTB tokenizer drops punctuation; numbers may differ slightly from papers' COCO numbers.

Example:
    >>> refs = {1: ["a red circle"], 2: ["two shapes: a blue star and a green square"]}
    >>> round(caption_scores(refs, {1: "a red circle", 2: "two shapes: a blue star and a green square"})["bleu4"], 3)
    1.0
"""

from __future__ import annotations

import contextlib
import io
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

__all__ = ["tokenize", "caption_scores", "DetectionRecord", "detection_scores", "box_iou", "top_detection_right"]


def tokenize(text: str) -> str:
    """Lower-case words and single punctuation marks, joined by single spaces.

    Example:
        >>> tokenize("Two shapes: a Red circle")
        'two shapes : a red circle'
    """
    return " ".join(re.findall(r"[^\W_]+|[^\w\s]|_", str(text).lower()))


def caption_scores(references: Mapping[int, Sequence[str]], predictions: Mapping[int, str]) -> dict[str, float]:
    """Corpus BLEU-1..4 and CIDEr-D of one prediction per image against its references.

    Keys: ``bleu1`` .. ``bleu4``, ``cider``, ``n_images``. Every image in ``references`` needs a
    prediction (an empty string counts as a wrong caption).
    """
    from pycocoevalcap.bleu.bleu import Bleu
    from pycocoevalcap.cider.cider import Cider

    missing = [k for k in references if k not in predictions]
    if missing:
        from edgevlp.errors import InputError

        raise InputError(f"{len(missing)} images have no prediction (e.g. id {missing[0]})")
    gts = {k: [tokenize(r) for r in refs] for k, refs in references.items()}
    # an empty hypothesis breaks the BLEU scorer's length bookkeeping; score it as one unknown word
    res = {k: [tokenize(predictions[k]) or "<empty>"] for k in references}
    with contextlib.redirect_stdout(io.StringIO()):  # Bleu prints its internals
        bleu, _ = Bleu(4).compute_score(gts, res)
        cider, _ = Cider().compute_score(gts, res)
    out = {f"bleu{i + 1}": float(b) for i, b in enumerate(bleu)}
    out["cider"] = float(cider)
    out["n_images"] = len(references)
    return out


@dataclass(frozen=True)
class DetectionRecord:
    """Ground truth and predictions of one image (boxes are xyxy pixels)."""

    width: int
    height: int
    gt_boxes: np.ndarray          # (k, 4)
    gt_labels: Sequence[str]      # phrase per box
    boxes: np.ndarray             # (m, 4)
    scores: np.ndarray            # (m,)
    labels: Sequence[str]         # phrase per predicted box


def detection_scores(records: Sequence[DetectionRecord], categories: Sequence[str],
                     only: Sequence[str] | None = None) -> dict[str, float]:
    """COCO box mAP@[.5:.95] (``map``), mAP@.5 (``map50``) and mAP@.75 (``map75``) with pycocotools.

    ``categories`` are the phrases that were queried on every image; a predicted label outside them
    is an error. Categories with no ground truth in ``records`` are left out of the mean, as COCOeval
    does (it averages over categories with at least one ground-truth box). ``only`` restricts the mean
    to some categories (e.g. the held-out pairs); detections of the others still exist, they are just
    not averaged.

    Example:
        >>> box = np.array([[10.0, 10.0, 50.0, 50.0]])
        >>> rec = DetectionRecord(100, 100, box, ["red circle"], box, np.array([0.9]), ["red circle"])
        >>> round(detection_scores([rec], ["red circle", "blue square"])["map50"], 6)
        1.0
    """
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    from edgevlp.errors import InputError

    cat_ids = {name: i + 1 for i, name in enumerate(categories)}
    images, anns, dets = [], [], []
    for img_id, rec in enumerate(records, start=1):
        images.append({"id": img_id, "width": int(rec.width), "height": int(rec.height)})
        for box, label in zip(np.asarray(rec.gt_boxes, float).reshape(-1, 4), rec.gt_labels):
            if label not in cat_ids:
                raise InputError(f"ground-truth label {label!r} is not among the queried categories")
            x0, y0, x1, y1 = box
            anns.append({"id": len(anns) + 1, "image_id": img_id, "category_id": cat_ids[label],
                         "bbox": [x0, y0, x1 - x0, y1 - y0], "area": (x1 - x0) * (y1 - y0), "iscrowd": 0})
        for box, score, label in zip(np.asarray(rec.boxes, float).reshape(-1, 4), rec.scores, rec.labels):
            if label not in cat_ids:
                raise InputError(f"predicted label {label!r} is not among the queried categories")
            x0, y0, x1, y1 = box
            dets.append({"image_id": img_id, "category_id": cat_ids[label],
                         "bbox": [x0, y0, x1 - x0, y1 - y0], "score": float(score)})
    used = sorted({a["category_id"] for a in anns})
    if only is not None:
        keep = {cat_ids[name] for name in only if name in cat_ids}
        used = [c for c in used if c in keep]
    if not used:
        raise InputError("no ground-truth boxes in the evaluation data; mAP is undefined")
    gt = COCO()
    gt.dataset = {"images": images, "annotations": anns,
                  "categories": [{"id": i, "name": n} for n, i in cat_ids.items()]}
    with contextlib.redirect_stdout(io.StringIO()):
        gt.createIndex()
        if dets:
            dt = gt.loadRes(dets)
        else:
            dt = COCO()
            dt.dataset = {"images": images, "annotations": [], "categories": gt.dataset["categories"]}
            dt.createIndex()
        ev = COCOeval(gt, dt, "bbox")
        ev.params.catIds = used
        ev.params.maxDets = [1, 10, 100]
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    stats = [max(float(s), 0.0) for s in ev.stats]  # -1 means "no data": report 0
    return {"map": stats[0], "map50": stats[1], "map75": stats[2], "n_images": len(records)}


def box_iou(a: Sequence[float], b: Sequence[float]) -> float:
    """IoU of two ``xyxy`` boxes.

    Example:
        >>> box_iou([0, 0, 10, 10], [5, 0, 15, 10])
        0.3333333333333333
    """
    a, b = np.asarray(a, float), np.asarray(b, float)
    inter = np.prod(np.clip(np.minimum(a[2:], b[2:]) - np.maximum(a[:2], b[:2]), 0, None))
    union = np.prod(a[2:] - a[:2]) + np.prod(b[2:] - b[:2]) - inter
    return float(inter / union) if union > 0 else 0.0


def top_detection_right(detections: Sequence[Mapping[str, object]], objects: Sequence[tuple[Sequence[float], str]],
                        iou: float = 0.5) -> bool:
    """Whether the highest-scoring detection (``{"box": xyxy, "score": s, "label": phrase}``, as the
    camera app logs them) lies on a drawn object (IoU >= ``iou``) and names that object's phrase;
    ``objects`` are ``(xyxy, phrase)`` in the detections' pixel coordinates. No detection: False.

    Example:
        >>> top_detection_right([{"box": [0, 0, 10, 10], "score": 0.9, "label": "red circle"}],
        ...                     [([1, 1, 10, 10], "red circle")])
        True
    """
    if not detections:
        return False
    top = max(detections, key=lambda d: float(d["score"]))  # type: ignore[arg-type]
    return any(phrase == top["label"] and box_iou(top["box"], box) >= iou  # type: ignore[arg-type]
               for box, phrase in objects)
