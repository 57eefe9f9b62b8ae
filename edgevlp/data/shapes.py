"""Procedural shape scenes: coloured shapes on varied backgrounds, with boxes and reference captions.

A scene is a pure function of ``(seed, size, split)``: the same triple gives a byte-identical image on
any machine with the same numpy/OpenCV. Splits use disjoint seed ranges (:data:`SPLITS`); the
``heldout`` split tests composition: each of its scenes holds one colour-shape pair from
:data:`HELDOUT_PAIRS`, which the other splits never draw. Only numpy and OpenCV are needed (the photo
backgrounds come from scikit-image / scikit-learn's bundled images, loaded once, on first use).

Example:
    >>> scene = generate_scene(7, 160)
    >>> scene.image.shape, scene.image.dtype, 1 <= len(scene.objects) <= 4
    ((160, 160, 3), dtype('uint8'), True)
    >>> all(c in scene.captions[0] for c in scene.phrases[0].split())
    True
    >>> [s.seed for s in dataset("val", 2, size=64)]
    [1000000, 1000001]
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, NamedTuple

import cv2
import numpy as np

from edgevlp.data.captions import make_captions
from edgevlp.data.objects import ShapeObject
from edgevlp.data.vocab import (COLOUR_JITTER, COLOURS, HELDOUT_PAIRS, MIN_VISIBLE_FRACTION, SHAPES,
                                SIZES, SPLITS)
from edgevlp.errors import DependencyError, InputError

__all__ = ["ShapeObject", "Scene", "DataSpec", "generate_scene", "dataset", "parse_data_spec",
           "contact_sheet"]

_SPLIT_CODE = {"train": 0, "val": 1, "test": 2, "heldout": 3}
_MIN_SIZE, _MAX_SIZE = 64, 2048
#: Smallest scene side the generator draws (pixels).
MIN_SCENE_SIZE = _MIN_SIZE
_OBJECT_COUNT_P = (0.25, 0.30, 0.25, 0.20)  # 1, 2, 3, 4 objects
_PAIRS = tuple((c, s) for c in COLOURS for s in SHAPES)
_ORDINARY_PAIRS = tuple(p for p in _PAIRS if p not in HELDOUT_PAIRS)
_HELDOUT_SORTED = tuple(sorted(HELDOUT_PAIRS))
#: Largest rotation in degrees per shape (360: any), so squares never read as diamonds.
_MAX_ROTATION = {"circle": 0, "square": 20, "triangle": 360, "star": 360, "hexagon": 360,
                 "cross": 20, "diamond": 15}


@dataclass(frozen=True, eq=False)
class Scene:
    """One generated image (uint8 HxWx3 **RGB**) with its objects in drawing order (bottom first),
    3-5 reference captions and one phrase per object."""

    image: np.ndarray
    objects: tuple[ShapeObject, ...]
    captions: tuple[str, ...]
    phrases: tuple[str, ...]
    seed: int
    split: str


# ---------------------------------------------------------------------------------------------------
# Geometry


def _polygon(shape: str) -> np.ndarray:
    """Unit outline (N, 2), centred, scaled so its 'extent' (see :data:`SIZES`) is 1."""
    def ring(n: int, r: float = 1.0, phase: float = -np.pi / 2) -> np.ndarray:
        t = phase + 2 * np.pi * np.arange(n) / n
        return np.stack([r * np.cos(t), r * np.sin(t)], 1)

    if shape == "circle":
        pts = ring(64)
    elif shape == "square":
        pts = ring(4, phase=np.pi / 4)
    elif shape == "triangle":
        pts = ring(3)
        pts[:, 1] += 0.25  # centre the bounding box, not the centroid
    elif shape == "star":
        pts = np.empty((10, 2))
        pts[0::2], pts[1::2] = ring(5), ring(5, 0.42, -np.pi / 2 + np.pi / 5)
    elif shape == "hexagon":
        pts = ring(6, phase=0.0)
    elif shape == "cross":
        a = 0.32
        pts = np.array([(-a, -1), (a, -1), (a, -a), (1, -a), (1, a), (a, a), (a, 1), (-a, 1),
                        (-a, a), (-1, a), (-1, -a), (-a, -a)], float)
    elif shape == "diamond":
        pts = np.array([(0, -1), (0.6, 0), (0, 1), (-0.6, 0)], float)
    else:  # pragma: no cover - SHAPES and this table are kept in step by the tests
        raise KeyError(shape)
    x, y = pts[:, 0], pts[:, 1]
    area = 0.5 * abs(np.dot(x, np.roll(y, 1)) - np.dot(y, np.roll(x, 1)))
    radius = np.hypot(x, y).max()
    extent = np.sqrt(2 * radius * 2 * np.sqrt(area / np.pi))
    return pts / extent


_POLYGONS = {s: _polygon(s) for s in SHAPES}


def _rasterise(pts: np.ndarray, size: int) -> tuple[np.ndarray, tuple[int, int, int, int]]:
    """Anti-aliased coverage (float32 in [0, 1]) of polygon ``pts`` inside its clipped bounding box."""
    x0, y0 = np.floor(pts.min(0)).astype(int) - 1
    x1, y1 = np.ceil(pts.max(0)).astype(int) + 2
    x0, y0, x1, y1 = max(x0, 0), max(y0, 0), min(x1, size), min(y1, size)
    canvas = np.zeros((y1 - y0, x1 - x0), np.uint8)
    fixed = np.round((pts - (x0, y0) - 0.5) * 16).astype(np.int32)  # pixel centres at +0.5
    cv2.fillPoly(canvas, [fixed], 255, lineType=cv2.LINE_AA, shift=4)
    return canvas.astype(np.float32) / 255.0, (x0, y0, x1, y1)


# ---------------------------------------------------------------------------------------------------
# Backgrounds


@functools.lru_cache(maxsize=1)
def _photos() -> tuple[np.ndarray, ...]:
    """Bundled real photos, short side 256, desaturated and squeezed to mid-tones (float32 RGB)."""
    try:
        from skimage import data as skdata
        from sklearn.datasets import load_sample_image
    except ImportError as err:
        raise DependencyError(f"the shapes: dataset draws backgrounds from the sample photos of scikit-image "
                              f"and scikit-learn, and {err.name or err} does not import here; pip install "
                              "'edgevlp[data]' (the compress and eval extras include it)") from None

    images = [getattr(skdata, name)() for name in
              ("astronaut", "coffee", "chelsea", "rocket", "immunohistochemistry", "camera", "coins",
               "brick", "grass", "gravel")]
    images += [load_sample_image(name) for name in ("china.jpg", "flower.jpg")]
    out = []
    for img in images:
        img = np.dstack([img] * 3) if img.ndim == 2 else img[..., :3]
        scale = 256 / min(img.shape[:2])
        img = cv2.resize(img, None, fx=scale, fy=scale, interpolation=cv2.INTER_AREA)
        img = cv2.GaussianBlur(img.astype(np.float32), (0, 0), 0.8)
        grey = img.mean(2, keepdims=True)
        img = 0.45 * img + 0.55 * grey
        out.append(np.ascontiguousarray(60 + img * (135 / 255)))
    return tuple(out)


def _muted_colour(rng: np.random.Generator) -> np.ndarray:
    """A low-saturation mid-tone, so every palette colour (white and black too) stands out on it."""
    hsv = np.array([[[rng.uniform(0, 180), rng.uniform(0, 90), rng.uniform(75, 195)]]], np.float32)
    hsv = np.clip(hsv, 0, 255).astype(np.uint8)
    return cv2.cvtColor(hsv, cv2.COLOR_HSV2RGB)[0, 0].astype(np.float32)


def _background(rng: np.random.Generator, size: int) -> np.ndarray:
    kind = rng.choice(4, p=(0.2, 0.25, 0.2, 0.35))
    if kind == 0:  # flat
        return np.broadcast_to(_muted_colour(rng), (size, size, 3)).copy()
    if kind == 1:  # linear gradient in a random direction
        c0, c1 = _muted_colour(rng), _muted_colour(rng)
        angle = rng.uniform(0, 2 * np.pi)
        ramp = np.linspace(-0.5, 0.5, size, dtype=np.float32)
        t = np.clip(ramp[None, :] * np.cos(angle) + ramp[:, None] * np.sin(angle) + 0.5, 0, 1)
        return c0 + t[..., None] * (c1 - c0)
    if kind == 2:  # smooth blobs of colour
        k = int(rng.integers(3, 9))
        low = np.stack([_muted_colour(rng) for _ in range(k * k)]).reshape(k, k, 3)
        return cv2.resize(low, (size, size), interpolation=cv2.INTER_CUBIC).clip(40, 215)
    photos = _photos()
    photo = photos[int(rng.integers(len(photos)))]
    h, w = photo.shape[:2]
    side = int(rng.uniform(0.35, 1.0) * min(h, w))
    y, x = int(rng.integers(h - side + 1)), int(rng.integers(w - side + 1))
    crop = photo[y:y + side, x:x + side]
    if rng.random() < 0.5:
        crop = crop[:, ::-1]
    return cv2.resize(crop, (size, size), interpolation=cv2.INTER_LINEAR)


# ---------------------------------------------------------------------------------------------------
# Scene


def _pick_pairs(rng: np.random.Generator, n: int, split: str) -> list[tuple[str, str]]:
    """``n`` distinct colour-shape pairs; a heldout scene's first one is a held-out pair."""
    first = [_HELDOUT_SORTED[int(rng.integers(len(_HELDOUT_SORTED)))]] if split == "heldout" else []
    idx = rng.choice(len(_ORDINARY_PAIRS), size=n - len(first), replace=False)
    return first + [_ORDINARY_PAIRS[i] for i in idx]


def _visible(masks: list[np.ndarray]) -> list[np.ndarray]:
    """Each mask minus everything drawn after it."""
    out, above = [], np.zeros_like(masks[0])
    for m in reversed(masks):
        out.append(m & ~above)
        above |= m
    return out[::-1]


def _layout(rng: np.random.Generator, size: int, split: str) -> list[dict]:
    """Place 1-4 objects so each keeps >= MIN_VISIBLE_FRACTION visible and same-coloured ones never
    touch; an object that finds no such place in 40 tries is dropped (never the held-out one)."""
    n = int(rng.choice(4, p=_OBJECT_COUNT_P)) + 1
    placed: list[dict] = []
    for colour, shape in _pick_pairs(rng, n, split):
        size_name = tuple(SIZES)[int(rng.integers(len(SIZES)))]
        extent = SIZES[size_name] * size * rng.uniform(0.92, 1.08)
        for _ in range(40):
            theta = np.deg2rad(rng.uniform(-1, 1) * _MAX_ROTATION[shape])
            rot = np.array([[np.cos(theta), -np.sin(theta)], [np.sin(theta), np.cos(theta)]])
            pts = _POLYGONS[shape] @ rot.T * extent
            lo, hi = -pts.min(0) + 1, size - pts.max(0) - 1
            pts = pts + rng.uniform(lo, hi)
            alpha, roi = _rasterise(pts, size)
            mask = np.zeros((size, size), bool)
            mask[roi[1]:roi[3], roi[0]:roi[2]] = alpha >= 0.5
            if not mask.any():
                continue
            if any(o["colour"] == colour and _boxes_touch(o["roi"], roi) for o in placed):
                continue
            masks = [o["mask"] for o in placed] + [mask]
            visible = _visible(masks)
            if all(v.sum() >= MIN_VISIBLE_FRACTION * m.sum() for v, m in zip(visible, masks)):
                placed.append(dict(shape=shape, colour=colour, size_name=size_name, alpha=alpha,
                                   roi=roi, mask=mask))
                break
    return placed


def _boxes_touch(a: tuple[int, int, int, int], b: tuple[int, int, int, int], gap: int = 2) -> bool:
    return a[0] < b[2] + gap and b[0] < a[2] + gap and a[1] < b[3] + gap and b[1] < a[3] + gap


def _augment(img: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Whole-image lighting, blur, sensor noise and JPEG, each with moderate probability."""
    if rng.random() < 0.5:
        gain = rng.uniform(0.85, 1.15) * rng.uniform(0.95, 1.05, 3).astype(np.float32)
        img = img * gain + np.float32(rng.uniform(-12, 12))
    if rng.random() < 0.25:
        img = cv2.GaussianBlur(img, (0, 0), rng.uniform(0.4, 1.0))
    if rng.random() < 0.3:
        img = img + rng.standard_normal(img.shape, np.float32) * np.float32(rng.uniform(2, 7))
    out = np.clip(img + 0.5, 0, 255).astype(np.uint8)
    if rng.random() < 0.3:
        quality = int(rng.integers(35, 86))
        ok, buf = cv2.imencode(".jpg", out[..., ::-1], [cv2.IMWRITE_JPEG_QUALITY, quality])
        out = np.ascontiguousarray(cv2.imdecode(buf, cv2.IMREAD_COLOR)[..., ::-1])
    return out


def _render(seed: int, size: int, split: str, augment: bool) -> tuple[Scene, list[np.ndarray]]:
    """The scene and each object's visible mask (for tests and debugging)."""
    if split not in SPLITS:
        raise InputError(f"unknown split {split!r}; expected one of {', '.join(SPLITS)}")
    if not isinstance(size, (int, np.integer)) or not _MIN_SIZE <= size <= _MAX_SIZE:
        raise InputError(f"size={size!r}: expected an int in {_MIN_SIZE}..{_MAX_SIZE} (pixels)")
    if not isinstance(seed, (int, np.integer)) or seed < 0:
        raise InputError(f"seed={seed!r}: expected an int >= 0")
    size, seed = int(size), int(seed)
    rng = np.random.default_rng([seed, size, _SPLIT_CODE[split]])
    img = _background(rng, size).astype(np.float32)
    placed = _layout(rng, size, split)
    for o in placed:
        x0, y0, x1, y1 = o["roi"]
        colour = np.array(COLOURS[o["colour"]], np.float32)
        colour = np.clip(colour + rng.integers(-COLOUR_JITTER, COLOUR_JITTER + 1, 3), 0, 255)
        a = o["alpha"][..., None]
        img[y0:y1, x0:x1] = img[y0:y1, x0:x1] * (1 - a) + colour * a
    img = _augment(img, rng) if augment else np.clip(img + 0.5, 0, 255).astype(np.uint8)
    visible = _visible([o["mask"] for o in placed])
    objects = []
    for o, vis in zip(placed, visible):
        ys, xs = np.nonzero(vis)
        box = (float(xs.min()), float(ys.min()), float(xs.max() + 1), float(ys.max() + 1))
        objects.append(ShapeObject(o["shape"], o["colour"], o["size_name"], box,
                                   round(float(vis.sum() / o["mask"].sum()), 4)))
    captions = make_captions(objects, size, rng)
    scene = Scene(img, tuple(objects), captions, tuple(o.phrase for o in objects), seed, split)
    return scene, visible


def generate_scene(seed: int, size: int = 224, *, split: str = "train", augment: bool = True) -> Scene:
    """The scene for ``(seed, size, split)``: same arguments, byte-identical image and captions.

    ``augment=False`` skips the whole-image lighting/blur/noise/JPEG step (the layout is unchanged).
    Use :func:`dataset` to stay inside a split's seed range.

    Example:
        >>> s = generate_scene(3, 128, split="heldout")
        >>> any((o.colour, o.shape) in HELDOUT_PAIRS for o in s.objects)
        True
    """
    return _render(seed, size, split, augment)[0]


def dataset(split: str, n: int, size: int = 224, start: int = 0, *, augment: bool = True) -> Iterator[Scene]:
    """Scenes ``start .. start+n-1`` of ``split`` (scene ``i`` uses seed ``SPLITS[split][i]``).

    Example:
        >>> [len(s.captions) >= 3 for s in dataset("test", 2, size=96)]
        [True, True]
    """
    if split not in SPLITS:
        raise InputError(f"unknown split {split!r}; expected one of {', '.join(SPLITS)}")
    seeds = SPLITS[split]
    ints = all(isinstance(v, (int, np.integer)) and not isinstance(v, bool) for v in (n, start))
    if not ints or n < 0 or start < 0 or start + n > len(seeds):
        raise InputError(f"scenes {start}..{start}+{n} are outside split {split!r}, which has "
                         f"{len(seeds)} scenes; pass 0 <= start and start + n <= {len(seeds)}")
    return (generate_scene(seeds[int(start) + i], size, split=split, augment=augment) for i in range(int(n)))


class DataSpec(NamedTuple):
    """A parsed ``--data`` value: ``shapes:<split>[:<n>[:<start>]]`` or ``coco:<path>``.

    For shapes, ``n`` is None when not given (the caller picks a default); for COCO, ``split`` is
    ``"coco"`` and ``path`` is the annotations file or the folder holding ``annotations.json``.
    """

    split: str
    n: int | None = None
    start: int = 0
    path: Path | None = None

    @property
    def kind(self) -> str:
        return "coco" if self.split == "coco" else "shapes"


def parse_data_spec(spec: str) -> DataSpec:
    """Parse a data spec as given on the command line.

    Example:
        >>> parse_data_spec("shapes:val:200")
        DataSpec(split='val', n=200, start=0, path=None)
        >>> parse_data_spec("coco:out/shapes").kind
        'coco'
    """
    usage = (f"expected shapes:<split>[:<n>[:<start>]] with split one of {', '.join(SPLITS)} "
             "(e.g. shapes:val or shapes:heldout:500), or coco:<annotations.json or folder>")
    kind, _, rest = str(spec).partition(":")
    if kind == "coco" and rest:
        return DataSpec("coco", path=Path(rest))
    parts = rest.split(":")
    if kind != "shapes" or not 1 <= len(parts) <= 3 or parts[0] not in SPLITS:
        raise InputError(f"unknown data spec {spec!r}: {usage}")
    numbers = []
    for text in parts[1:]:
        if not text.isdigit():
            raise InputError(f"data spec {spec!r}: {text!r} is not a non-negative integer; {usage}")
        numbers.append(int(text))
    n = numbers[0] if numbers else None
    start = numbers[1] if len(numbers) > 1 else 0
    if n is not None and (n < 1 or start + n > len(SPLITS[parts[0]])):
        raise InputError(f"data spec {spec!r}: split {parts[0]!r} has {len(SPLITS[parts[0]])} scenes, "
                         f"so need 1 <= n and start + n <= {len(SPLITS[parts[0]])}; {usage}")
    return DataSpec(parts[0], n, start)


def contact_sheet(scenes: list[Scene], cols: int = 4, caption_index: int = 0) -> np.ndarray:
    """One RGB image tiling ``scenes`` with their boxes, phrases and one caption each (for review)."""
    tiles = []
    for s in scenes:
        img = cv2.resize(s.image, (256, 256), interpolation=cv2.INTER_NEAREST)
        k = 256 / s.image.shape[0]
        img = np.ascontiguousarray(img)
        for o in s.objects:
            x0, y0, x1, y1 = (int(round(v * k)) for v in o.box_xyxy)
            cv2.rectangle(img, (x0, y0), (x1 - 1, y1 - 1), (0, 255, 255), 1)
            cv2.putText(img, o.phrase, (x0, max(y0 - 2, 8)), cv2.FONT_HERSHEY_PLAIN, 0.7, (0, 255, 255))
        text = np.full((36, 256, 3), 255, np.uint8)
        words, line, lines = s.captions[caption_index].split(), "", []
        for w in words:
            if len(line) + len(w) > 42:
                lines.append(line)
                line = ""
            line += w + " "
        for i, ln in enumerate([*lines, line][:3]):
            cv2.putText(text, ln, (2, 10 + 11 * i), cv2.FONT_HERSHEY_PLAIN, 0.75, (0, 0, 0))
        tiles.append(np.vstack([img, text]))
    while len(tiles) % cols:
        tiles.append(np.zeros_like(tiles[0]))
    rows = [np.hstack(tiles[i:i + cols]) for i in range(0, len(tiles), cols)]
    return np.vstack(rows)

