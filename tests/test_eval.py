"""Metric sanity: perfect predictions score the maximum, shuffled ones score low, and small cases
match hand-computed values (BLEU, COCO AP with false positives from other images)."""

from __future__ import annotations

import math

import numpy as np
import pytest

from edgevlp.errors import InputError
from edgevlp.eval.metrics import DetectionRecord, caption_scores, detection_scores, tokenize

CAPTIONS = [
    "a small red circle to the left of a large blue square",
    "three shapes: a green star, a white cross and a black hexagon",
    "an orange diamond in the top right corner",
    "from top to bottom: a yellow triangle and a purple square",
    "two shapes: a medium white star below a small red diamond",
]


def test_tokenize_lowercases_and_splits_punctuation() -> None:
    assert tokenize("Two shapes: a RED circle, a blue star") == "two shapes : a red circle , a blue star"


def test_perfect_captions_score_max_and_shuffled_low() -> None:
    refs = {i: [c] for i, c in enumerate(CAPTIONS)}
    perfect = caption_scores(refs, dict(enumerate(CAPTIONS)))
    assert perfect["bleu4"] == pytest.approx(1.0, abs=1e-6)
    assert perfect["cider"] == pytest.approx(10.0, abs=1e-6)  # CIDEr-D's maximum (x10 scaling)
    shuffled = caption_scores(refs, {i: CAPTIONS[(i + 1) % len(CAPTIONS)] for i in refs})
    assert shuffled["bleu4"] < 0.2 and shuffled["cider"] < 1.0
    assert shuffled["n_images"] == len(CAPTIONS)


def test_bleu_hand_computed() -> None:
    # hyp (6 words) vs ref (7 words): clipped n-gram precisions 6/6, 4/5, 2/4, 1/3 and brevity
    # penalty exp(1 - 7/6)
    scores = caption_scores({0: ["the red circle and the blue square"]}, {0: "the red circle and blue square"})
    bp = math.exp(1 - 7 / 6)
    assert scores["bleu1"] == pytest.approx(bp, rel=1e-6)
    assert scores["bleu2"] == pytest.approx(bp * (1 * 4 / 5) ** 0.5, rel=1e-6)
    assert scores["bleu4"] == pytest.approx(bp * (1 * 4 / 5 * 2 / 4 * 1 / 3) ** 0.25, rel=1e-6)


def test_caption_scores_need_every_prediction() -> None:
    with pytest.raises(InputError, match="no prediction"):
        caption_scores({0: ["a red circle"], 1: ["a blue star"]}, {0: "a red circle"})


def _record(gt, gt_labels, boxes, scores, labels) -> DetectionRecord:
    return DetectionRecord(100, 100, np.asarray(gt, float).reshape(-1, 4), gt_labels,
                           np.asarray(boxes, float).reshape(-1, 4), np.asarray(scores, float), labels)


def _scenes(seed: int = 0, n: int = 20):
    rng = np.random.default_rng(seed)
    phrases = ["red circle", "blue square", "green star"]
    out = []
    for _ in range(n):
        k = int(rng.integers(1, 4))
        xy = rng.uniform(0, 60, (k, 2))
        wh = rng.uniform(10, 35, (k, 2))
        out.append((np.concatenate([xy, xy + wh], 1), [phrases[int(i)] for i in rng.integers(0, 3, k)]))
    return out, phrases


def test_perfect_detections_score_max_and_shuffled_low() -> None:
    scenes, phrases = _scenes()
    perfect = [_record(b, lab, b, np.ones(len(b)), lab) for b, lab in scenes]
    s = detection_scores(perfect, phrases)
    assert s["map"] == pytest.approx(1.0) and s["map50"] == pytest.approx(1.0) and s["n_images"] == 20
    # every image gets the next image's boxes: wrong places, wrong counts
    shuffled = [_record(b, lab, scenes[(i + 1) % 20][0], np.ones(len(scenes[(i + 1) % 20][0])),
                        scenes[(i + 1) % 20][1]) for i, (b, lab) in enumerate(scenes)]
    s = detection_scores(shuffled, phrases)
    assert s["map50"] < 0.2 and s["map"] < 0.1


def test_ap_hand_computed_with_a_miss() -> None:
    # two red circles; one found (score 0.9), one missed, and a false positive at 0.8: the P-R curve
    # has precision 1 up to recall 0.5 and nothing beyond, so 101-point AP = 51/101
    gt = [[10, 10, 30, 30], [60, 60, 90, 90]]
    rec = _record(gt, ["red circle"] * 2, [[10, 10, 30, 30], [40, 0, 50, 8]], [0.9, 0.8], ["red circle"] * 2)
    s = detection_scores([rec], ["red circle"])
    assert s["map50"] == pytest.approx(51 / 101) and s["map"] == pytest.approx(51 / 101)


def test_false_positives_on_other_images_count() -> None:
    # image 2 has no red circle, but a red-circle detection scored above the true one: AP 0.5
    hit = _record([[10, 10, 30, 30]], ["red circle"], [[10, 10, 30, 30]], [0.9], ["red circle"])
    other = _record([[50, 50, 80, 80]], ["blue square"], [[5, 5, 20, 20], [50, 50, 80, 80]], [0.95, 0.9],
                    ["red circle", "blue square"])
    s = detection_scores([hit, other], ["red circle", "blue square"])
    assert s["map50"] == pytest.approx((0.5 + 1.0) / 2)
    only = detection_scores([hit, other], ["red circle", "blue square"], only=["red circle"])
    assert only["map50"] == pytest.approx(0.5)


def test_unknown_labels_are_errors() -> None:
    rec = _record([[0, 0, 5, 5]], ["red circle"], [[0, 0, 5, 5]], [1.0], ["person"])
    with pytest.raises(InputError, match="person"):
        detection_scores([rec], ["red circle"])


@pytest.mark.slow
@pytest.mark.parametrize("name", ["demo-blip", "demo-owlvit"])
def test_bundle_scores_match_the_pytorch_model(name, tmp_path) -> None:
    # the same scenes, prompts and post-processing on both paths: an fp32 CPU bundle scores what its
    # source model scores (this is what lets `edgevlp eval` measure export and compression)
    from edgevlp.eval import evaluate
    from edgevlp.export import export_model

    bundle = tmp_path / "bundle"
    export_model(name, bundle, target="cpu", precision="fp32", progress=False)
    keys = ("bleu4", "cider") if name == "demo-blip" else ("map", "map50")
    a = evaluate(name, "shapes:val:8", progress=False)
    b = evaluate(str(bundle), "shapes:val:8", progress=False)
    assert a["kind"] == "pytorch" and b["kind"] == "bundle" and b["n_images"] == 8
    for k in keys:
        assert b[k] == pytest.approx(a[k], abs=0.02), (k, a[k], b[k])


def test_per_object_words_match_one_mention_to_one_object() -> None:
    from edgevlp.eval.evaluate import Sample, mention_recall

    scene = Sample(np.zeros((8, 8, 3), np.uint8), ("",), np.zeros((2, 4)), ("red circle", "blue square"))
    right = mention_recall([scene], ["two shapes: a red circle and a blue square"])
    assert right["shape_accuracy"] == right["pair_accuracy"] == 1.0 and right["extra_mentions"] == 0.0
    # every shape word said: full recall, but one-to-one only two mentions count and four are extra
    spray = mention_recall([scene], ["a red circle, a blue circle, a red square, a blue square, a red star, "
                                     "a blue star"])
    assert spray["shape_recall"] == 1.0 and spray["extra_mentions"] == pytest.approx(4 / 6)
    swapped = mention_recall([scene], ["a red square and a blue circle"])
    assert swapped["shape_recall"] == 1.0 and swapped["shape_accuracy"] == 0.0  # colours pair them
    assert swapped["colour_accuracy"] == 1.0 and swapped["pair_accuracy"] == 0.0
    one = mention_recall([scene], ["a red circle"])
    assert one["shape_accuracy"] == 0.5 and one["extra_mentions"] == 0.0
    assert mention_recall([scene], [""])["shape_accuracy"] == 0.0


def test_top_detection_right_needs_overlap_and_phrase() -> None:
    from edgevlp.eval.metrics import top_detection_right

    drawn = [([10, 10, 50, 50], "red circle"), ([60, 60, 90, 90], "blue square")]
    det = {"box": [12, 11, 49, 52], "score": 0.8, "label": "red circle"}
    assert top_detection_right([det, {"box": [0, 0, 5, 5], "score": 0.3, "label": "blue square"}], drawn)
    assert not top_detection_right([{**det, "label": "blue square"}], drawn)  # right place, wrong phrase
    assert not top_detection_right([{**det, "box": [30, 30, 70, 70]}], drawn)  # IoU < 0.5
    assert not top_detection_right([{**det, "score": 0.1}, {"box": [0, 0, 5, 5], "score": 0.3,
                                                            "label": "red circle"}], drawn)  # top one counts
    assert not top_detection_right([], drawn)
