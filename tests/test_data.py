"""The shape-scenes dataset: determinism, splits, held-out pairs, boxes, captions, COCO files."""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import os
import subprocess
import sys
from collections import Counter

import cv2
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from edgevlp.data import (CAPTION_VOCAB, CATEGORIES, COLOURS, HELDOUT_PAIRS, SHAPES, SIZES, SPLITS,
                          DataSpec, caption_words, dataset, generate_scene, load_coco,
                          parse_caption, parse_data_spec, to_coco)
from edgevlp.data.captions import REGIONS
from edgevlp.data.shapes import _render
from edgevlp.data.vocab import COLOUR_JITTER, MIN_VISIBLE_FRACTION
from edgevlp.errors import InputError


def _centre(obj) -> tuple[float, float]:
    x0, y0, x1, y1 = obj.box_xyxy
    return (x0 + x1) / 2, (y0 + y1) / 2


def _check_scene(scene, size: int) -> None:
    """Every invariant a single scene must satisfy (boxes, visibility, captions vs objects)."""
    assert scene.image.shape == (size, size, 3) and scene.image.dtype == np.uint8
    assert 1 <= len(scene.objects) <= 4
    assert scene.phrases == tuple(f"{o.colour} {o.shape}" for o in scene.objects)
    assert len(set(scene.phrases)) == len(scene.phrases), "a scene never repeats a colour-shape pair"
    for o in scene.objects:
        assert o.shape in SHAPES and o.colour in COLOURS and o.size_name in SIZES
        x0, y0, x1, y1 = o.box_xyxy
        assert 0 <= x0 < x1 <= size and 0 <= y0 < y1 <= size, o
        assert x1 - x0 >= 3 and y1 - y0 >= 3, f"degenerate box {o}"
        assert MIN_VISIBLE_FRACTION <= o.visible_fraction <= 1.0, o
    assert 3 <= len(scene.captions) <= 5 and len(set(scene.captions)) == len(scene.captions)
    by_pair = {(o.colour, o.shape): o for o in scene.objects}
    for text in scene.captions:
        assert text == text.strip().lower() and "  " not in text, text
        assert set(caption_words(text)) <= set(CAPTION_VOCAB), text
        parsed = parse_caption(text)
        named = [(m.colour, m.shape) for m in parsed.mentions]
        assert Counter(named) == Counter((o.colour, o.shape) for o in scene.objects), \
            f"{text!r} vs {scene.phrases}"
        for m in parsed.mentions:
            assert m.size in (None, by_pair[m.colour, m.shape].size_name), text
        assert parsed.count in (None, len(scene.objects)), text
        if parsed.relation:
            (ax, ay), (bx, by) = (_centre(by_pair[named[i]]) for i in (0, 1))
            dx, dy = bx - ax, by - ay
            expected = {"to the left of": dx > abs(dy), "to the right of": -dx > abs(dy),
                        "above": dy > abs(dx), "below": -dy > abs(dx)}[parsed.relation]
            assert expected, f"{text!r}: centres {(ax, ay)} {(bx, by)}"
        if parsed.order:
            axis = 0 if parsed.order == "from left to right" else 1
            coords = [_centre(by_pair[p])[axis] for p in named]
            assert coords == sorted(coords), f"{text!r}: {coords}"
        if parsed.region:
            assert len(scene.objects) == 1
            cx, cy = _centre(scene.objects[0])
            row, col = next(k for k, v in REGIONS.items() if v == parsed.region)
            assert row == min(int(3 * cy / size), 2) and col == min(int(3 * cx / size), 2), text
    assert any(all(m.size for m in parse_caption(c).mentions) for c in scene.captions)


def test_same_seed_same_bytes_and_different_seeds_differ() -> None:
    a, b = generate_scene(42, 160), generate_scene(42, 160)
    assert a.image.tobytes() == b.image.tobytes()
    assert (a.objects, a.captions, a.phrases) == (b.objects, b.captions, b.phrases)
    images = {generate_scene(s, 160).image.tobytes() for s in range(42, 50)}
    assert len(images) == 8
    assert generate_scene(42, 160, split="val").image.tobytes() != a.image.tobytes()


def test_determinism_across_processes() -> None:
    code = ("import hashlib\nfrom edgevlp.data import generate_scene\n"
            "generate_scene(3, 96)\ns = generate_scene(1000123, 128, split='val')\n"
            "print(hashlib.sha256(s.image.tobytes() + repr((s.objects, s.captions)).encode()).hexdigest())")
    s = generate_scene(1000123, 128, split="val")
    here = hashlib.sha256(s.image.tobytes() + repr((s.objects, s.captions)).encode()).hexdigest()
    env = {**os.environ, "PYTHONHASHSEED": "123"}
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, check=True)
    assert res.stdout.strip() == here


def test_import_is_lean_and_photos_load_lazily() -> None:
    code = ("import sys\nimport edgevlp.data\n"
            "print(sorted(m for m in ('torch', 'transformers', 'skimage', 'sklearn') if m in sys.modules))")
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert res.stdout.strip() == "[]"


def test_split_seed_ranges_are_disjoint() -> None:
    ranges = sorted(SPLITS.values(), key=lambda r: r.start)
    assert all(r.step == 1 and len(r) > 0 for r in ranges)
    assert all(a.stop <= b.start for a, b in zip(ranges, ranges[1:]))
    assert [s.seed for s in dataset("test", 3, size=64, start=5)] == list(SPLITS["test"][5:8])


def test_heldout_pairs_only_in_heldout_split() -> None:
    assert len(HELDOUT_PAIRS) >= 6
    assert all(c in COLOURS and s in SHAPES for c, s in HELDOUT_PAIRS)
    for split, n in (("train", 300), ("val", 150), ("test", 100)):
        for scene in dataset(split, n, size=64):
            leaked = [o.phrase for o in scene.objects if (o.colour, o.shape) in HELDOUT_PAIRS]
            assert not leaked, f"{split} seed {scene.seed} draws held-out {leaked}"
    seen = Counter()
    for scene in dataset("heldout", 150, size=64):
        pairs = [(o.colour, o.shape) for o in scene.objects]
        held = [p for p in pairs if p in HELDOUT_PAIRS]
        assert len(held) == 1, f"heldout seed {scene.seed}: {pairs}"
        seen[held[0]] += 1
    assert set(seen) == set(HELDOUT_PAIRS), "every held-out pair is used"


@pytest.mark.parametrize("split,size", [("train", 224), ("val", 128), ("heldout", 160)])
def test_scene_invariants(split: str, size: int) -> None:
    for scene in dataset(split, 60, size=size):
        _check_scene(scene, size)


@settings(max_examples=40, deadline=None)
@given(split=st.sampled_from(list(SPLITS)), index=st.integers(0, 9_999),
       size=st.sampled_from([64, 97, 128, 224, 320]))
def test_scene_invariants_property(split: str, index: int, size: int) -> None:
    _check_scene(next(dataset(split, 1, size=size, start=index)), size)


def test_object_count_and_layout_variety() -> None:
    scenes = list(dataset("train", 200, size=96))
    counts = Counter(len(s.objects) for s in scenes)
    assert set(counts) == {1, 2, 3, 4} and min(counts.values()) >= 20, counts
    assert any(o.visible_fraction < 1 for s in scenes for o in s.objects), "occlusion happens"
    assert {o.size_name for s in scenes for o in s.objects} == set(SIZES)
    assert len({o.phrase for s in scenes for o in s.objects}) >= 45


def test_drawn_colours_match_the_words() -> None:
    """Inside each visible mask the pixels are the named colour (catches RGB/BGR swaps)."""
    palette = np.array(list(COLOURS.values()), np.float32)
    names = list(COLOURS)
    for seed in range(40):
        clean, masks = _render(seed, 160, "train", augment=False)
        noisy = generate_scene(seed, 160)
        for obj, mask in zip(clean.objects, masks):
            inner = cv2.erode(mask.astype(np.uint8), np.ones((3, 3), np.uint8), iterations=2) > 0
            ys, xs = np.nonzero(mask)
            assert obj.box_xyxy == (xs.min(), ys.min(), xs.max() + 1.0, ys.max() + 1.0)
            if not inner.any():
                continue
            pixels = clean.image[inner].astype(int)
            assert np.abs(pixels - COLOURS[obj.colour]).max() <= COLOUR_JITTER + 1, (seed, obj)
            median = np.median(noisy.image[inner].astype(np.float32), axis=0)
            nearest = names[int(np.argmin(np.linalg.norm(palette - median, axis=1)))]
            assert nearest == obj.colour, (seed, obj, median)


def test_caption_vocab_is_closed_and_all_used() -> None:
    used = set()
    for split in ("train", "heldout"):
        for scene in dataset(split, 250, size=64):
            for text in scene.captions:
                used.update(caption_words(text))
    assert used <= set(CAPTION_VOCAB), used - set(CAPTION_VOCAB)
    assert set(CAPTION_VOCAB) <= used, f"never used: {set(CAPTION_VOCAB) - used}"
    assert list(CAPTION_VOCAB) == sorted(set(CAPTION_VOCAB))


def test_parse_caption_reads_model_style_text() -> None:
    p = parse_caption("A large white hexagon above an orange star.")
    assert [(m.size, m.colour, m.shape) for m in p.mentions] == [("large", "white", "hexagon"),
                                                                  (None, "orange", "star")]
    assert p.relation == "above" and p.count is None
    assert parse_caption("a blurry picture").mentions == ()


@pytest.mark.parametrize("spec,expected", [
    ("shapes:val", DataSpec("val")),
    ("shapes:heldout:500", DataSpec("heldout", 500)),
    ("shapes:train:10:5", DataSpec("train", 10, 5)),
])
def test_parse_data_spec(spec: str, expected: DataSpec) -> None:
    assert parse_data_spec(spec) == expected and expected.kind == "shapes"
    assert parse_data_spec("coco:out/x").kind == "coco"


@pytest.mark.parametrize("spec", ["shapes", "shapes:", "shapes:bogus", "imagenet:val", "coco:",
                                  "shapes:val:abc", "shapes:val:0", "shapes:val:20000",
                                  "shapes:val:-1", "shapes:val:1:2:3", "Shapes:val", ""])
def test_parse_data_spec_errors(spec: str) -> None:
    with pytest.raises(InputError, match="shapes:<split>") as info:
        parse_data_spec(spec)
    assert isinstance(info.value, ValueError)


@pytest.mark.parametrize("kwargs", [dict(split="validation"), dict(size=16), dict(size=224.0),
                                    dict(seed=-1)])
def test_generate_scene_rejects_bad_input(kwargs: dict) -> None:
    args = {"seed": 1, "size": 128, "split": "train", **kwargs}
    with pytest.raises(InputError):
        generate_scene(args.pop("seed"), args.pop("size"), **args)
    with pytest.raises(InputError, match="outside split"):
        dataset("val", 5, start=len(SPLITS["val"]) - 4)


def test_coco_export_loads_in_pycocotools(tmp_path) -> None:
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    scenes = list(dataset("val", 6, size=128))
    path = to_coco(scenes, tmp_path, image_format="png")
    with contextlib.redirect_stdout(io.StringIO()):
        coco = COCO(str(path))
    n_obj = sum(len(s.objects) for s in scenes)
    assert len(coco.getImgIds()) == 6 and len(coco.getAnnIds()) == n_obj
    assert [c["name"] for c in coco.loadCats(coco.getCatIds())] == list(CATEGORIES)
    data = json.loads(path.read_text())
    assert len(data["captions"]) == sum(len(s.captions) for s in scenes)
    assert len({c["id"] for c in data["captions"]}) == len(data["captions"])
    for img, scene in zip(coco.loadImgs(coco.getImgIds()), scenes):
        pixels = cv2.imread(str(tmp_path / "images" / img["file_name"]))[..., ::-1]
        assert np.array_equal(pixels, scene.image), "PNG round trip is exact and RGB"
        anns = coco.loadAnns(coco.getAnnIds(imgIds=img["id"]))
        assert [a["phrase"] for a in anns] == list(scene.phrases)
        assert [coco.cats[a["category_id"]]["name"] for a in anns] == list(scene.phrases)
        for a, o in zip(anns, scene.objects):
            x, y, w, h = a["bbox"]
            assert (x, y, x + w, y + h) == o.box_xyxy and a["area"] == w * h and a["iscrowd"] == 0
    # ground truth scored against itself: AP 1.0 means the file is valid for COCOeval
    dets = [{"image_id": a["image_id"], "category_id": a["category_id"], "bbox": a["bbox"],
             "score": 1.0} for a in data["annotations"]]
    with contextlib.redirect_stdout(io.StringIO()):
        ev = COCOeval(coco, coco.loadRes(dets), "bbox")
        ev.evaluate(), ev.accumulate(), ev.summarize()
    assert ev.stats[0] == pytest.approx(1.0)

    samples = load_coco(tmp_path)
    assert [s.captions for s in samples] == [s.captions for s in scenes]
    assert [s.phrases for s in samples] == [s.phrases for s in scenes]
    for sample, scene in zip(samples, scenes):
        assert np.allclose(sample.boxes, [o.box_xyxy for o in scene.objects])


def test_coco_jpg_overwrite_and_errors(tmp_path) -> None:
    path = to_coco(dataset("test", 4, size=96), tmp_path, image_format="jpg")
    assert len(list((tmp_path / "images").glob("*.jpg"))) == 4
    with pytest.raises(InputError, match="overwrite=True"):
        to_coco(dataset("test", 2, size=96), tmp_path)
    to_coco(dataset("test", 2, size=96, start=10), tmp_path, overwrite=True)
    assert len(list((tmp_path / "images").iterdir())) == 2
    assert all(cv2.imread(str(s.image_path)).shape == (96, 96, 3) for s in load_coco(path))
    with pytest.raises(InputError, match="image_format"):
        to_coco([], tmp_path / "x", image_format="bmp")
    with pytest.raises(InputError, match="not found"):
        load_coco(tmp_path / "nothing")
    (tmp_path / "bad.json").write_text("{not json")
    with pytest.raises(InputError, match="cannot read"):
        load_coco(tmp_path / "bad.json")


def test_load_coco_reads_a_plain_captions_file(tmp_path) -> None:
    cv2.imwrite(str(tmp_path / "cat.jpg"), np.zeros((8, 8, 3), np.uint8))
    (tmp_path / "captions.json").write_text(json.dumps({
        "images": [{"id": 7, "file_name": "cat.jpg", "width": 8, "height": 8}],
        "annotations": [{"id": 1, "image_id": 7, "caption": "a cat"},
                        {"id": 2, "image_id": 7, "caption": "a black cat"}]}))
    (sample,) = load_coco(tmp_path / "captions.json")
    assert sample.captions == ("a cat", "a black cat") and sample.boxes.shape == (0, 4)
    with pytest.raises(InputError, match="missing"):
        load_coco(tmp_path / "captions.json", images_dir=tmp_path / "elsewhere")
