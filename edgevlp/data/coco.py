"""Shape scenes to and from COCO-format folders (boxes and captions in one ``annotations.json``).

Layout written by :func:`to_coco`::

    out_dir/
      images/<split>_<seed>.png|jpg        RGB scenes (JPEG at quality 95)
      annotations.json                     COCO detection format, plus a "captions" list

``annotations.json`` holds the usual ``images`` / ``annotations`` / ``categories`` of COCO
detection (``bbox`` is ``[x, y, w, h]`` in pixels, ``area`` is the box area, ``iscrowd`` 0), so
``pycocotools.coco.COCO(path)`` and ``COCOeval`` read it unchanged. Extra keys, ignored by
pycocotools:

- each annotation: ``phrase`` ("red circle"), ``colour``, ``shape``, ``size`` and
  ``visible_fraction``;
- each category (one per colour-shape phrase, ids from :data:`edgevlp.data.vocab.CATEGORY_IDS`):
  ``colour`` and ``shape``; ``supercategory`` is the shape;
- each image: ``seed`` and ``split``;
- top level: ``"captions": [{"id", "image_id", "caption"}, ...]``, the records of a COCO-captions
  file (where they would sit under ``annotations``), kept apart so the boxes stay a detection file.

Example:
    >>> import tempfile
    >>> from edgevlp.data.shapes import dataset
    >>> path = to_coco(dataset("val", 2, size=64), tempfile.mkdtemp(), image_format="png")
    >>> samples = load_coco(path)
    >>> len(samples), samples[0].boxes.shape[1]
    (2, 4)
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Iterable, NamedTuple

import cv2
import numpy as np

from edgevlp.data.shapes import Scene
from edgevlp.data.vocab import CATEGORIES, CATEGORY_IDS, GENERATOR_VERSION
from edgevlp.errors import InputError

__all__ = ["to_coco", "load_coco", "CocoSample", "ANNOTATIONS_FILE"]

ANNOTATIONS_FILE = "annotations.json"
_FORMATS = {"jpg": [cv2.IMWRITE_JPEG_QUALITY, 95], "png": [cv2.IMWRITE_PNG_COMPRESSION, 1]}


class CocoSample(NamedTuple):
    """One image of a COCO file: its path, captions, boxes (float32 (k, 4) xyxy pixels) and the
    phrase of each box."""

    image_path: Path
    captions: tuple[str, ...]
    boxes: np.ndarray
    phrases: tuple[str, ...]


def to_coco(scenes: Iterable[Scene], out_dir: str | Path, *, image_format: str = "jpg",
            overwrite: bool = False) -> Path:
    """Write ``scenes`` as a COCO folder (see the module docstring); returns the annotations path.

    An existing export in ``out_dir`` is replaced only with ``overwrite=True`` (its images, as listed
    in its annotations file, are deleted first; nothing else is touched).

    Example:
        >>> from edgevlp.data.shapes import dataset
        >>> to_coco(dataset("test", 4, size=128), "/tmp/shapes-test", overwrite=True).name
        'annotations.json'
    """
    if image_format not in _FORMATS:
        raise InputError(f"image_format={image_format!r}: expected one of {', '.join(_FORMATS)}")
    out_dir = Path(out_dir)
    ann_path = out_dir / ANNOTATIONS_FILE
    if ann_path.exists():
        if not overwrite:
            raise InputError(f"{ann_path} already exists; pass overwrite=True to replace that "
                             "export, or choose another folder")
        for img in _read_json(ann_path).get("images", []):
            (out_dir / "images" / Path(img["file_name"]).name).unlink(missing_ok=True)
    (out_dir / "images").mkdir(parents=True, exist_ok=True)

    images, annotations, captions = [], [], []
    for image_id, scene in enumerate(scenes, start=1):
        name = f"{scene.split}_{scene.seed:07d}.{image_format}"
        if not cv2.imwrite(str(out_dir / "images" / name), scene.image[..., ::-1], _FORMATS[image_format]):
            raise InputError(f"could not write {out_dir / 'images' / name}; check the folder is writable")
        h, w = scene.image.shape[:2]
        images.append({"id": image_id, "file_name": name, "width": w, "height": h,
                       "seed": scene.seed, "split": scene.split})
        for obj in scene.objects:
            x0, y0, x1, y1 = obj.box_xyxy
            annotations.append({
                "id": len(annotations) + 1, "image_id": image_id,
                "category_id": CATEGORY_IDS[obj.phrase], "bbox": [x0, y0, x1 - x0, y1 - y0],
                "area": (x1 - x0) * (y1 - y0), "iscrowd": 0, "phrase": obj.phrase,
                "colour": obj.colour, "shape": obj.shape, "size": obj.size_name,
                "visible_fraction": obj.visible_fraction,
            })
        for text in scene.captions:
            captions.append({"id": len(captions) + 1, "image_id": image_id, "caption": text})
    categories = [{"id": CATEGORY_IDS[name], "name": name, "supercategory": name.split()[1],
                   "colour": name.split()[0], "shape": name.split()[1]} for name in CATEGORIES]
    data = {
        "info": {"description": "edgevlp shape scenes", "generator_version": GENERATOR_VERSION,
                 "captions": "COCO-captions records under the top-level 'captions' key"},
        "licenses": [], "images": images, "annotations": annotations, "categories": categories,
        "captions": captions,
    }
    ann_path.write_text(json.dumps(data, indent=1))
    return ann_path


def _read_json(path: Path) -> dict:
    try:
        data = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise InputError(f"cannot read COCO annotations {path}: {err}") from err
    if not isinstance(data, dict) or not isinstance(data.get("images"), list):
        raise InputError(f"{path} is not a COCO annotations file (no 'images' list)")
    return data


def load_coco(path: str | Path, images_dir: str | Path | None = None) -> list[CocoSample]:
    """Read a COCO detection and/or captions file: ours, or a user's.

    ``path`` is the json file or a folder holding ``annotations.json``. Captions come from the
    top-level ``captions`` list (our layout) or from annotations that carry a ``caption`` (a plain
    COCO-captions file); boxes from annotations with a ``bbox``, named by their ``phrase`` or else
    their category's name. Images are looked up in ``images_dir`` (default: ``images/`` next to the
    json if it exists, else the json's folder); a missing image is an error.

    Example:
        >>> [s.phrases for s in load_coco("/tmp/shapes-test")][:1]  # doctest: +SKIP
        [('red circle', 'blue square')]
    """
    path = Path(path)
    if path.is_dir():
        path = path / ANNOTATIONS_FILE
    if not path.is_file():
        raise InputError(f"COCO annotations not found at {path}; pass the json file or its folder")
    data = _read_json(path)
    if images_dir is None:
        images_dir = path.parent / "images" if (path.parent / "images").is_dir() else path.parent
    images_dir = Path(images_dir)
    names = {c["id"]: c.get("name", str(c["id"])) for c in data.get("categories", [])}
    per_image: dict[int, tuple[list, list, list]] = {img["id"]: ([], [], []) for img in data["images"]}
    records = [*data.get("annotations", []), *data.get("captions", [])]
    for rec in records:
        caps, boxes, phrases = per_image.get(rec.get("image_id"), (None, None, None))
        if caps is None:
            raise InputError(f"{path}: record {rec.get('id')} refers to unknown image_id "
                             f"{rec.get('image_id')!r}")
        if "caption" in rec:
            caps.append(str(rec["caption"]))
        if "bbox" in rec:
            x, y, w, h = (float(v) for v in rec["bbox"])
            boxes.append((x, y, x + w, y + h))
            phrases.append(rec.get("phrase") or names.get(rec.get("category_id"), "object"))
    samples = []
    for img in data["images"]:
        image_path = images_dir / img["file_name"]
        if not image_path.is_file():
            raise InputError(f"{path}: image {image_path} is missing; pass images_dir= to say where "
                             "the images are")
        caps, boxes, phrases = per_image[img["id"]]
        samples.append(CocoSample(image_path, tuple(caps),
                                  np.asarray(boxes, np.float32).reshape(-1, 4), tuple(phrases)))
    return samples
