"""Data: the procedural shape-scenes dataset (train/eval/calibration) and COCO export/import.

Torch-free: numpy and OpenCV only. See :mod:`edgevlp.data.shapes` for the generator,
:mod:`edgevlp.data.captions` for the caption templates and :mod:`edgevlp.data.coco` for files.

Example:
    >>> from edgevlp.data import dataset, parse_data_spec
    >>> spec = parse_data_spec("shapes:val:2")
    >>> [s.seed for s in dataset(spec.split, spec.n, size=64)]
    [1000000, 1000001]
"""

from __future__ import annotations

from edgevlp.data.captions import CAPTION_VOCAB, caption_words, parse_caption
from edgevlp.data.coco import load_coco, to_coco
from edgevlp.data.shapes import (DataSpec, Scene, ShapeObject, dataset, generate_scene,
                                 parse_data_spec)
from edgevlp.data.vocab import (CATEGORIES, COLOURS, HELDOUT_PAIRS, SHAPES, SIZES, SPLITS)

__all__ = [
    "CAPTION_VOCAB", "CATEGORIES", "COLOURS", "HELDOUT_PAIRS", "SHAPES", "SIZES", "SPLITS",
    "DataSpec", "Scene", "ShapeObject", "caption_words", "dataset", "generate_scene", "load_coco",
    "parse_caption", "parse_data_spec", "to_coco",
]
