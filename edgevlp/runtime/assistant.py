"""Visual question answering from a bundle (LLM-based VLMs such as SmolVLM), torch-free.

Per call: the frame is split into tiles + a global image as the model's processor does
(:mod:`edgevlp.runtime.vlm_processing`), the chat template of the bundle is rendered around the question
and its ``<image>`` placeholder expanded; the vision graph encodes every tile once, ``embed_tokens`` embeds
the prompt and the image features replace the embeddings of its image tokens; the decoder runs the whole
prompt once (prefill: the time to the first token), then one token at a time on its grouped-query KV
cache. Greedy decoding gives the tokens transformers ``generate(do_sample=False)`` gives (export parity
checks it); sampling (temperature, top-k, top-p) is seeded with numpy.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np

from edgevlp.bundle import Manifest
from edgevlp.errors import InputError
from edgevlp.runtime.backends import GraphSession
from edgevlp.runtime.base import BundleModel, check_frame
from edgevlp.runtime.generation import apply_repetition_penalty
from edgevlp.runtime.results import Answer
from edgevlp.runtime.tokenizer import BundleTokenizer

__all__ = ["Assistant", "chat_prompt", "merge_image_features", "step_feeds"]


def chat_prompt(template: Any, prompt: Mapping[str, Any], question: str, rows: int, cols: int) -> str:
    """The prompt text for one image split into ``rows`` x ``cols`` tiles: ``template`` (a
    :class:`~edgevlp.runtime.vlm_processing.ChatTemplate`) rendered for one user turn (the image, then
    ``question``) with the generation prompt, and its image placeholder expanded as the model's
    processor does (``prompt``: the manifest's ``generation.prompt`` settings)."""
    from edgevlp.runtime.vlm_processing import build_prompt

    return build_prompt(template, question, rows, cols, int(prompt["image_seq_len"]),
                        image_token=prompt["image_token"], fake_token=prompt["fake_token"],
                        global_token=prompt["global_token"])


def step_feeds(embeds: np.ndarray, past: Mapping[str, np.ndarray], length: int) -> dict[str, np.ndarray]:
    """The decoder graph's inputs for ``embeds`` (1, n, hidden) after ``length`` cached positions held in
    ``past`` (the prefill is ``length`` 0 with an empty cache)."""
    n = embeds.shape[1]
    return {"inputs_embeds": embeds, "attention_mask": np.ones((1, length + n), np.int64),
            "position_ids": np.arange(length, length + n, dtype=np.int64)[None], **past}


def merge_image_features(embeds: np.ndarray, ids: list[int], features: np.ndarray, image_token_id: int) -> np.ndarray:
    """``embeds`` (1, len(ids), hidden) with the image ``features`` written over the image tokens, in
    order (what the model's ``inputs_merger`` does); in place, returned."""
    where = np.flatnonzero(np.asarray(ids) == image_token_id)
    flat = features.reshape(-1, features.shape[-1])
    if where.size != flat.shape[0]:
        raise InputError(f"the prompt has {where.size} image tokens but the image gave {flat.shape[0]} "
                         "features; the bundle's image_seq_len or chat template does not match its model")
    embeds[0, where] = flat
    return embeds


#: Images (tiles) per vision call. One at a time on CPUs: SmolVLM-256M's 13 tiles of a 451 x 300 photo
#: took 27.4 s in one onnxruntime call (its attention scores alone are 13 x 12 x 1024 x 1024 floats, 650 MB
#: per layer) and 13 x ~1.5 s one by one; transformers (SDPA) 22 s. Set ``Assistant.vision_batch``.
VISION_BATCH = 1


class Assistant(BundleModel):
    """``ask(frame, question)`` with the bundle's vision encoder, token embeddings and KV-cache decoder.

    Example:
        >>> from edgevlp.runtime import load
        >>> vlm = load("bundles/smolvlm-cpu")                               # doctest: +SKIP
        >>> vlm.ask(frame_bgr, "Is anyone at the door?").text                # doctest: +SKIP
        >>> vlm.ask(frame_bgr, "What is this?", do_sample=True, temperature=0.7, seed=1)  # doctest: +SKIP
    """

    def __init__(self, manifest: Manifest, sessions: Mapping[str, GraphSession],
                 tokenizer: BundleTokenizer) -> None:
        from edgevlp.runtime.vlm_processing import ChatTemplate, ImageSplitSpec

        super().__init__(manifest, tokenizer)
        self.vision = sessions["vision_encoder"]
        self.embed = sessions["embed_tokens"]
        self.decoder = sessions["decoder"]
        self.generation: dict[str, Any] = dict(manifest.generation)
        prompt = self.generation["prompt"]
        self.prompt: dict[str, Any] = dict(prompt)
        self.split_spec = ImageSplitSpec.from_dict(prompt["image_splitting"])
        self.template = ChatTemplate(prompt["chat_template"])
        self.image_token_id = int(prompt["image_token_id"])
        self.vision_batch = VISION_BATCH
        self._past = [t for t in self.decoder.graph.inputs if t.name.startswith("past_key_values")]
        self._present = [t.name for t in self.decoder.graph.outputs if t.name.startswith("present")]

    # ------------------------------------------------------------------------------ pipeline
    def prompt_ids(self, question: str, rows: int, cols: int) -> list[int]:
        """Token ids of the rendered chat prompt for one image split into ``rows`` x ``cols`` tiles."""
        text = chat_prompt(self.template, self.prompt, question, rows, cols)
        return list(self.tokenizer.tokenizer.encode(text, add_special_tokens=False).ids)

    def prefill_embeddings(self, ids: list[int], features: np.ndarray) -> np.ndarray:
        """``(1, len(ids), hidden)`` prompt embeddings with the image features over its image tokens."""
        embeds = self.embed.run({"input_ids": np.asarray([ids], np.int64)})["inputs_embeds"]
        return merge_image_features(embeds, ids, features, self.image_token_id)

    def encode(self, pixel_values: np.ndarray, pixel_attention_mask: np.ndarray) -> np.ndarray:
        """Image features of one frame's ``(1, images, 3, T, T)`` tiles, :attr:`vision_batch` images per
        vision call."""
        step = max(1, int(self.vision_batch))
        parts = [self.vision.run({"pixel_values": pixel_values[:, i:i + step],
                                  "pixel_attention_mask": pixel_attention_mask[:, i:i + step]})["image_features"]
                 for i in range(0, pixel_values.shape[1], step)]
        return parts[0] if len(parts) == 1 else np.concatenate(parts)

    def _step(self, embeds: np.ndarray, mask: np.ndarray, positions: np.ndarray,
              cache: dict[str, np.ndarray]) -> np.ndarray:
        """Run the decoder on ``embeds`` (batch, n, hidden) with the attention ``mask`` over cache + new
        positions; grows ``cache`` in place; the last position's logits (batch, vocab)."""
        out = self.decoder.run({"inputs_embeds": embeds, "attention_mask": mask, "position_ids": positions, **cache})
        for past, present in zip(self._past, self._present):
            cache[past.name] = out[present]
        return out["logits"][:, -1, :]

    def ask(self, frame: np.ndarray, question: str | None = None, *, max_new_tokens: int | None = None,
            min_new_tokens: int = 0, do_sample: bool = False, temperature: float = 1.0, top_k: int = 0,
            top_p: float = 1.0, repetition_penalty: float = 1.0, seed: int | None = None,
            image_splitting: bool | None = None, stream: Callable[[str], None] | None = None) -> Answer:
        """Answer ``question`` (default: the bundle's captioning prompt) about one BGR uint8 frame.

        Greedy unless ``do_sample``; ``temperature`` / ``top_k`` / ``top_p`` shape the sampling
        distribution as transformers' warpers do, ``seed`` makes it repeatable. ``stream`` receives the
        answer's text as it grows (each new piece, decoded with the tokens before it).
        ``image_splitting=False`` encodes only the global image (one vision call instead of rows x cols
        + 1: faster, less detail); None keeps the bundle's processor setting. The answer holds
        only the new tokens (the prompt stripped), eos included when reached.

        Example:
            >>> vlm.ask(frame_bgr, "How many people?", max_new_tokens=8, stream=print)   # doctest: +SKIP
        """
        return self.ask_many(frame, [question], max_new_tokens=max_new_tokens, min_new_tokens=min_new_tokens,
                             do_sample=do_sample, temperature=temperature, top_k=top_k, top_p=top_p,
                             repetition_penalty=repetition_penalty, seed=seed, image_splitting=image_splitting,
                             stream=stream)[0]

    def ask_many(self, frame: np.ndarray, questions: Sequence[str | None], **settings: Any) -> list[Answer]:
        """Answer several questions about one frame in one batch: the image is encoded once, the prompts
        are left-padded into one prefill and decoded together (each row stops at its own eos), as
        transformers ``generate`` does with a left-padded batch. Settings as :meth:`ask`; ``stream``
        only for one question.

        Example:
            >>> [a.text for a in vlm.ask_many(frame_bgr, ["What colour is it?", "How many?"])]  # doctest: +SKIP
        """
        if isinstance(questions, str) or not isinstance(questions, Sequence) or not questions:
            raise InputError("ask_many() takes a non-empty list of questions (ask() takes one)")
        return self.ask_batch([frame] * len(questions), questions, **settings)

    def ask_batch(self, frames: Sequence[np.ndarray], questions: Sequence[str | None], *,
                  max_new_tokens: int | None = None, min_new_tokens: int = 0, do_sample: bool = False,
                  temperature: float = 1.0, top_k: int = 0, top_p: float = 1.0, repetition_penalty: float = 1.0,
                  seed: int | None = None, image_splitting: bool | None = None,
                  stream: Callable[[str], None] | None = None) -> list[Answer]:
        """Answer ``questions[i]`` about ``frames[i]`` for every i in one batch (what a server does with
        the requests of a dynamic batch): each distinct frame (by identity) is split and encoded once,
        the prompts are left-padded into one prefill and decoded together, each row stopping at its own
        eos. Greedy rows are independent: each gets the tokens :meth:`ask` gives it alone. Settings as
        :meth:`ask`; ``stream`` only for one row.

        Example:
            >>> answers = vlm.ask_batch([front_bgr, back_bgr], ["Is the door open?", "How many cars?"])  # doctest: +SKIP
        """
        if isinstance(questions, str) or not isinstance(questions, Sequence) or not questions:
            raise InputError("ask_batch() takes a non-empty list of questions (ask() takes one)")
        if not isinstance(frames, Sequence) or len(frames) != len(questions):
            raise InputError(f"ask_batch() takes one frame per question: {len(questions)} questions, "
                             f"{len(frames) if isinstance(frames, Sequence) else 'no list of'} frames")
        for frame in frames:
            check_frame(frame, "ask()")
        default = self.prompt.get("default_prompt", "")
        questions = [default if q is None else q for q in questions]
        if any(not isinstance(q, str) or not q.strip() for q in questions):
            raise InputError("ask() takes a non-empty question string (or none: the bundle's default prompt)")
        if stream is not None and len(questions) > 1:
            raise InputError("stream= follows one answer: ask one question per call to stream it")
        max_new = int(self.generation.get("max_new_tokens", 64) if max_new_tokens is None else max_new_tokens)
        _check_sampling(max_new, min_new_tokens, temperature, top_k, top_p, repetition_penalty)
        from edgevlp.runtime.vlm_processing import split_image

        timings: dict[str, float] = {}
        t0 = time.perf_counter()
        spec = self.split_spec if image_splitting is None else \
            dataclasses.replace(self.split_spec, do_image_splitting=bool(image_splitting))
        distinct = {id(f): f for f in frames}  # each frame object once, in first-seen order
        slot = {key: k for k, key in enumerate(distinct)}
        row_image = [slot[id(f)] for f in frames]  # row -> index into splits and features
        splits = [split_image(f, spec) for f in distinct.values()]
        row_split = [splits[k] for k in row_image]
        prompts = [self.prompt_ids(q, s.rows, s.cols) for q, s in zip(questions, row_split)]
        limit = self.generation.get("max_length")
        longest = max(len(ids) for ids in prompts)
        if limit is not None and longest + max_new > int(limit):
            images = max(s.pixel_values.shape[1] for s in splits)
            raise InputError(f"the prompt is {longest} tokens ({images} images of "
                             f"{self.prompt['image_seq_len']} tokens and the question) and {max_new} new tokens "
                             f"would pass the model's context of {limit}: shorten the question, lower "
                             "max_new_tokens, or pass image_splitting=False")
        t1 = time.perf_counter()
        features = [self.encode(s.pixel_values, s.pixel_attention_mask) for s in splits]
        t2 = time.perf_counter()
        rows = len(prompts)
        pad = int(self.generation.get("pad_token_id") or 0)
        ids = np.full((rows, longest), pad, np.int64)
        mask = np.zeros((rows, longest), np.int64)
        for i, row in enumerate(prompts):  # left padding: every row's last position is its own last token
            ids[i, longest - len(row):] = row
            mask[i, longest - len(row):] = 1
        embeds = self.embed.run({"input_ids": ids})["inputs_embeds"]
        for i, k in enumerate(row_image):
            merge_image_features(embeds[i:i + 1], ids[i].tolist(), features[k], self.image_token_id)
        positions = np.where(mask == 1, mask.cumsum(1) - 1, 1)  # as generate: padding at position 1
        cache = {t.name: np.zeros((rows, int(t.shape[1]), 0, int(t.shape[3])), np.float32) for t in self._past}
        logits = self._step(embeds, mask, positions, cache)
        t3 = time.perf_counter()
        eos = self.generation.get("eos_token_id")
        stops = set(eos if isinstance(eos, list) else [] if eos is None else [eos])
        rng = np.random.default_rng(seed)
        seen = [list(row) for row in prompts]
        answers: list[list[int]] = [[] for _ in prompts]
        open_rows = list(range(rows))
        shown = ""
        steps = 0
        while True:
            scores = logits.astype(np.float32, copy=True)
            if repetition_penalty != 1.0:
                for i in open_rows:
                    apply_repetition_penalty(scores[i:i + 1], np.asarray([seen[i]]), repetition_penalty)
            if steps < min_new_tokens and stops:
                scores[:, sorted(stops)] = -np.inf
            tokens = np.full((rows, 1), pad, np.int64)  # a finished row goes on with padding, as generate's
            for i in open_rows:
                token = _sample(scores[i], temperature, top_k, top_p, rng) if do_sample else int(scores[i].argmax())
                answers[i].append(token)
                seen[i].append(token)
                tokens[i, 0] = token
            steps += 1
            if stream is not None:
                text = self.tokenizer.decode(answers[0])
                if text != shown:
                    stream(text[len(shown):] if text.startswith(shown) else text)
                    shown = text
            open_rows = [i for i in open_rows if answers[i][-1] not in stops and steps < max_new]
            if not open_rows:
                break
            embeds = self.embed.run({"input_ids": tokens})["inputs_embeds"]
            mask = np.concatenate([mask, np.ones((rows, 1), np.int64)], axis=1)
            positions = positions[:, -1:] + 1
            logits = self._step(embeds, mask, positions, cache)
        t4 = time.perf_counter()
        timings.update(preprocess=(t1 - t0) * 1e3, encode=(t2 - t1) * 1e3, prefill=(t3 - t2) * 1e3,
                       decode=(t4 - t3) * 1e3)
        if steps > 1:
            timings["decode_per_token"] = (t4 - t3) * 1e3 / (steps - 1)
        if rows > 1:
            timings["batch"] = float(rows)
        return [Answer(text=self.tokenizer.decode(a), token_ids=a, prompt_tokens=len(p),
                       images=int(split.pixel_values.shape[1]), timings=dict(timings))
                for a, p, split in zip(answers, prompts, row_split)]

    def caption(self, frame: np.ndarray, **generation: Any) -> Answer:
        """:meth:`ask` with the bundle's default (captioning) prompt."""
        return self.ask(frame, None, **generation)


def _check_sampling(max_new: int, min_new: int, temperature: float, top_k: int, top_p: float,
                    penalty: float) -> None:
    problems = []
    if not isinstance(max_new, int) or max_new < 1:
        problems.append(f"max_new_tokens must be an int >= 1 (got {max_new!r})")
    if not isinstance(min_new, int) or min_new < 0:
        problems.append(f"min_new_tokens must be an int >= 0 (got {min_new!r})")
    if not temperature > 0:
        problems.append(f"temperature must be > 0 (got {temperature!r}); use do_sample=False for greedy")
    if not isinstance(top_k, int) or top_k < 0:
        problems.append(f"top_k must be an int >= 0, 0 = off (got {top_k!r})")
    if not 0 < top_p <= 1:
        problems.append(f"top_p must be in (0, 1] (got {top_p!r})")
    if not penalty > 0:
        problems.append(f"repetition_penalty must be > 0 (got {penalty!r})")
    if problems:
        raise InputError("; ".join(problems))


def _sample(scores: np.ndarray, temperature: float, top_k: int, top_p: float, rng: np.random.Generator) -> int:
    """One token from ``softmax(scores / temperature)`` restricted as transformers' TopK and TopP warpers
    restrict it (top-k first, then the smallest set whose probability reaches ``top_p``)."""
    logits = scores.astype(np.float64) / temperature
    if top_k:
        kth = np.sort(logits)[-min(top_k, logits.size)]
        logits = np.where(logits < kth, -np.inf, logits)
    probs = np.exp(logits - logits.max())
    probs /= probs.sum()
    if top_p < 1.0:
        order = np.argsort(probs, kind="stable")  # ascending, as TopPLogitsWarper
        cumulative = np.cumsum(probs[order])
        drop = order[cumulative <= 1 - top_p]
        if drop.size == probs.size:
            drop = drop[:-1]  # always keep the most likely token
        probs[drop] = 0.0
        probs /= probs.sum()
    return int(rng.choice(probs.size, p=probs))
