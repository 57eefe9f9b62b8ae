"""The closed vocabulary of the shape-scenes dataset: shapes, colours, sizes, splits, held-out pairs.

Everything here is plain data, shared by the generator (:mod:`edgevlp.data.shapes`), the captions
(:mod:`edgevlp.data.captions`) and the COCO export (:mod:`edgevlp.data.coco`).

Example:
    >>> len(SHAPES), len(COLOURS), SIZES["medium"]
    (7, 8, 0.22)
    >>> CATEGORIES[0], CATEGORY_IDS["red circle"]
    ('red circle', 1)
    >>> ("green", "triangle") in HELDOUT_PAIRS
    True
"""

from __future__ import annotations

__all__ = [
    "SHAPES",
    "COLOURS",
    "COLOUR_JITTER",
    "SIZES",
    "SPLITS",
    "HELDOUT_PAIRS",
    "CATEGORIES",
    "CATEGORY_IDS",
    "MIN_VISIBLE_FRACTION",
    "GENERATOR_VERSION",
]

#: Bumped whenever the same (seed, size, split) would give a different scene.
GENERATOR_VERSION = 1

#: Shape names, in the order used for category ids. Squares, crosses and diamonds are rotated by at
#: most 20 degrees, so a square never turns into a diamond (which is an elongated rhombus).
SHAPES: tuple[str, ...] = ("circle", "square", "triangle", "star", "hexagon", "cross", "diamond")

#: Colour name -> nominal RGB. Each object jitters every channel by at most ``COLOUR_JITTER``;
#: the nearest other colour is more than 80 levels away on some channel.
COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (220, 30, 35),
    "green": (30, 165, 60),
    "blue": (35, 80, 230),
    "yellow": (245, 220, 30),
    "orange": (250, 135, 20),
    "purple": (140, 45, 190),
    "white": (245, 245, 245),
    "black": (20, 20, 20),
}
COLOUR_JITTER = 12

#: Size name -> the object's extent as a fraction of the image side. The extent is the geometric
#: mean of the circumscribed and the equal-area circle diameters, so a star and a square of the same
#: size name look about equally big. Each object jitters its extent by at most +-8 %.
SIZES: dict[str, float] = {"small": 0.14, "medium": 0.22, "large": 0.34}

#: Disjoint seed ranges; scene ``i`` of a split uses seed ``SPLITS[split][i]``.
SPLITS: dict[str, range] = {
    "train": range(0, 1_000_000),
    "val": range(1_000_000, 1_010_000),
    "test": range(1_010_000, 1_020_000),
    "heldout": range(2_000_000, 2_010_000),
}

#: Colour-shape pairs never drawn in train/val/test; every ``heldout`` scene has exactly one of them
#: (its other objects are ordinary pairs). Each colour and each shape appears in at most one pair, so
#: the model sees every word in training, just never these combinations.
HELDOUT_PAIRS: frozenset[tuple[str, str]] = frozenset({
    ("green", "triangle"),
    ("purple", "star"),
    ("yellow", "hexagon"),
    ("red", "cross"),
    ("blue", "circle"),
    ("orange", "square"),
})

#: Every colour-shape phrase (held-out pairs included), colour-major; the COCO category id of
#: ``CATEGORIES[i]`` is ``i + 1`` (stable as long as ``SHAPES`` and ``COLOURS`` are unchanged).
CATEGORIES: tuple[str, ...] = tuple(f"{c} {s}" for c in COLOURS for s in SHAPES)
CATEGORY_IDS: dict[str, int] = {name: i + 1 for i, name in enumerate(CATEGORIES)}

#: Every object keeps at least this fraction of its pixels visible (occlusion by later objects).
MIN_VISIBLE_FRACTION = 0.6
