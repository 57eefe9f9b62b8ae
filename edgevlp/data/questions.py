"""Questions and answers about a shape scene, generated from its objects (the VQA data of ``demo-smolvlm``
and of ``edgevlp eval`` for ``vqa`` models).

Kinds (:data:`QUESTION_KINDS`), each asked only where the scene gives one unambiguous answer:

- ``colour``: "what colour is the star?" when exactly one star is drawn -> ``red``;
- ``shape``: "what shape is the red object?" when exactly one red object is drawn -> ``star``;
- ``count``: "how many stars are there?" / "how many shapes are there?" -> ``zero`` .. ``four``;
- ``exists``: "is there a red star?" -> ``yes`` / ``no`` (half of the negatives share the colour or the
  shape of a drawn object, so the answer needs the binding, not one word);
- ``where``: "where is the red star?" for a unique object away from the 3x3 grid's borders -> ``top
  left`` .. ``bottom right`` / ``center``.

Answers are one or two words from :data:`ANSWER_WORDS`; :func:`normalize_answer` is the exact-match
normalisation of the metric (lower case, punctuation and articles dropped, digits as words).

Example:
    >>> from edgevlp.data import generate_scene
    >>> scene = generate_scene(1_000_000, 128, split="val")
    >>> qa = scene_questions(scene.phrases, [o.box_xyxy for o in scene.objects], 128, seed=0)
    >>> {q.kind for q in qa} <= set(QUESTION_KINDS)
    True
    >>> normalize_answer("  The Top-Left! "), normalize_answer("3")
    ('top left', 'three')
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from edgevlp.data.captions import REGIONS, region
from edgevlp.data.objects import ShapeObject
from edgevlp.data.vocab import COLOURS, HELDOUT_PAIRS, SHAPES
from edgevlp.errors import InputError

__all__ = ["QA", "QUESTION_KINDS", "ANSWER_WORDS", "NUMBER_WORDS", "WHERE_ANSWERS", "scene_questions",
           "eval_questions", "normalize_answer", "question_texts"]

QUESTION_KINDS: tuple[str, ...] = ("colour", "shape", "count", "exists", "where")
NUMBER_WORDS: tuple[str, ...] = ("zero", "one", "two", "three", "four", "five")
#: region phrase of the captions -> the short answer
WHERE_ANSWERS: dict[str, str] = {phrase: re.sub(r"^(in|at|on) the | corner$", "", phrase).replace(" corner", "")
                                 for phrase in REGIONS.values()}
ANSWER_WORDS: tuple[str, ...] = tuple(dict.fromkeys(
    [*COLOURS, *SHAPES, *NUMBER_WORDS, "yes", "no", *(w for a in WHERE_ANSWERS.values() for w in a.split())]))
_ARTICLES = {"a", "an", "the"}


@dataclass(frozen=True)
class QA:
    """One question about a scene, its answer and its kind (one of :data:`QUESTION_KINDS`)."""

    question: str
    answer: str
    kind: str


def normalize_answer(text: str) -> str:
    """Lower case, punctuation to spaces, articles dropped, digits 0-5 as words, whitespace collapsed."""
    words = re.sub(r"[^a-z0-9 ]+", " ", str(text).lower()).split()
    words = [NUMBER_WORDS[int(w)] if w.isdigit() and int(w) < len(NUMBER_WORDS) else w for w in words]
    return " ".join(w for w in words if w not in _ARTICLES)


def _a(word: str) -> str:
    return ("an " if word[0] in "aeiou" else "a ") + word


def _plural(shape: str) -> str:
    return shape + ("es" if shape.endswith(("s", "x")) else "s")


def _objects(phrases: Sequence[str], boxes: Sequence[Sequence[float]]) -> list[ShapeObject]:
    out = []
    for phrase, box in zip(phrases, boxes):
        words = str(phrase).split()
        if len(words) != 2 or words[0] not in COLOURS or words[1] not in SHAPES:
            raise InputError(f"object {phrase!r} is not a shape-scene 'colour shape' phrase; questions are "
                             "generated for shapes: data (e.g. --data shapes:val)")
        out.append(ShapeObject(words[1], words[0], "", tuple(float(v) for v in box), 1.0))
    return out


def scene_questions(phrases: Sequence[str], boxes: Sequence[Sequence[float]], size: int, *,
                    seed: int | Sequence[int], heldout: bool = False) -> list[QA]:
    """Every kind of question the scene answers unambiguously, one or two per kind (drawn with ``seed``),
    in :data:`QUESTION_KINDS` order. ``phrases``/``boxes``: the objects ("red star", xyxy pixels) of a
    ``size``-pixel scene; ``heldout`` lets "is there" negatives use the held-out pairs."""
    rng = np.random.default_rng(seed)
    objs = _objects(phrases, boxes)
    shapes = Counter(o.shape for o in objs)
    colours = Counter(o.colour for o in objs)
    pairs = Counter((o.colour, o.shape) for o in objs)

    def pick(items: Sequence[object]) -> object:
        return items[int(rng.integers(len(items)))]

    out: list[QA] = []
    unique_shape = [s for s in SHAPES if shapes[s] == 1]
    if unique_shape:
        s = pick(unique_shape)
        out.append(QA(f"what colour is the {s}?", next(o.colour for o in objs if o.shape == s), "colour"))
    unique_colour = [c for c in COLOURS if colours[c] == 1]
    if unique_colour:
        c = pick(unique_colour)
        out.append(QA(f"what shape is the {c} object?", next(o.shape for o in objs if o.colour == c), "shape"))
    if rng.random() < 0.25:
        out.append(QA("how many shapes are there?", NUMBER_WORDS[len(objs)], "count"))
    else:  # mostly drawn shapes: "zero" is one answer of six
        s = pick(list(shapes)) if rng.random() < 0.75 else pick(SHAPES)
        out.append(QA(f"how many {_plural(s)} are there?", NUMBER_WORDS[shapes[s]], "count"))
    if rng.random() < 0.5:
        c, s = pick(list(pairs))
        out.append(QA(f"is there {_a(c)} {s}?", "yes", "exists"))
    else:
        o = pick(objs)
        near = [(c, o.shape) for c in COLOURS] + [(o.colour, s) for s in SHAPES] if rng.random() < 0.5 else \
            [(c, s) for c in COLOURS for s in SHAPES]
        near = [p for p in near if p not in pairs and (heldout or p not in HELDOUT_PAIRS)]
        c, s = pick(near)
        out.append(QA(f"is there {_a(c)} {s}?", "no", "exists"))
    placed = [o for o in objs if pairs[(o.colour, o.shape)] == 1 and region(o, size) is not None]
    if placed:
        o = pick(placed)
        out.append(QA(f"where is the {o.colour} {o.shape}?", WHERE_ANSWERS[region(o, size)], "where"))
    return out


def eval_questions(phrases: Sequence[str], boxes: Sequence[Sequence[float]], size: int, index: int, *,
                   heldout: bool = False) -> list[QA]:
    """The questions ``edgevlp eval`` asks about sample ``index`` (fixed per index)."""
    return scene_questions(phrases, boxes, size, seed=[7, index], heldout=heldout)


def question_texts() -> list[str]:
    """Every question string :func:`scene_questions` can ask (for tokenizers)."""
    out = [f"what colour is the {s}?" for s in SHAPES] + [f"what shape is the {c} object?" for c in COLOURS]
    out += ["how many shapes are there?"] + [f"how many {_plural(s)} are there?" for s in SHAPES]
    out += [f"is there {_a(c)} {s}?" for c in COLOURS for s in SHAPES]
    return out + [f"where is the {c} {s}?" for c in COLOURS for s in SHAPES]
