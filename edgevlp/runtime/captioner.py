"""Captioning from a bundle: vision graph once, then the KV-cache decoder token by token (numpy)."""

from __future__ import annotations

import time
from collections.abc import Mapping
from typing import Any

import numpy as np

from edgevlp.bundle import Manifest
from edgevlp.errors import InputError
from edgevlp.runtime.backends import GraphSession
from edgevlp.runtime.results import Caption
from edgevlp.runtime.tokenizer import BundleTokenizer
from edgevlp.spec import PreprocessSpec

__all__ = ["Captioner"]


class Captioner:
    """Greedy (or beam) captioning with the bundle's vision encoder and KV-cache text decoder.

    Example:
        >>> from edgevlp.runtime import load
        >>> captioner = load("bundles/blip-cpu")                  # doctest: +SKIP
        >>> captioner.caption(frame_bgr).text                      # doctest: +SKIP
        'a small red circle to the left of a blue square'
    """

    def __init__(self, manifest: Manifest, sessions: Mapping[str, GraphSession],
                 tokenizer: BundleTokenizer) -> None:
        self.manifest = manifest
        self.vision = sessions["vision_encoder"]
        self.decoder = sessions["text_decoder"]
        self.tokenizer = tokenizer
        self.spec = PreprocessSpec.from_dict(manifest.preprocess)
        self.generation: dict[str, Any] = dict(manifest.generation)
        self._past_names = [t.name for t in self.decoder.graph.inputs if t.name.startswith("past_")]
        self._present_names = [t.name for t in self.decoder.graph.outputs if t.name.startswith("present")]
        past = next(t for t in self.decoder.graph.inputs if t.name.startswith("past_"))
        self._heads, self._head_dim = int(past.shape[1]), int(past.shape[3])

    # ------------------------------------------------------------------------------ pipeline
    def preprocess(self, frame: np.ndarray) -> np.ndarray:
        """The exact float32 NCHW tensor fed to the vision graph for a BGR uint8 ``frame``."""
        from edgevlp.runtime.preprocess import preprocess

        return preprocess(frame, self.spec)[0]

    def encode(self, pixel_values: np.ndarray) -> np.ndarray:
        return self.vision.run({"pixel_values": pixel_values})["encoder_hidden_states"]

    def generate(self, pixel_values: np.ndarray, *, max_new_tokens: int | None = None,
                 repetition_penalty: float = 1.0,
                 timings: dict[str, float] | None = None) -> np.ndarray:
        """Greedy token ids (B, T) for a batch of preprocessed images, as ``transformers`` generates
        them: eos included, finished rows padded with pad_token_id, stop when all rows finished."""
        max_new = int(max_new_tokens if max_new_tokens is not None else
                      self.generation.get("max_new_tokens", 20))
        if max_new < 1:
            raise InputError(f"max_new_tokens must be >= 1, got {max_new}")
        if repetition_penalty <= 0:
            raise InputError(f"repetition_penalty must be > 0, got {repetition_penalty}")
        t0 = time.perf_counter()
        enc = self.encode(pixel_values)
        t1 = time.perf_counter()
        batch = enc.shape[0]
        start = int(self.generation["decoder_start_token_id"])
        eos, pad = self.generation.get("eos_token_id"), self.generation.get("pad_token_id")
        pad = int(pad if pad is not None else (eos if eos is not None else 0))
        ids = np.full((batch, 1), start, dtype=np.int64)
        empty = np.zeros((batch, self._heads, 0, self._head_dim), np.float32)
        feeds: dict[str, np.ndarray] = {"encoder_hidden_states": enc,
                                        **{n: empty for n in self._past_names}}
        unfinished = np.ones(batch, dtype=bool)
        generated: list[np.ndarray] = []
        for _ in range(max_new):
            feeds["input_ids"] = ids
            out = self.decoder.run(feeds)
            logits = out["logits"][:, -1, :].astype(np.float32, copy=True)
            if repetition_penalty != 1.0:
                _apply_repetition_penalty(logits, [start, *generated], repetition_penalty, batch)
            token = logits.argmax(axis=-1).astype(np.int64)
            token = np.where(unfinished, token, pad)
            generated.append(token)
            if eos is not None:
                unfinished &= token != int(eos)
            if not unfinished.any():
                break
            ids = token[:, None]
            for past, present in zip(self._past_names, self._present_names):
                feeds[past] = out[present]
        if timings is not None:
            timings["encode"] = (t1 - t0) * 1e3
            timings["decode"] = (time.perf_counter() - t1) * 1e3
        return np.stack(generated, axis=1)

    def caption(self, frame: np.ndarray, **generation: Any) -> Caption:
        """Caption one BGR uint8 frame."""
        timings: dict[str, float] = {}
        t0 = time.perf_counter()
        pixels = self.preprocess(frame)
        timings["preprocess"] = (time.perf_counter() - t0) * 1e3
        ids = self.generate(pixels, timings=timings, **generation)[0]
        t1 = time.perf_counter()
        eos = self.generation.get("eos_token_id")
        tokens = [int(t) for t in ids]
        if eos is not None and int(eos) in tokens:
            tokens = tokens[: tokens.index(int(eos)) + 1]
        text = self.tokenizer.decode(tokens)
        timings["postprocess"] = (time.perf_counter() - t1) * 1e3
        return Caption(text=text, token_ids=tokens, timings=timings)


def _apply_repetition_penalty(logits: np.ndarray, history: list[Any], penalty: float,
                              batch: int) -> None:
    """transformers' RepetitionPenaltyLogitsProcessor: divide positive, multiply negative logits of
    every token already in the sequence (the start token included)."""
    seen = np.stack([np.broadcast_to(np.asarray(h, dtype=np.int64), (batch,)) for h in history], axis=1)
    rows = np.arange(batch)[:, None]
    picked = logits[rows, seen]
    logits[rows, seen] = np.where(picked < 0, picked * penalty, picked / penalty)
