"""Templated reference captions for shape scenes, their closed vocabulary, and a parser back.

Every caption names every object by colour and shape (optionally size), in plain lower-case words
from :data:`CAPTION_VOCAB` plus ``","`` and ``":"``. Spatial words come from the objects' box centres
and are used only where they are clear (see :func:`relation`), so a caption is never a coin toss.

Example:
    >>> from types import SimpleNamespace as O
    >>> a = O(shape="circle", colour="red", size_name="small", box_xyxy=(10.0, 90.0, 40.0, 120.0))
    >>> b = O(shape="square", colour="blue", size_name="large", box_xyxy=(130.0, 70.0, 200.0, 140.0))
    >>> relation(a, b, 224)
    'to the left of'
    >>> p = parse_caption("two shapes: a small red circle to the left of a large blue square")
    >>> p.count, [(m.size, m.colour, m.shape) for m in p.mentions], p.relation
    (2, [('small', 'red', 'circle'), ('large', 'blue', 'square')], 'to the left of')
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Sequence

import numpy as np

from edgevlp.data.objects import ShapeObject
from edgevlp.data.vocab import COLOURS, SHAPES, SIZES

__all__ = [
    "CAPTION_VOCAB",
    "COUNT_WORDS",
    "RELATIONS",
    "REGIONS",
    "Mention",
    "ParsedCaption",
    "caption_words",
    "make_captions",
    "parse_caption",
    "relation",
    "region",
]

COUNT_WORDS: tuple[str, ...] = ("one", "two", "three", "four")
#: Subject-relation-object phrases, read as "<first mention> <relation> <second mention>".
RELATIONS: tuple[str, ...] = ("to the left of", "to the right of", "above", "below")
#: 3x3 grid cell (row, col) -> where a lone object is, as a prepositional phrase.
REGIONS: dict[tuple[int, int], str] = {
    (0, 0): "in the top left corner", (0, 1): "at the top", (0, 2): "in the top right corner",
    (1, 0): "on the left", (1, 1): "in the center", (1, 2): "on the right",
    (2, 0): "in the bottom left corner", (2, 1): "at the bottom", (2, 2): "in the bottom right corner",
}
ORDERS: tuple[str, ...] = ("from left to right", "from top to bottom")
_GLUE = "a an single shape shapes and with"

#: Every token any caption can contain (words and the punctuation ``,`` and ``:``), sorted; enough to
#: build a WordPiece tokenizer that never produces ``[UNK]`` on reference captions.
CAPTION_VOCAB: tuple[str, ...] = tuple(sorted(
    {",", ":"} | set(COLOURS) | set(SHAPES) | set(SIZES) | set(COUNT_WORDS)
    | {w for phrase in (*RELATIONS, *REGIONS.values(), *ORDERS, _GLUE) for w in phrase.split()}
))

# A relation / ordering / region is only stated when it holds with this margin (fraction of the side).
_RELATION_MARGIN = 0.10
_ORDER_GAP = 0.06
_REGION_MARGIN = 0.04


def _centre(obj: ShapeObject) -> tuple[float, float]:
    x0, y0, x1, y1 = obj.box_xyxy
    return (x0 + x1) / 2.0, (y0 + y1) / 2.0


def relation(a: ShapeObject, b: ShapeObject, size: int) -> str | None:
    """How ``a`` lies relative to ``b`` (one of :data:`RELATIONS`), or None when not clear-cut.

    Box centres are compared; the dominant axis must win by 10 % of the image side, so objects
    lying on a diagonal get no relation.
    """
    (ax, ay), (bx, by) = _centre(a), _centre(b)
    dx, dy = bx - ax, by - ay
    if abs(dx) - abs(dy) >= _RELATION_MARGIN * size:
        return "to the left of" if dx > 0 else "to the right of"
    if abs(dy) - abs(dx) >= _RELATION_MARGIN * size:
        return "above" if dy > 0 else "below"
    return None


def region(obj: ShapeObject, size: int) -> str | None:
    """The 3x3-grid phrase (one of :data:`REGIONS`) for a lone object, or None near a cell border."""
    cell = []
    for v in _centre(obj):
        t = v / size
        if min(abs(t - 1 / 3), abs(t - 2 / 3)) < _REGION_MARGIN:
            return None
        cell.append(0 if t < 1 / 3 else 1 if t < 2 / 3 else 2)
    return REGIONS[(cell[1], cell[0])]


def _ordered(objects: Sequence[ShapeObject], axis: int, size: int) -> list[ShapeObject] | None:
    """Objects sorted along x (0) or y (1) if consecutive centres are clearly apart, else None."""
    ranked = sorted(objects, key=lambda o: _centre(o)[axis])
    centres = [_centre(o)[axis] for o in ranked]
    if all(b - a >= _ORDER_GAP * size for a, b in zip(centres, centres[1:])):
        return ranked
    return None


def _noun(obj: ShapeObject, with_size: bool, article: bool = True) -> str:
    words = ([obj.size_name] if with_size else []) + [obj.colour, obj.shape]
    if article:
        words.insert(0, "an" if words[0][0] in "aeiou" else "a")
    return " ".join(words)


def _join(nouns: Sequence[str]) -> str:
    return nouns[0] if len(nouns) == 1 else ", ".join(nouns[:-1]) + " and " + nouns[-1]


def _candidates(objects: Sequence[ShapeObject], size: int, with_size: bool,
                rng: np.random.Generator) -> list[str]:
    """Every template that applies, rendered once; the most specific (spatial) ones come first."""
    n = len(objects)
    shuffled = [objects[i] for i in rng.permutation(n)]
    nouns = [_noun(o, with_size) for o in shuffled]
    count = f"{COUNT_WORDS[n - 1]} shape{'s' if n > 1 else ''}:"
    out: list[str] = []
    if n == 1:
        where = region(objects[0], size)
        if where:
            out.append(f"{nouns[0]} {where}")
        out += [nouns[0], f"a single {_noun(objects[0], with_size, article=False)}",
                f"{count} {nouns[0]}"]
        return out
    pairs = [(a, b, rel) for a in shuffled for b in shuffled
             if a is not b and (rel := relation(a, b, size)) is not None]
    if n == 2:
        if pairs:
            a, b, rel = pairs[0]
            out += [f"{_noun(a, with_size)} {rel} {_noun(b, with_size)}",
                    f"{count} {_noun(b, with_size)} {RELATIONS[RELATIONS.index(rel) ^ 1]} "
                    f"{_noun(a, with_size)}"]
    else:
        for axis, order in enumerate(ORDERS):
            ranked = _ordered(objects, axis, size)
            if ranked:
                out.append(f"{order}: {_join([_noun(o, with_size) for o in ranked])}")
        if pairs:
            a, b, rel = pairs[0]
            rest = [_noun(o, with_size) for o in shuffled if o is not a and o is not b]
            out.append(f"{_noun(a, with_size)} {rel} {_noun(b, with_size)}, with {_join(rest)}")
    out += [f"{count} {_join(nouns)}", _join(nouns)]
    return out


def make_captions(objects: Sequence[ShapeObject], size: int, rng: np.random.Generator) -> tuple[str, ...]:
    """3 to 5 distinct reference captions for ``objects`` (1-4 of them) in a ``size``-pixel image.

    The first caption names sizes and, where one is clear, a spatial relation; the others are drawn
    from the remaining templates, with or without sizes. Deterministic given ``rng``'s state.
    """
    with_sizes = _candidates(objects, size, True, rng)
    without = _candidates(objects, size, False, rng)
    first, rest = with_sizes[0], with_sizes[1:] + without
    rest = list(dict.fromkeys(c for c in rest if c != first))
    k = min(int(rng.integers(3, 6)) - 1, len(rest))
    picked = sorted(rng.choice(len(rest), size=k, replace=False).tolist())
    return (first, *(rest[i] for i in picked))


def caption_words(text: str) -> list[str]:
    """Split a caption into words and single punctuation marks (how :data:`CAPTION_VOCAB` counts)."""
    return re.findall(r"[^\W_]+|[^\w\s]|_", text.lower())


@dataclass(frozen=True)
class Mention:
    """One object named in a caption; ``size`` is None when the caption leaves it out."""

    size: str | None
    colour: str
    shape: str


@dataclass(frozen=True)
class ParsedCaption:
    """What a caption claims: the objects, the stated count, and spatial words (None when absent).

    ``relation`` links ``mentions[0]`` (subject) to ``mentions[1]``; ``order`` is one of
    ``"from left to right"`` / ``"from top to bottom"`` and applies to ``mentions`` in order;
    ``region`` places a lone object (a value of :data:`REGIONS`).
    """

    mentions: tuple[Mention, ...]
    count: int | None
    relation: str | None
    order: str | None
    region: str | None


def parse_caption(text: str) -> ParsedCaption:
    """Read back what a caption (ours, or a model's) says; unknown words are skipped, never guessed.

    Example:
        >>> parse_caption("from left to right: a red star and a white cross").order
        'from left to right'
    """
    words = caption_words(text)
    mentions, positions = [], []
    for i in range(len(words) - 1):
        if words[i] in COLOURS and words[i + 1] in SHAPES:
            size = words[i - 1] if i > 0 and words[i - 1] in SIZES else None
            mentions.append(Mention(size, words[i], words[i + 1]))
            positions.append(i + 1)
    count = None
    for i in range(len(words) - 1):
        if words[i] in COUNT_WORDS and words[i + 1] in ("shape", "shapes"):
            count = COUNT_WORDS.index(words[i]) + 1
            break
    rel = None
    if len(positions) >= 2:
        between = " ".join(words[positions[0] + 1:positions[1]])
        rel = next((r for r in RELATIONS if re.search(rf"(^| ){r} (a|an)( |$)", between)), None)
    joined = " ".join(words)
    order = next((o for o in ORDERS if joined.startswith(o + " :")), None)
    where = next((r for r in REGIONS.values() if joined.endswith(" " + r)), None)
    return ParsedCaption(tuple(mentions), count, rel, order, where)
