"""Decoding strategies over a KV-cache decoder graph, in numpy: greedy and beam search.

Both return the token ids ``transformers`` 4.57 ``generate(..., do_sample=False)`` returns (the start
token stripped): greedy and beam search are mirrored step for step, the repetition penalty is
``RepetitionPenaltyLogitsProcessor`` (the start token counts as seen), and beam search keeps
``2 * num_beams`` candidates, scores finished hypotheses with the length penalty over the generated
length, applies the same early-stopping heuristic and pads the output the same way.

The decoder is anything with ``step(tokens) -> logits`` and ``reorder(rows)`` (see :class:`Decoder`);
:class:`CachedDecoder` drives a bundle's ``text_decoder`` graph.

Example:
    >>> import numpy as np
    >>> class Counting:  # a toy decoder: always prefers token (last + 1) % 4
    ...     def step(self, tokens):
    ...         return np.eye(4, dtype=np.float32)[(tokens + 1) % 4] * 5
    ...     def reorder(self, rows):
    ...         pass
    >>> greedy(Counting(), batch=1, start=0, max_new_tokens=5, eos=3, pad=0)
    array([[1, 2, 3]])
    >>> beam_search(Counting(), batch=1, start=0, num_beams=2, max_new_tokens=5, eos=3, pad=0)
    array([[1, 2, 3]])
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Protocol

import numpy as np

from edgevlp.errors import InputError
from edgevlp.runtime.backends import GraphSession

__all__ = ["Decoder", "CachedDecoder", "greedy", "beam_search", "apply_repetition_penalty",
           "check_generation_args", "generation_defaults"]

_NEG = np.float32(-1.0e9)  # transformers' "impossible" score in beam search


class Decoder(Protocol):
    """What the strategies need from a decoder: one step over every row, and a cache reorder."""

    def step(self, tokens: np.ndarray) -> np.ndarray:
        """Feed ``tokens`` (rows,) int64; return the next-token logits (rows, vocab) float32."""

    def reorder(self, rows: np.ndarray) -> None:
        """Make row ``i`` of the cache a copy of row ``rows[i]`` (beam search)."""


class CachedDecoder:
    """A bundle's ``text_decoder`` graph fed one token per step; the cache it returns is fed back.

    ``context`` holds the inputs that stay the same at every step, one row per decoded sequence (repeat
    them per beam first): the cross-attention keys/values from the bundle's ``cross_kv`` graph (or, in a
    bundle without one, ``encoder_hidden_states``). They are handed to the engine as they are, never
    copied per step; only the self-attention cache grows.

    Example:
        >>> decoder = CachedDecoder(session, context, past_names, present_names, empty)  # doctest: +SKIP
        >>> decoder.step(np.array([5, 5])).shape                                          # doctest: +SKIP
        (2, 100)
    """

    def __init__(self, session: GraphSession, context: Mapping[str, np.ndarray],
                 past_names: Sequence[str], present_names: Sequence[str],
                 empty_cache: Mapping[str, np.ndarray]) -> None:
        self.session = session
        self.past_names = list(past_names)
        self.present_names = list(present_names)
        self.feeds: dict[str, np.ndarray] = {**context, **{n: empty_cache[n] for n in self.past_names}}

    def step(self, tokens: np.ndarray) -> np.ndarray:
        self.feeds["input_ids"] = np.ascontiguousarray(tokens, dtype=np.int64).reshape(-1, 1)
        out = self.session.run(self.feeds)
        for past, present in zip(self.past_names, self.present_names):
            self.feeds[past] = out[present]
        return out["logits"][:, -1, :].astype(np.float32, copy=True)

    def reorder(self, rows: np.ndarray) -> None:
        # The context is the same for every beam of an image (beams never cross images): only the
        # self-attention cache follows the beams.
        for past in self.past_names:
            self.feeds[past] = np.take(self.feeds[past], rows, axis=0)


# ---------------------------------------------------------------------------------- validation
def check_generation_args(*, max_new_tokens: object, max_length: int | None, num_beams: object,
                          repetition_penalty: object, length_penalty: object,
                          early_stopping: object = False, min_new_tokens: object = 0) -> None:
    """Raise :class:`InputError` for values ``generate`` cannot honour (nothing is adjusted).

    Example:
        >>> check_generation_args(max_new_tokens=0, max_length=64, num_beams=1, repetition_penalty=1.0,
        ...                       length_penalty=1.0)
        Traceback (most recent call last):
        ...
        edgevlp.errors.InputError: max_new_tokens must be an integer in [1, 64], got 0
    """
    limit = f"[1, {max_length}]" if max_length else ">= 1"
    if (not _is_int(max_new_tokens) or max_new_tokens < 1  # type: ignore[operator]
            or (max_length and max_new_tokens > max_length)):  # type: ignore[operator]
        extra = (f" (the decoder holds at most {max_length} positions)"
                 if _is_int(max_new_tokens) and max_length and max_new_tokens > max_length else "")  # type: ignore[operator]
        raise InputError(f"max_new_tokens must be an integer in {limit}, got {max_new_tokens!r}{extra}")
    if not _is_int(min_new_tokens) or not 0 <= min_new_tokens <= max_new_tokens:  # type: ignore[operator]
        raise InputError(f"min_new_tokens must be an integer in [0, max_new_tokens={max_new_tokens}], got "
                         f"{min_new_tokens!r}")
    if not _is_int(num_beams) or num_beams < 1:  # type: ignore[operator]
        raise InputError(f"num_beams must be an integer >= 1 (1 is greedy), got {num_beams!r}")
    if not _is_real(repetition_penalty) or not repetition_penalty > 0:  # type: ignore[operator]
        raise InputError(f"repetition_penalty must be a finite number > 0 (1.0 is none), got "
                         f"{repetition_penalty!r}")
    if not _is_real(length_penalty):
        # Any finite value is transformers' (0: no normalisation, < 0: favours shorter captions).
        raise InputError(f"length_penalty must be a finite number (1.0 divides a hypothesis' log-prob by "
                         f"its length; larger favours longer captions), got {length_penalty!r}")
    if early_stopping not in (True, False, "never") or not isinstance(early_stopping, (bool, str)):
        raise InputError(f"early_stopping must be True, False or 'never', got {early_stopping!r}")


def _is_int(value: object) -> bool:
    return isinstance(value, (int, np.integer)) and not isinstance(value, (bool, np.bool_))


def _is_real(value: object) -> bool:
    return (isinstance(value, (int, float, np.integer, np.floating)) and not isinstance(value, bool)
            and math.isfinite(float(value)))  # type: ignore[arg-type]


# ---------------------------------------------------------------------------------- processors
def apply_repetition_penalty(scores: np.ndarray, seen: np.ndarray, penalty: float) -> None:
    """In place, ``RepetitionPenaltyLogitsProcessor``: for every token id in row ``r`` of ``seen``
    (rows, t) - the start token included - divide a positive score by ``penalty``, multiply a
    negative one.

    Example:
        >>> s = np.array([[2.0, -2.0, 1.0]], np.float32)
        >>> apply_repetition_penalty(s, np.array([[0, 1, 1]]), 2.0); s
        array([[ 1., -4.,  1.]], dtype=float32)
    """
    rows = np.arange(scores.shape[0])[:, None]
    picked = scores[rows, seen]
    scores[rows, seen] = np.where(picked < 0, picked * np.float32(penalty), picked / np.float32(penalty))


def _log_softmax(logits: np.ndarray) -> np.ndarray:
    shifted = logits - logits.max(axis=-1, keepdims=True)
    return shifted - np.log(np.exp(shifted).sum(axis=-1, keepdims=True))


def _topk(scores: np.ndarray, k: int) -> np.ndarray:
    """Indices of the ``k`` largest entries of each row, largest first (ties: lower index first)."""
    return np.argsort(-scores, axis=-1, kind="stable")[:, :k]


def _gather(array: np.ndarray, index: np.ndarray) -> np.ndarray:
    """``array[b, index[b, j], ...]`` for (batch, beams, ...) arrays (transformers' ``_gather_beams``)."""
    while index.ndim < array.ndim:
        index = index[..., None]
    return np.take_along_axis(array, index, axis=1)


# ---------------------------------------------------------------------------------- strategies
def greedy(decoder: Decoder, *, batch: int, start: int, max_new_tokens: int, eos: int | None,
           pad: int | None, repetition_penalty: float = 1.0, min_new_tokens: int = 0) -> np.ndarray:
    """Greedy ids (batch, T <= max_new_tokens), as ``transformers`` generates them: eos included,
    finished rows padded with ``pad``, stop when every row has finished.

    Example:
        >>> class Const:
        ...     def step(self, tokens): return np.tile(np.float32([0, 1, 3, 2]), (len(tokens), 1))
        ...     def reorder(self, rows): pass
        >>> greedy(Const(), batch=2, start=0, max_new_tokens=3, eos=None, pad=0)
        array([[2, 2, 2],
               [2, 2, 2]])
        >>> greedy(Const(), batch=1, start=0, max_new_tokens=3, eos=None, pad=0, repetition_penalty=4.0)
        array([[2, 3, 1]])
    """
    pad = int(pad if pad is not None else (eos if eos is not None else 0))
    seqs = np.full((batch, 1 + max_new_tokens), start, dtype=np.int64)
    unfinished = np.ones(batch, dtype=bool)
    length = 1
    for _ in range(max_new_tokens):
        logits = decoder.step(seqs[:, length - 1])
        if repetition_penalty != 1.0:
            apply_repetition_penalty(logits, seqs[:, :length], repetition_penalty)
        if eos is not None and length - 1 < min_new_tokens:
            logits[:, int(eos)] = -np.inf  # MinNewTokensLengthLogitsProcessor
        token = np.where(unfinished, logits.argmax(axis=-1), pad)
        seqs[:, length] = token
        length += 1
        if eos is not None:
            unfinished &= token != int(eos)
        if not unfinished.any():
            break
    return seqs[:, 1:length]


def beam_search(decoder: Decoder, *, batch: int, start: int, num_beams: int, max_new_tokens: int,
                eos: int | None, pad: int | None, length_penalty: float = 1.0,
                early_stopping: bool | str = False, repetition_penalty: float = 1.0,
                min_new_tokens: int = 0) -> np.ndarray:
    """Beam search ids (batch, T <= max_new_tokens), identical to ``transformers`` 4.57
    ``generate(num_beams=N, do_sample=False)`` without the start token.

    ``decoder`` holds ``batch * num_beams`` rows (beam ``j`` of image ``b`` is row ``b * num_beams +
    j``). A hypothesis' score is its summed log-probability divided by ``generated_length **
    length_penalty``; ``early_stopping`` is transformers' (False: heuristic, True: stop when
    ``num_beams`` hypotheses are finished, ``"never"``: exhaustive). Shorter outputs are padded with
    ``pad`` - or with ``eos`` where ``pad`` is 0 or None, as transformers does.

    Example:
        >>> class Toy:  # row-independent: prefers 1, then 2, then eos 3
        ...     def step(self, tokens): return np.eye(4, dtype=np.float32)[np.minimum(tokens + 1, 3)] * 4
        ...     def reorder(self, rows): pass
        >>> beam_search(Toy(), batch=2, start=0, num_beams=3, max_new_tokens=6, eos=3, pad=0)
        array([[1, 2, 3],
               [1, 2, 3]])
    """
    beams = num_beams
    prompt_len = 1
    max_length = prompt_len + max_new_tokens
    n_eos = 0 if eos is None else 1
    keep = max(2, 1 + n_eos) * beams
    top_mask = np.arange(keep) < beams
    # transformers: `pad_token_id or eos_token_id[0] if eos_token_id is not None else -1`
    fill = -1 if eos is None else (pad if pad else eos)
    offsets = np.arange(batch)[:, None] * beams

    running = np.full((batch, beams, max_length), fill, dtype=np.int64)
    running[:, :, 0] = start
    sequences = running.copy()
    running_scores = np.zeros((batch, beams), np.float32)
    running_scores[:, 1:] = _NEG
    scores = np.full((batch, beams), _NEG, np.float32)
    finished = np.zeros((batch, beams), dtype=bool)
    improvable = np.ones((batch, 1), dtype=bool)
    running_idx = np.full((batch, beams, max_length - prompt_len), -1, dtype=np.int32)
    indices = running_idx.copy()

    cur_len = prompt_len
    while True:
        logits = decoder.step(running[:, :, cur_len - 1].reshape(-1))
        log_probs = _log_softmax(logits)
        if repetition_penalty != 1.0:
            apply_repetition_penalty(log_probs, running[:, :, :cur_len].reshape(batch * beams, cur_len),
                                     repetition_penalty)
        if eos is not None and cur_len - prompt_len < min_new_tokens:
            log_probs[:, int(eos)] = -np.inf  # MinNewTokensLengthLogitsProcessor
        vocab = log_probs.shape[-1]
        log_probs = (log_probs.reshape(batch, beams, vocab) + running_scores[:, :, None])
        log_probs = log_probs.reshape(batch, beams * vocab)

        # Top 2 * num_beams continuations over beams x vocab.
        top = _topk(log_probs, keep)
        top_scores = np.take_along_axis(log_probs, top, axis=1)
        source = top // vocab
        top_seqs = _gather(running, source)
        top_seqs[:, :, cur_len] = top % vocab
        top_idx = _gather(running_idx, source)
        top_idx[:, :, cur_len - prompt_len] = source + offsets

        # Stopping criteria per candidate: max length reached, or eos just generated.
        hits = np.full((batch, keep), cur_len + 1 >= max_length)
        if eos is not None:
            hits |= top_seqs[:, :, cur_len] == eos

        # Best unfinished candidates keep running.
        top_running = top_scores + hits.astype(np.float32) * _NEG
        pick = _topk(top_running, beams)
        running = _gather(top_seqs, pick)
        running_scores = _gather(top_running, pick)
        running_idx = _gather(top_idx, pick)

        # Finished candidates among the top num_beams join the hypotheses if they score better.
        just_finished = hits & top_mask[None, :]
        done = top_scores / np.float32((cur_len + 1 - prompt_len) ** length_penalty)
        full = finished.all(axis=-1, keepdims=True) & (early_stopping is True)
        done = done + full.astype(np.float32) * _NEG
        done = done + (~improvable).astype(np.float32) * _NEG
        done = done + (~just_finished).astype(np.float32) * _NEG
        merged = _topk(np.concatenate([scores, done], axis=1), beams)
        sequences = _gather(np.concatenate([sequences, top_seqs], axis=1), merged)
        scores = _gather(np.concatenate([scores, done], axis=1), merged)
        indices = _gather(np.concatenate([indices, top_idx], axis=1), merged)
        finished = _gather(np.concatenate([finished, just_finished], axis=1), merged)

        beam_rows = running_idx[:, :, cur_len - prompt_len].reshape(-1)
        cur_len += 1
        if early_stopping == "never" and length_penalty > 0.0:
            best_len = max_length - prompt_len
        else:
            best_len = cur_len - prompt_len
        best_running = running_scores[:, :1] / np.float32(best_len ** length_penalty)
        worst_done = np.where(finished, scores.min(axis=1, keepdims=True), _NEG)
        improvable = improvable & (best_running > worst_done).any(axis=-1, keepdims=True)
        open_beams = not (finished.all() and early_stopping is True)
        if not (improvable.any() and open_beams and not hits.all()):
            break
        decoder.reorder(beam_rows)

    best = sequences[:, 0, :]
    generated = int((indices[:, 0, :] != -1).sum(axis=1).max())
    return best[:, prompt_len:prompt_len + generated]


def generation_defaults(settings: Mapping[str, object]) -> tuple[int, int | None, int]:
    """``(start, eos, pad)`` from a manifest's generation settings (pad falls back to eos, then 0)."""
    start = int(settings["decoder_start_token_id"])  # type: ignore[call-overload]
    eos = settings.get("eos_token_id")
    pad = settings.get("pad_token_id")
    eos_id = None if eos is None else int(eos)  # type: ignore[call-overload]
    pad_id = int(pad if pad is not None else (eos if eos is not None else 0))  # type: ignore[call-overload]
    return start, eos_id, pad_id
