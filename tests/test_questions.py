"""The VQA questions generated from shape scenes: every answer follows from the scene's objects, each
kind is asked, negatives are hard, the strings are the ones the tokenizer was built from, and the
exact-match normalisation is what the metric says."""

from __future__ import annotations

from collections import Counter

import pytest

from edgevlp.data import COLOURS, HELDOUT_PAIRS, SHAPES, dataset
from edgevlp.data.captions import region
from edgevlp.data.questions import (NUMBER_WORDS, QUESTION_KINDS, WHERE_ANSWERS, eval_questions, normalize_answer,
                                    question_texts, scene_questions)
from edgevlp.errors import InputError

SIZE = 128


def _truth(scene, qa) -> str:
    """The answer recomputed from the scene's objects, independently of the generator's own path."""
    objs = scene.objects
    words = qa.question.rstrip("?").split()
    if qa.kind == "colour":  # what colour is the <shape>
        (obj,) = [o for o in objs if o.shape == words[-1]]
        return obj.colour
    if qa.kind == "shape":  # what shape is the <colour> object
        (obj,) = [o for o in objs if o.colour == words[-2]]
        return obj.shape
    if qa.kind == "count":
        noun = words[2]
        return NUMBER_WORDS[len(objs) if noun == "shapes" else sum(o.shape + ("es" if o.shape[-1] in "sx" else "s")
                                                                      == noun for o in objs)]
    if qa.kind == "exists":  # is there a/an <colour> <shape>
        return "yes" if any((o.colour, o.shape) == (words[-2], words[-1]) for o in objs) else "no"
    (obj,) = [o for o in objs if (o.colour, o.shape) == (words[-2], words[-1])]
    return WHERE_ANSWERS[region(obj, SIZE)]


@pytest.mark.parametrize("split", ["val", "heldout"])
def test_every_answer_follows_from_the_scene(split) -> None:
    kinds, answers = Counter(), Counter()
    texts = set(question_texts())
    for i, scene in enumerate(dataset(split, 150, size=SIZE)):
        qa = eval_questions(scene.phrases, [o.box_xyxy for o in scene.objects], SIZE, i, heldout=split == "heldout")
        assert [q.kind for q in qa] == sorted((q.kind for q in qa), key=QUESTION_KINDS.index)
        for q in qa:
            assert q.answer == _truth(scene, q), (scene.phrases, q)
            assert q.question in texts  # the demo tokenizer was built from these strings
            kinds[q.kind] += 1
            answers[q.kind, q.answer] += 1
            if split != "heldout" and q.kind == "exists":
                pair = tuple(q.question.rstrip("?").split()[-2:])
                assert pair not in HELDOUT_PAIRS
    assert set(kinds) == set(QUESTION_KINDS)
    assert 0.35 < answers["exists", "yes"] / kinds["exists"] < 0.65  # balanced yes/no
    assert {a for k, a in answers if k == "colour"} == set(COLOURS)
    assert {a for k, a in answers if k == "shape"} == set(SHAPES)
    assert answers["count", "zero"] > 0 and len({a for k, a in answers if k == "where"}) == len(WHERE_ANSWERS)


def test_questions_are_fixed_per_index_and_vary_with_the_seed() -> None:
    scene = next(iter(dataset("val", 1, size=SIZE)))
    args = (scene.phrases, [o.box_xyxy for o in scene.objects], SIZE)
    assert eval_questions(*args, 0) == eval_questions(*args, 0)
    assert len({tuple(scene_questions(*args, seed=s)) for s in range(20)}) > 1


def test_hard_negatives_share_a_word_with_a_drawn_object() -> None:
    shared = negatives = 0
    for i, scene in enumerate(dataset("val", 300, size=SIZE)):
        for q in scene_questions(scene.phrases, [o.box_xyxy for o in scene.objects], SIZE, seed=i):
            if q.kind == "exists" and q.answer == "no":
                c, s = q.question.rstrip("?").split()[-2:]
                negatives += 1
                shared += any(o.colour == c or o.shape == s for o in scene.objects)
    assert shared / negatives > 0.5


def test_normalisation_and_non_shape_data() -> None:
    assert normalize_answer(" The Top-Left corner!") == "top left corner"
    assert normalize_answer("2") == "two" and normalize_answer("An orange") == "orange"
    assert normalize_answer("yes.") == normalize_answer("Yes") != normalize_answer("no")
    with pytest.raises(InputError, match="shapes: data"):
        scene_questions(["person"], [[0, 0, 1, 1]], SIZE, seed=0)
