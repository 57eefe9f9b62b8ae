"""The ``photos`` calibration source and the ``auto`` default: real photos for real models.

``photos`` are the natural photos bundled with scikit-image and scikit-learn (no download), except the
three that :func:`edgevlp.compress.calib.real_photos` keeps for evaluation (astronaut, coffee,
chelsea). Frame ``i`` is photo ``i mod P`` of the pool: whole the first time, then a deterministic
crop (50-90 % of the short side, flipped every other round), so any number of frames can be drawn and
the same ``i`` always gives the same frame.

``auto`` (the shipped recipes' calibration source) is ``shapes:train`` for a model trained on shape
scenes (the demo zoo, or any ``edgevlp zoo train`` output: a ``metrics.json`` with its ``training``
record) and ``photos`` for every other model: calibrating a real checkpoint on synthetic shapes gives it
activation ranges it never sees on camera frames.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

__all__ = ["PHOTO_POOL", "AUTO", "PHOTOS", "bundled_photos", "trained_on_shapes", "resolve_source"]

AUTO = "auto"
PHOTOS = "photos"
#: scikit-image ``data.<name>`` or scikit-learn ``sklearn:<file>`` sample images, colour first.
PHOTO_POOL: tuple[str, ...] = ("rocket", "sklearn:china.jpg", "hubble_deep_field", "sklearn:flower.jpg",
                               "immunohistochemistry", "retina", "camera", "clock", "coins", "moon",
                               "brick", "grass", "gravel")


def _photo(name: str) -> np.ndarray:
    """One pool photo as BGR uint8 (grey photos repeated over three channels)."""
    if name.startswith("sklearn:"):
        from sklearn.datasets import load_sample_image

        rgb = load_sample_image(name.split(":", 1)[1])
    else:
        from skimage import data

        rgb = getattr(data, name)()
    if rgb.ndim == 2:
        rgb = np.repeat(rgb[..., None], 3, axis=2)
    return np.ascontiguousarray(rgb[..., :3][..., ::-1])


def bundled_photos(n: int, start: int = 0) -> list[tuple[str, np.ndarray]]:
    """``(name, bgr)`` for frames ``start .. start+n-1`` of the photo pool (see the module docstring).

    Example:
        >>> [name for name, _ in bundled_photos(2, start=12)]
        ['gravel', 'rocket~crop1']
    """
    cache: dict[str, np.ndarray] = {}
    out = []
    for i in range(start, start + n):
        name = PHOTO_POOL[i % len(PHOTO_POOL)]
        if name not in cache:
            cache[name] = _photo(name)
        img = cache[name]
        round_ = i // len(PHOTO_POOL)
        label = name.removeprefix("sklearn:").removesuffix(".jpg")
        if round_:
            rng = np.random.default_rng(i)
            h, w = img.shape[:2]
            side = int(min(h, w) * rng.uniform(0.5, 0.9))
            y, x = int(rng.integers(0, h - side + 1)), int(rng.integers(0, w - side + 1))
            img = img[y:y + side, x:x + side]
            if round_ % 2:
                img = img[:, ::-1]
            img = np.ascontiguousarray(img)
            label = f"{label}~crop{round_}"
        out.append((label, img))
    return out


def trained_on_shapes(model_dir: Path | None) -> bool:
    """Was the model in ``model_dir`` trained on shape scenes (the demo zoo, `edgevlp zoo train`)?"""
    if model_dir is None:
        return False
    from edgevlp.models.registry import ZOO_DIR

    try:
        if Path(model_dir).resolve().is_relative_to(Path(ZOO_DIR).resolve()):
            return True
        card = json.loads((Path(model_dir) / "metrics.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    return isinstance(card, dict) and isinstance(card.get("training"), dict)


def resolve_source(source: str, *, shapes_model: bool) -> str:
    """``auto`` -> ``shapes:train`` for a model trained on shapes, else ``photos``; others unchanged.

    Example:
        >>> resolve_source("auto", shapes_model=False), resolve_source("./frames", shapes_model=False)
        ('photos', './frames')
    """
    if source != AUTO:
        return source
    return "shapes:train" if shapes_model else PHOTOS
