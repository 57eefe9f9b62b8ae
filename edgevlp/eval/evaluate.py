"""Score a captioner or detector, as a PyTorch model or as an exported bundle, on one dataset.

The same scenes, prompts, post-processing and metrics are used for both paths, so the difference
between a model and its bundle is the export's (and compression's) effect on accuracy.

- captioners: greedy captions -> BLEU-4 and CIDEr-D (pycocoevalcap scorers, simple lower-case
  tokenisation: see :mod:`edgevlp.eval.metrics`);
- detectors: every phrase of the split is queried on every image (so false positives from images
  without that object count); per image the 100 best (box, phrase) pairs are kept -> COCO mAP@[.5:.95]
  and mAP@.5 with pycocotools. On ``shapes:heldout`` the same metrics are also given for the six
  held-out colour-shape pairs alone (``heldout_pairs``).

Shape scenes are generated at the model's input size (no resize); COCO images are resized by the
model's own preprocessing.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable, Iterable, Sequence

import numpy as np

from edgevlp.data import dataset, load_coco, parse_data_spec
from edgevlp.data.shapes import MIN_SCENE_SIZE
from edgevlp.data.vocab import CATEGORIES, HELDOUT_PAIRS

if TYPE_CHECKING:
    from edgevlp.models.base import ModelAdapter
from edgevlp.errors import InputError
from edgevlp.eval.metrics import DetectionRecord
from edgevlp.tasks import get_task

__all__ = ["evaluate", "Sample", "load_samples", "split_phrases", "topk_detections", "DEFAULT_N",
           "detect_scenes_torch", "caption_samples_torch", "mention_recall", "answer_questions"]

#: Images scored when neither the data spec nor ``n`` says how many.
DEFAULT_N = 500
TOP_K = 100
HELDOUT_PHRASES: tuple[str, ...] = tuple(f"{c} {s}" for c, s in sorted(HELDOUT_PAIRS))


@dataclass(frozen=True)
class Sample:
    """One evaluation image (RGB uint8) with its reference captions and phrase-labelled boxes."""

    image: np.ndarray
    captions: tuple[str, ...]
    boxes: np.ndarray
    phrases: tuple[str, ...]


def split_phrases(split: str) -> tuple[str, ...]:
    """The phrases that can occur in a shapes split: held-out pairs only in ``heldout``."""
    if split == "heldout":
        return CATEGORIES
    return tuple(p for p in CATEGORIES if p not in HELDOUT_PHRASES)


def load_samples(data: str, n: int | None, size: int) -> tuple[list[Sample], tuple[str, ...]]:
    """Samples of a ``--data`` spec and the phrases to query on every image."""
    spec = parse_data_spec(data)
    if n is not None and (not isinstance(n, int) or n < 1):
        raise InputError(f"n={n!r}: expected a positive number of images")
    if spec.kind == "coco":
        import cv2

        coco = load_coco(spec.path)
        coco = coco[:n] if n else coco
        samples = []
        for s in coco:
            bgr = cv2.imread(str(s.image_path), cv2.IMREAD_COLOR)
            if bgr is None:
                raise InputError(f"cannot read image {s.image_path}")
            samples.append(Sample(bgr[..., ::-1].copy(), s.captions, s.boxes, s.phrases))
        phrases = tuple(sorted({p for s in samples for p in s.phrases}))
        return samples, phrases
    count = n or spec.n or DEFAULT_N
    # Scenes are drawn at the model's input size, but never below the generator's minimum (tiny test
    # models take 32 px: their preprocessing resizes the 64 px scenes).
    scenes = dataset(spec.split, count, size=max(size, MIN_SCENE_SIZE), start=spec.start)
    samples = [Sample(s.image, s.captions, np.asarray([o.box_xyxy for o in s.objects], np.float32).reshape(-1, 4),
                      s.phrases) for s in scenes]
    return samples, split_phrases(spec.split)


def topk_detections(logits: np.ndarray, boxes: np.ndarray, to_frame: Callable[[np.ndarray], np.ndarray],
                    input_hw: tuple[int, int], k: int = TOP_K, box_format: str = "cxcywh_normalized"
                    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The ``k`` best (patch, query) pairs of one image: boxes (frame xyxy), scores, query indices
    (``boxes``: the predicted boxes in ``box_format``, see :data:`edgevlp.runtime.detector.BOX_FORMATS`)."""
    from edgevlp.runtime.detector import boxes_to_xyxy

    probs = 1.0 / (1.0 + np.exp(-logits.astype(np.float64)))  # (P, Q)
    flat = probs.ravel()
    k = min(k, flat.size)
    top = np.argpartition(-flat, k - 1)[:k]
    top = top[np.argsort(-flat[top], kind="stable")]
    patch, query = np.unravel_index(top, probs.shape)
    xyxy = boxes_to_xyxy(boxes[patch].astype(np.float64), box_format, input_hw)
    return to_frame(xyxy), flat[top], query


def _scale_to(frame_hw: tuple[int, int], input_hw: tuple[int, int], pad_square: bool) -> Callable[[np.ndarray], np.ndarray]:
    fh, fw = frame_hw
    ih, iw = input_hw
    sx, sy = (max(fh, fw) / iw, max(fh, fw) / ih) if pad_square else (fw / iw, fh / ih)

    def to_frame(b: np.ndarray) -> np.ndarray:
        out = b * np.array([sx, sy, sx, sy])
        out[:, 0::2] = out[:, 0::2].clip(0, fw)
        out[:, 1::2] = out[:, 1::2].clip(0, fh)
        return out

    return to_frame


def _bar(total: int, desc: str, progress: bool) -> Any:
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=desc, disable=not progress, unit="img", dynamic_ncols=True, mininterval=1.0)


# ---------------------------------------------------------------------------------------- torch
def _image_processor(adapter: Any) -> Any:
    import transformers

    cfg = dict(adapter.processor_config)
    cls = getattr(transformers, str(cfg.get("image_processor_type", "")), None)
    if cls is None:
        raise InputError(f"unknown image processor {cfg.get('image_processor_type')!r} in {adapter.source}")
    return cls.from_dict(cfg)


def _batches(items: Sequence[Any], size: int) -> Iterable[Sequence[Any]]:
    for i in range(0, len(items), size):
        yield items[i:i + size]


def caption_samples_torch(adapter: Any, samples: Sequence[Sample], *, batch_size: int = 32,
                          max_new_tokens: int = 40, progress: bool = True) -> list[str]:
    """Greedy captions of ``samples`` from a PyTorch captioner adapter (HF image processor)."""
    import torch

    proc = _image_processor(adapter)
    out: list[str] = []
    with _bar(len(samples), "caption", progress) as bar, torch.no_grad():
        for chunk in _batches(samples, batch_size):
            px = proc([s.image for s in chunk], return_tensors="pt")["pixel_values"]
            out += adapter.caption(px.to(next(adapter.model.parameters()).dtype), max_new_tokens=max_new_tokens)
            bar.update(len(chunk))
    return out


def detect_scenes_torch(adapter: Any, samples: Sequence[Any], phrases: list[str], *, batch_size: int = 32,
                        progress: bool = True) -> list[DetectionRecord]:
    """Detection records of ``samples`` (``Sample`` or ``Scene``) from a PyTorch detector adapter."""
    import torch

    proc = _image_processor(adapter)
    spec = adapter.preprocess_spec()
    input_hw = spec.input_shape[2:]
    enc = adapter.encode_prompts(phrases)
    records = []
    dtype = next(adapter.model.parameters()).dtype
    with _bar(len(samples), "detect", progress) as bar, torch.no_grad():
        q = adapter.text_embeddings(enc["input_ids"], enc["attention_mask"])
        for chunk in _batches(list(samples), batch_size):
            px = proc([s.image for s in chunk], return_tensors="pt")["pixel_values"].to(dtype)
            heads = adapter.image_heads(px)
            logits = (heads["class_embeds"] @ q.T.to(dtype) + heads["logit_shift"]) * heads["logit_scale"]
            for i, s in enumerate(chunk):
                gt_boxes, gt_phrases = _truth(s)
                to_frame = _scale_to(s.image.shape[:2], input_hw, spec.resize_mode == "pad_square")
                boxes, scores, idx = topk_detections(logits[i].float().numpy(), heads["pred_boxes"][i].float().numpy(),
                                                     to_frame, input_hw)
                records.append(DetectionRecord(s.image.shape[1], s.image.shape[0], gt_boxes, gt_phrases,
                                               boxes, scores, [phrases[j] for j in idx]))
            bar.update(len(chunk))
    return records


def _truth(s: Any) -> tuple[np.ndarray, tuple[str, ...]]:
    if hasattr(s, "objects"):  # a Scene
        return np.asarray([o.box_xyxy for o in s.objects], np.float32).reshape(-1, 4), s.phrases
    return s.boxes, s.phrases


# --------------------------------------------------------------------------------------- bundle
def caption_samples_bundle(captioner: Any, samples: Sequence[Sample], *, max_new_tokens: int = 40,
                           progress: bool = True) -> list[str]:
    out = []
    with _bar(len(samples), "caption", progress) as bar:
        for s in samples:
            out.append(captioner.caption(np.ascontiguousarray(s.image[..., ::-1]), max_new_tokens=max_new_tokens).text)
            bar.update(1)
    return out


def detect_samples_bundle(detector: Any, samples: Sequence[Sample], phrases: list[str], *,
                          progress: bool = True) -> list[DetectionRecord]:
    from edgevlp.runtime.preprocess import preprocess

    q = detector.embed_prompts(phrases)
    input_hw = tuple(detector.spec.input_shape[2:])
    records = []
    with _bar(len(samples), "detect", progress) as bar:
        for s in samples:
            pixels, transform = preprocess(np.ascontiguousarray(s.image[..., ::-1]), detector.spec)
            heads = detector.heads(pixels)
            logits = detector.class_logits(heads, q)[0]
            boxes, scores, idx = topk_detections(logits, heads["pred_boxes"][0], transform.to_frame, input_hw,
                                                 box_format=detector.box_format)
            records.append(DetectionRecord(s.image.shape[1], s.image.shape[0], s.boxes, s.phrases,
                                           boxes, scores, [phrases[j] for j in idx]))
            bar.update(1)
    return records


def answer_questions(predictor: Any, samples: Sequence[Sample], questions: Sequence[tuple[int, str]], *,
                     bundle: bool, max_new_tokens: int = 40, progress: bool = True) -> list[str]:
    """Greedy answers to ``(sample index, question)`` pairs: ``Assistant.ask`` on a bundle, transformers
    ``generate`` (through the model's own processor) on an adapter."""
    out = []
    with _bar(len(questions), "answer", progress) as bar:
        for i, question in questions:
            rgb = samples[i].image
            if bundle:
                out.append(predictor.ask(np.ascontiguousarray(rgb[..., ::-1]), question,
                                         max_new_tokens=max_new_tokens).text)
            else:
                ids = predictor.answer_ids(rgb, question, max_new_tokens=max_new_tokens)
                out.append(predictor.tokenizer.decode(ids[0], skip_special_tokens=True))
            bar.update(1)
    return out


def mention_recall(samples: Sequence[Sample], texts: Sequence[str]) -> dict[str, float]:
    """What the captions say about each object, read back with :func:`edgevlp.data.parse_caption`;
    empty when the data have no phrase labels. A diagnostic beside BLEU/CIDEr, which reward the
    template words as much as the content.

    - ``colour_recall`` / ``shape_recall`` / ``pair_recall``: share of objects whose colour, shape and
      colour-shape pair the caption names anywhere;
    - ``colour_accuracy`` / ``shape_accuracy`` / ``pair_accuracy``: the stricter check, per object: the
      caption's mentions are matched one to one to the scene's objects (most agreeing words first,
      Hungarian), and an object counts if *its* mention has the right colour / shape / both (an object
      left without a mention is wrong), so a caption listing every shape does not score;
    - ``extra_mentions``: share of mentions matched to no object (more objects said than drawn).

    Example:
        >>> from edgevlp.data import dataset
        >>> scene = next(iter(dataset("val", 1)))
        >>> mention_recall([Sample(scene.image, scene.captions, np.zeros((0, 4)), scene.phrases)],
        ...                [scene.captions[0]])["shape_accuracy"]
        1.0
    """
    from scipy.optimize import linear_sum_assignment

    from edgevlp.data import parse_caption

    keys = ("colour_recall", "shape_recall", "pair_recall", "colour_accuracy", "shape_accuracy", "pair_accuracy")
    counts = dict.fromkeys(keys, 0)
    total = said_total = extra = 0
    for s, text in zip(samples, texts):
        mentions = parse_caption(text).mentions
        said_pairs = {(m.colour, m.shape) for m in mentions}
        objects = [tuple(p.split()) for p in s.phrases if len(p.split()) == 2]
        for c, sh in objects:
            counts["colour_recall"] += any(m.colour == c for m in mentions)
            counts["shape_recall"] += any(m.shape == sh for m in mentions)
            counts["pair_recall"] += (c, sh) in said_pairs
        total += len(objects)
        said_total += len(mentions)
        if not objects or not mentions:
            extra += len(mentions)
            continue
        agree = np.array([[(m.colour == c) + (m.shape == sh) for m in mentions] for c, sh in objects])
        rows, cols = linear_sum_assignment(-agree)
        extra += len(mentions) - len(cols)
        for r, k in zip(rows, cols):
            c, sh = objects[r]
            counts["colour_accuracy"] += mentions[k].colour == c
            counts["shape_accuracy"] += mentions[k].shape == sh
            counts["pair_accuracy"] += (mentions[k].colour, mentions[k].shape) == (c, sh)
    if not total:
        return {}
    return {**{k: v / total for k, v in counts.items()}, "extra_mentions": extra / max(said_total, 1)}


# ------------------------------------------------------------------------------------- evaluate
def evaluate(model_or_bundle: str | os.PathLike[str] | ModelAdapter, data: str = "shapes:val",
             n: int | None = None, *,
             batch_size: int = 32, max_new_tokens: int = 40, progress: bool = True,
             backend: str | None = None) -> dict[str, Any]:
    """Metrics of a model (dir, zoo name, hub id, or a loaded adapter) or bundle on ``data``.

    Returns a JSON-ready dict: ``task``, ``model``, ``data``, ``n_images``, ``seconds`` and
    ``bleu4``/``cider`` (+ ``bleu1``..``bleu3``) for captioners or ``map``/``map50``/``map75`` for
    detectors (+ ``heldout_pairs`` on ``shapes:heldout``).

    Example:
        >>> evaluate("demo-blip", "shapes:val", n=50)["cider"]      # doctest: +SKIP
        2.1
    """
    from edgevlp.bundle import is_bundle

    t0 = time.time()
    if hasattr(model_or_bundle, "preprocess_spec"):  # an adapter already loaded (e.g. during compression)
        predictor, target, kind = model_or_bundle, model_or_bundle.source, "pytorch"
        task = predictor.task
        size = int(predictor.preprocess_spec().input_shape[2])
    elif is_bundle(os.fspath(model_or_bundle)):
        target = os.fspath(model_or_bundle)
        from edgevlp.runtime import load

        predictor = load(target, backend=backend)
        task = predictor.manifest.task
        size = int(predictor.spec.input_shape[2])
        kind = "bundle"
    else:
        from edgevlp.models import inspect_model, load_model

        target = os.fspath(model_or_bundle)
        inspect_model(target)
        predictor = load_model(target)
        task = predictor.task
        size = int(predictor.preprocess_spec().input_shape[2])
        kind = "pytorch"
    samples, phrases = load_samples(data, n, size)
    if not samples:
        raise InputError(f"{data} holds no images")
    result: dict[str, Any] = {"task": task, "model": target, "kind": kind, "data": data}
    result.update(get_task(task).evaluate(predictor, samples, phrases, data=data, bundle=kind == "bundle",
                                          batch_size=batch_size, max_new_tokens=max_new_tokens,
                                          progress=progress))
    result["n_images"] = len(samples)
    result["seconds"] = round(time.time() - t0, 1)
    return result
