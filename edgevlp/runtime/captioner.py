"""Captioning from a bundle: per image the vision graph and the cross-attention keys/values (``cross_kv``)
once, then the KV-cache decoder token by token (numpy)."""

from __future__ import annotations

import time
from collections.abc import Mapping
from typing import Any

import numpy as np

from edgevlp.bundle import Manifest
from edgevlp.errors import InputError
from edgevlp.runtime.backends import GraphSession
from edgevlp.runtime.generation import (CachedDecoder, beam_search, check_generation_args,
                                        generation_defaults, greedy)
from edgevlp.runtime.results import Caption
from edgevlp.runtime.tokenizer import BundleTokenizer
from edgevlp.runtime.base import BundleModel, check_frame

__all__ = ["Captioner"]


class Captioner(BundleModel):
    """Greedy (or beam) captioning with the bundle's vision encoder and KV-cache text decoder.

    Example:
        >>> from edgevlp.runtime import load
        >>> captioner = load("bundles/blip-cpu")                  # doctest: +SKIP
        >>> captioner.caption(frame_bgr).text                      # doctest: +SKIP
        'a small red circle to the left of a blue square'
    """

    def __init__(self, manifest: Manifest, sessions: Mapping[str, GraphSession],
                 tokenizer: BundleTokenizer) -> None:
        super().__init__(manifest, tokenizer)
        self.vision = sessions["vision_encoder"]
        self.decoder = sessions["text_decoder"]
        #: cross-attention keys/values once per image; None in bundles whose decoder recomputes them
        self.cross_kv = sessions.get("cross_kv")
        self.generation: dict[str, Any] = dict(manifest.generation)
        self._past_names = [t.name for t in self.decoder.graph.inputs if t.name.startswith("past_")]
        self._present_names = [t.name for t in self.decoder.graph.outputs if t.name.startswith("present")]
        # (heads, head_dim) of each cache input: heads differ per layer in a pruned decoder
        self._past_dims = {t.name: (int(t.shape[1]), int(t.shape[3]))
                           for t in self.decoder.graph.inputs if t.name.startswith("past_")}

    def empty_cache(self, rows: int) -> dict[str, np.ndarray]:
        """Zero-length self-attention cache inputs for ``rows`` sequences (the first decoder step)."""
        return {n: np.zeros((rows, h, 0, d), np.float32) for n, (h, d) in self._past_dims.items()}

    # ------------------------------------------------------------------------------ pipeline
    def encode(self, pixel_values: np.ndarray) -> np.ndarray:
        return self.vision.run({"pixel_values": pixel_values})["encoder_hidden_states"]

    def decoder_context(self, encoder_hidden_states: np.ndarray) -> dict[str, np.ndarray]:
        """The decoder inputs that stay fixed for an image: its cross-attention keys/values, computed
        here once (or the encoder states themselves for a bundle without a ``cross_kv`` graph)."""
        if self.cross_kv is None:
            return {"encoder_hidden_states": encoder_hidden_states}
        return self.cross_kv.run({"encoder_hidden_states": encoder_hidden_states})

    def generate(self, pixel_values: np.ndarray, *, max_new_tokens: int | None = None,
                 num_beams: int = 1, repetition_penalty: float = 1.0, length_penalty: float = 1.0,
                 early_stopping: bool | str = False, min_new_tokens: int = 0,
                 timings: dict[str, float] | None = None) -> np.ndarray:
        """Token ids (B, T) for a batch of preprocessed images, as ``transformers`` ``generate(...,
        do_sample=False)`` returns them without the start token: eos included, shorter rows padded.

        ``num_beams`` 1 is greedy, more is beam search (``length_penalty`` and ``early_stopping`` as in
        transformers); ``repetition_penalty`` > 1 discourages repeated tokens; eos is not generated
        before ``min_new_tokens`` (benchmarks: a fixed token count). ``max_new_tokens`` defaults to the
        bundle's setting. Invalid values raise :class:`InputError`.

        Example:
            >>> captioner.generate(pixels, num_beams=3, max_new_tokens=12).shape   # doctest: +SKIP
            (1, 9)
        """
        max_new = max_new_tokens if max_new_tokens is not None else int(
            self.generation.get("max_new_tokens", 20))
        check_generation_args(max_new_tokens=max_new, max_length=self.generation.get("max_length"),
                              num_beams=num_beams, repetition_penalty=repetition_penalty,
                              length_penalty=length_penalty, early_stopping=early_stopping,
                              min_new_tokens=min_new_tokens)
        pixel_values = np.asarray(pixel_values)
        if pixel_values.ndim != 4:
            raise InputError(f"pixel_values must be a (batch, 3, H, W) array, got shape {pixel_values.shape}; "
                             "use caption(frame) for a single image")
        start, eos, pad = generation_defaults(self.generation)
        t0 = time.perf_counter()
        enc = self.encode(pixel_values)
        context = self.decoder_context(enc)
        t1 = time.perf_counter()
        batch = enc.shape[0]
        if num_beams > 1:  # row b * num_beams + j: beam j of image b
            context = {k: np.repeat(v, num_beams, axis=0) for k, v in context.items()}
        decoder = CachedDecoder(self.decoder, context, self._past_names, self._present_names,
                                self.empty_cache(batch * num_beams))
        if num_beams == 1:
            ids = greedy(decoder, batch=batch, start=start, max_new_tokens=int(max_new), eos=eos, pad=pad,
                         repetition_penalty=float(repetition_penalty), min_new_tokens=int(min_new_tokens))
        else:
            ids = beam_search(decoder, batch=batch, start=start, num_beams=int(num_beams),
                              max_new_tokens=int(max_new), eos=eos, pad=pad,
                              length_penalty=float(length_penalty), early_stopping=early_stopping,
                              repetition_penalty=float(repetition_penalty),
                              min_new_tokens=int(min_new_tokens))
        if timings is not None:
            timings["encode"] = (t1 - t0) * 1e3
            timings["decode"] = (time.perf_counter() - t1) * 1e3
        return ids

    def caption(self, frame: np.ndarray, **generation: Any) -> Caption:
        """Caption one BGR uint8 frame; ``generation`` takes :meth:`generate`'s options.

        Example:
            >>> captioner.caption(frame_bgr, num_beams=3, repetition_penalty=1.3).text   # doctest: +SKIP
        """
        check_frame(frame, "caption()")
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

