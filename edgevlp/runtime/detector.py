"""Open-vocabulary detection from a bundle: image graph per frame, text graph once per prompt set."""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence

import numpy as np

from edgevlp.bundle import Manifest
from edgevlp.errors import BundleError, InputError
from edgevlp.runtime.backends import GraphSession
from edgevlp.runtime.results import Detections
from edgevlp.runtime.tokenizer import BundleTokenizer
from edgevlp.runtime.base import BundleModel, check_frame

__all__ = ["Detector", "class_logits", "boxes_to_xyxy", "CLASS_HEADS", "BOX_FORMATS", "nms"]


def class_logits(heads: Mapping[str, np.ndarray], text_embeds: np.ndarray) -> np.ndarray:
    """OWL-ViT's class head, exactly: ``(class_embeds . q/(|q|+1e-6) + shift) * scale`` -> (B, P, Q)."""
    q = text_embeds / (np.linalg.norm(text_embeds, axis=-1, keepdims=True) + 1e-6)
    return (heads["class_embeds"] @ q.T + heads["logit_shift"]) * heads["logit_scale"]


#: The manifest's ``detection.class_head`` -> image-graph heads + text embeddings -> logits (B, P, Q).
CLASS_HEADS: dict[str, Callable[[Mapping[str, np.ndarray], np.ndarray], np.ndarray]] = {
    "normalized_dot_shift_scale": class_logits,
}


def _from_cxcywh(boxes: np.ndarray, w: int, h: int) -> np.ndarray:
    cx, cy, bw, bh = boxes.T
    return np.stack([(cx - bw / 2) * w, (cy - bh / 2) * h, (cx + bw / 2) * w, (cy + bh / 2) * h], axis=1)


def _from_xyxy(boxes: np.ndarray, w: int, h: int) -> np.ndarray:
    x1, y1, x2, y2 = boxes.T
    return np.stack([x1 * w, y1 * h, x2 * w, y2 * h], axis=1)


#: The manifest's ``detection.box_format`` (how ``pred_boxes`` are laid out, relative to the model
#: input) -> a decoder to xyxy in model-input pixels.
BOX_FORMATS: dict[str, Callable[[np.ndarray, int, int], np.ndarray]] = {
    "cxcywh_normalized": _from_cxcywh,
    "xyxy_normalized": _from_xyxy,
}


def boxes_to_xyxy(boxes: np.ndarray, box_format: str, input_hw: tuple[int, int]) -> np.ndarray:
    """``(P, 4)`` predicted boxes in ``box_format`` -> xyxy in pixels of a model input ``input_hw``.

    Example:
        >>> boxes_to_xyxy(np.array([[0.5, 0.5, 0.5, 1.0]]), "cxcywh_normalized", (10, 20)).tolist()
        [[5.0, 0.0, 15.0, 10.0]]
    """
    if box_format not in BOX_FORMATS:
        raise InputError(f"unknown box format {box_format!r}; known: {', '.join(BOX_FORMATS)}")
    h, w = input_hw
    return BOX_FORMATS[box_format](boxes, w, h)


def _setting(settings: Mapping[str, object], key: str, known: Mapping[str, object]) -> str:
    value = settings.get(key)
    if value not in known:
        raise BundleError(f"this bundle's manifest has detection.{key} = {value!r}, which this runtime cannot "
                          f"post-process (known: {', '.join(known)}); re-export the bundle with "
                          "`edgevlp export`, or use an edgevlp that knows it")
    return str(value)


def nms(boxes: np.ndarray, scores: np.ndarray, iou: float) -> np.ndarray:
    """Indices kept by greedy non-maximum suppression, highest score first."""
    order = np.argsort(-scores, kind="stable")
    x1, y1, x2, y2 = boxes.T
    area = np.clip(x2 - x1, 0, None) * np.clip(y2 - y1, 0, None)
    keep = []
    while order.size:
        i = order[0]
        keep.append(i)
        rest = order[1:]
        w = np.clip(np.minimum(x2[i], x2[rest]) - np.maximum(x1[i], x1[rest]), 0, None)
        h = np.clip(np.minimum(y2[i], y2[rest]) - np.maximum(y1[i], y1[rest]), 0, None)
        inter = w * h
        overlap = inter / np.maximum(area[i] + area[rest] - inter, 1e-9)
        order = rest[overlap <= iou]
    return np.asarray(keep, dtype=np.int64)


class Detector(BundleModel):
    """OWL-ViT v1/v2 detection with prompts that can change at any time.

    Example:
        >>> from edgevlp.runtime import load
        >>> detector = load("bundles/owl-cpu")                  # doctest: +SKIP
        >>> detector.set_prompts(["red circle", "person"])       # doctest: +SKIP
        >>> detector.detect(frame_bgr, threshold=0.2).boxes_xyxy # doctest: +SKIP
    """

    def __init__(self, manifest: Manifest, sessions: Mapping[str, GraphSession],
                 tokenizer: BundleTokenizer) -> None:
        super().__init__(manifest, tokenizer)
        self.image = sessions["image_encoder"]
        self.text = sessions["text_encoder"]
        self.settings = dict(manifest.detection)
        self.class_head = _setting(self.settings, "class_head", CLASS_HEADS)
        self.box_format = _setting(self.settings, "box_format", BOX_FORMATS)
        self.prompts: list[str] = []
        self._text_embeds: np.ndarray | None = None

    def embed_prompts(self, prompts: Sequence[str]) -> np.ndarray:
        """Normalised text embeddings (Q, D) for ``prompts`` (validated)."""
        clean = _validate_prompts(prompts)
        ids, mask = self.tokenizer.encode_prompts(clean, length=int(self.settings["max_text_length"]),
                                                  pad_id=int(self.settings["pad_token_id"]))
        return self.text.run({"input_ids": ids, "attention_mask": mask})["text_embeds"]

    def set_prompts(self, prompts: Sequence[str]) -> None:
        """Encode the prompts once; every later :meth:`detect` uses them."""
        embeds = self.embed_prompts(prompts)
        self.prompts = _validate_prompts(prompts)
        self._text_embeds = embeds

    def heads(self, pixel_values: np.ndarray) -> dict[str, np.ndarray]:
        return self.image.run({"pixel_values": pixel_values})

    def logits(self, pixel_values: np.ndarray, text_embeds: np.ndarray | None = None) -> np.ndarray:
        """Class logits (B, patches, Q) for the current (or given) prompt embeddings."""
        q = self._require_prompts() if text_embeds is None else text_embeds
        return self.class_logits(self.heads(pixel_values), q)

    def class_logits(self, heads: Mapping[str, np.ndarray], text_embeds: np.ndarray) -> np.ndarray:
        """The bundle's class head (manifest ``detection.class_head``) -> logits (B, patches, Q)."""
        return CLASS_HEADS[self.class_head](heads, text_embeds)

    def input_boxes(self, pred_boxes: np.ndarray) -> np.ndarray:
        """One image's ``pred_boxes`` (P, 4), in the manifest's ``detection.box_format``, as xyxy in
        model-input pixels."""
        return BOX_FORMATS[self.box_format](pred_boxes, int(self.spec.input_shape[3]), int(self.spec.input_shape[2]))

    def detect(self, frame: np.ndarray, threshold: float = 0.1, nms_iou: float = 0.3) -> Detections:
        """Detect the current prompts in a BGR uint8 frame; boxes in frame pixels."""
        check_frame(frame, "detect()")
        from edgevlp.runtime.preprocess import preprocess

        q = self._require_prompts()
        t0 = time.perf_counter()
        pixels, transform = preprocess(frame, self.spec)
        t1 = time.perf_counter()
        heads = self.heads(pixels)
        t2 = time.perf_counter()
        result = self.postprocess(heads, q, transform.to_frame, threshold=threshold, nms_iou=nms_iou)
        result.timings.update(preprocess=(t1 - t0) * 1e3, encode=(t2 - t1) * 1e3,
                              postprocess=(time.perf_counter() - t2) * 1e3)
        return result

    def postprocess(self, heads: Mapping[str, np.ndarray], text_embeds: np.ndarray,
                    to_frame: Callable[[np.ndarray], np.ndarray], *, threshold: float = 0.1,
                    nms_iou: float = 0.3) -> Detections:
        """Heads of one image -> scored, thresholded, per-class NMS'd boxes mapped by ``to_frame``
        (model-input pixels -> frame pixels). ``nms_iou=1`` keeps every box (HF's behaviour)."""
        if not 0.0 <= threshold <= 1.0:
            raise InputError(f"threshold must be in [0, 1], got {threshold}")
        if not 0.0 < nms_iou <= 1.0:
            raise InputError(f"nms_iou must be in (0, 1], got {nms_iou}")
        logits = self.class_logits(heads, text_embeds)[0]
        probs = 1.0 / (1.0 + np.exp(-logits))
        scores, labels = probs.max(axis=-1), probs.argmax(axis=-1)
        boxes = to_frame(self.input_boxes(heads["pred_boxes"][0]))
        # Boxes entirely in the padding (letterbox / OWLv2's square) clip to nothing in the frame.
        visible = (boxes[:, 2] > boxes[:, 0]) & (boxes[:, 3] > boxes[:, 1])
        keep = np.nonzero((scores >= threshold) & visible)[0]
        kept: list[np.ndarray] = []
        for label in np.unique(labels[keep]):
            idx = keep[labels[keep] == label]
            kept.append(idx[nms(boxes[idx], scores[idx], nms_iou)] if nms_iou < 1.0 else idx)
        sel = np.concatenate(kept) if kept else np.zeros(0, np.int64)
        sel = sel[np.argsort(-scores[sel], kind="stable")]
        return Detections(boxes_xyxy=boxes[sel].astype(np.float32), scores=scores[sel].astype(np.float32),
                          labels=labels[sel].astype(np.int64), label_names=list(self.prompts),
                          timings={})

    def _require_prompts(self) -> np.ndarray:
        if self._text_embeds is None:
            raise InputError("no prompts set: call set_prompts([...]) before detect()")
        return self._text_embeds


def _validate_prompts(prompts: Sequence[str]) -> list[str]:
    if isinstance(prompts, (str, bytes)) or not isinstance(prompts, Sequence):
        raise InputError(f"prompts must be a list of strings, got {type(prompts).__name__}")
    if not prompts:
        raise InputError("the prompt list is empty: give at least one prompt, e.g. ['person']")
    clean = []
    for p in prompts:
        if isinstance(p, bytes):
            try:
                p = p.decode("utf-8")
            except UnicodeDecodeError:
                raise InputError(f"prompt {p!r} is not valid UTF-8 text") from None
        if not isinstance(p, str):
            raise InputError(f"each prompt must be a string, got {type(p).__name__}")
        if not p.strip():
            raise InputError("prompts must not be empty or blank")
        clean.append(p.strip())
    return clean
