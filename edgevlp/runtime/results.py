"""Result dataclasses returned by the runtime."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

__all__ = ["Caption", "Detections", "Timings"]

Timings = dict  # stage -> milliseconds: preprocess, encode, decode, postprocess


@dataclass(frozen=True)
class Caption:
    """A caption: decoded ``text``, generated ``token_ids`` (without the start token), ``timings`` in ms."""

    text: str
    token_ids: list[int]
    timings: dict[str, float] = field(default_factory=dict)


@dataclass(frozen=True)
class Detections:
    """Detections in frame pixels: ``boxes_xyxy`` (N,4) float32, ``scores`` (N,), ``labels`` (N,)
    indices into ``label_names`` (the prompts), ``timings`` in ms."""

    boxes_xyxy: np.ndarray
    scores: np.ndarray
    labels: np.ndarray
    label_names: list[str]
    timings: dict[str, float] = field(default_factory=dict)

    def __len__(self) -> int:
        return int(self.scores.shape[0])
