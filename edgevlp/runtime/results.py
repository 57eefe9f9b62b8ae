"""Result dataclasses returned by the runtime."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

__all__ = ["Caption", "Detections", "Answer", "Timings"]

Timings = dict  # stage -> milliseconds: preprocess, encode, decode, postprocess


@dataclass(frozen=True)
class Caption:
    """A caption: decoded ``text``, generated ``token_ids`` (without the start token), ``timings`` in ms."""

    text: str
    token_ids: list[int]
    timings: dict[str, float] = field(default_factory=dict)


@dataclass(frozen=True)
class Answer:
    """A VLM's answer: decoded ``text``, the answer's ``token_ids`` (the prompt stripped, eos included when
    reached), the prompt's length in tokens, the number of images (tiles + global) its vision graph saw,
    and ``timings`` in ms: preprocess, encode (vision), prefill (time to the first token after encode),
    decode, decode_per_token."""

    text: str
    token_ids: list[int]
    prompt_tokens: int = 0
    images: int = 0
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
