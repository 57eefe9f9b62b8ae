"""Parity: the exported graphs, run by the runtime, against the source model on real photos.

Captioners: encoder states, first-step logits and greedy decoding of N new tokens (ids must be
identical at fp32). Detectors: final class logits (image graph + text graph + the runtime's class head),
boxes and objectness, for two prompt sets. Every output's max abs difference is recorded.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

import cv2
import numpy as np
import torch

from edgevlp.bundle import Manifest
from edgevlp.errors import ExportError
from edgevlp.models.base import CaptionerAdapter, DetectorAdapter, ModelAdapter
from edgevlp.runtime.captioner import Captioner
from edgevlp.runtime.detector import Detector
from edgevlp.runtime.loader import choose_backend
from edgevlp.runtime.preprocess import normalize_reference
from edgevlp.runtime.tokenizer import BundleTokenizer
from edgevlp.spec import PreprocessSpec
from edgevlp.tasks import get_task

__all__ = ["PROMPT_SETS", "parity_photos", "parity_pixels", "check_parity", "captioner_parity", "detector_parity",
           "assistant_parity"]

PROMPT_SETS = (["a photo of a cat", "red circle"], ["blue square", "a small green triangle", "dog"])
PHOTOS = ("astronaut", "coffee")
#: The question a VLM's parity asks besides its default (captioning) prompt.
VQA_QUESTION = "What is in this image?"


def parity_photos() -> dict[str, np.ndarray]:
    """Two real photos (scikit-image), RGB uint8."""
    from skimage import data

    return {name: getattr(data, name)() for name in PHOTOS}


def parity_pixels(spec: PreprocessSpec, photos: dict[str, np.ndarray]) -> np.ndarray:
    """A (2, 3, H, W) batch: each photo resized to the model size and normalised."""
    _, _, h, w = spec.input_shape
    rows = []
    for rgb in photos.values():
        small = cv2.resize(rgb, (w, h), interpolation=cv2.INTER_AREA)
        rows.append(normalize_reference(small, spec.mean, spec.std, spec.rescale, swap_rb=False))
    return np.concatenate(rows)


@dataclass
class _Diffs:
    """Worst max |diff| per output over the parity runs, against ``atol + rtol * max|source|``; with
    ``min_cosine`` (INT8), an output also passes when its cosine similarity to the source reaches it:
    quantisation noise is judged by its energy, not by the one element that rounds worst."""

    atol: float
    rtol: float
    min_cosine: float | None = None

    def __post_init__(self) -> None:
        self.outputs: dict[str, dict[str, Any]] = {}

    def add(self, name: str, got: np.ndarray, ref: np.ndarray) -> None:
        ref = np.asarray(ref, dtype=np.float64)
        got = np.asarray(got, dtype=np.float64)
        if got.shape != ref.shape:
            raise ExportError(f"parity: output {name!r} has shape {got.shape}, source has {ref.shape}")
        diff = float(np.abs(got - ref).max()) if ref.size else 0.0
        scale = float(np.abs(ref).max()) if ref.size else 0.0
        allowed = self.atol + self.rtol * scale
        denom = float(np.linalg.norm(ref) * np.linalg.norm(got))
        cosine = float((ref.ravel() @ got.ravel()) / denom) if denom > 0 else float(np.array_equal(ref, got))
        prev = self.outputs.get(name)
        ok = diff <= allowed or (self.min_cosine is not None and cosine >= self.min_cosine)
        if prev is None or not ok or (prev["ok"] and diff > prev["max_abs_diff"]):
            self.outputs[name] = {"max_abs_diff": diff, "max_abs_source": scale, "allowed": allowed,
                                  "cosine": round(cosine, 6), "ok": ok}


def captioner_parity(adapter: CaptionerAdapter, model: Captioner, pixels: np.ndarray, diffs: _Diffs,
                     new_tokens: int) -> dict[str, Any]:
    """Encoder states, cross-attention keys/values, first-step logits and ``new_tokens`` greedy tokens."""
    px = torch.from_numpy(pixels)
    with torch.no_grad():
        ref_enc = adapter.encode_image(px).numpy()
        ref_logits = adapter.forward(px)["logits"].numpy()
    enc = model.encode(pixels)
    diffs.add("encoder_hidden_states", enc, ref_enc)
    context = model.decoder_context(enc)
    if model.cross_kv is not None:
        with torch.no_grad():
            ref_cross = adapter.cross_attention_kv(torch.from_numpy(ref_enc)) or []
        from edgevlp.export.hoist import PREFIX  # the step's own work on them, moved here: not the model's

        got = [context[name] for name in model.cross_kv.output_names if not name.startswith(PREFIX)]
        ref = [t.numpy() for kv in ref_cross for t in kv]
        diffs.add("cross_attention_kv", np.concatenate([g.ravel() for g in got]),
                  np.concatenate([r.ravel() for r in ref]))
    start = int(model.generation["decoder_start_token_id"])
    feeds = {"input_ids": np.full((pixels.shape[0], 1), start, np.int64), **context}
    feeds.update(model.empty_cache(pixels.shape[0]))
    diffs.add("logits", model.decoder.run(feeds)["logits"], ref_logits)
    ref_ids = adapter.generate(px, max_new_tokens=new_tokens).numpy()
    got_ids = model.generate(pixels, max_new_tokens=new_tokens)
    single = model.generate(pixels[:1], max_new_tokens=new_tokens)
    identical = (got_ids.shape == ref_ids.shape and bool((got_ids == ref_ids).all())
                 and single.shape[1] <= got_ids.shape[1]
                 and bool((single[0] == got_ids[0, : single.shape[1]]).all()))
    return {"greedy_new_tokens": new_tokens, "greedy_tokens_identical": identical,
            "source_token_ids": ref_ids.tolist(), "exported_token_ids": got_ids.tolist()}


def detector_parity(adapter: DetectorAdapter, model: Detector, pixels: np.ndarray,
                    diffs: _Diffs) -> dict[str, Any]:
    """Class logits (image graph + text graph + the runtime's class head), boxes and objectness, for
    each of :data:`PROMPT_SETS`."""
    heads = model.heads(pixels)
    for prompts in PROMPT_SETS:
        ref = adapter.forward(torch.from_numpy(pixels), prompts=prompts)
        q = model.embed_prompts(prompts)
        diffs.add("logits", model.class_logits(heads, q), ref["logits"].numpy())
        diffs.add("pred_boxes", heads["pred_boxes"], ref["pred_boxes"].numpy())
        if "objectness_logits" in ref:
            diffs.add("objectness_logits", heads["objectness_logits"], ref["objectness_logits"].numpy())
    return {"prompt_sets": [list(p) for p in PROMPT_SETS]}


def assistant_parity(adapter: Any, model: Any, diffs: _Diffs, new_tokens: int) -> dict[str, Any]:
    """Per parity photo, with the bundle's image splitting (several tiles) and without it (one image):
    the vision graph on the processor's own tiles against the model's image features, the runtime's
    prompt ids against the processor's, and the greedy answer (runtime preprocessing end to end)
    against transformers ``generate``, for the default prompt and one question."""
    from edgevlp.runtime.vlm_processing import split_image

    splittings = (True, False) if model.split_spec.do_image_splitting else (False,)
    cases, identical, prompts_identical = [], True, True
    for name, rgb in parity_photos().items():
        bgr = np.ascontiguousarray(rgb[..., ::-1])
        for split, question in zip(splittings, (adapter.default_prompt, VQA_QUESTION)):
            ref = adapter.reference_inputs(rgb, question, split)
            mask = ref["pixel_attention_mask"]
            got = model.vision.run({"pixel_values": ref["pixel_values"].numpy(),
                                    "pixel_attention_mask": mask.numpy().astype(bool)})["image_features"]
            diffs.add("image_features", got, adapter.forward(ref["pixel_values"], pixel_attention_mask=mask)
                      ["image_features"].numpy())
            answer = model.ask(bgr, question, max_new_tokens=new_tokens, image_splitting=split)
            ref_ids = adapter.answer_ids(rgb, question, new_tokens, splitting=split)[0].tolist()
            spec = dataclasses.replace(model.split_spec, do_image_splitting=split)
            tiles = split_image(bgr, spec)
            same_prompt = model.prompt_ids(question, tiles.rows, tiles.cols) == ref["input_ids"][0].tolist()
            prompts_identical &= same_prompt
            identical &= answer.token_ids == ref_ids
            cases.append({"image": name, "image_splitting": split, "images": answer.images, "question": question,
                          "prompt_tokens": answer.prompt_tokens, "source_token_ids": ref_ids,
                          "exported_token_ids": answer.token_ids})
    return {"greedy_new_tokens": new_tokens, "greedy_tokens_identical": identical,
            "prompt_ids_identical": prompts_identical, "cases": cases}


def check_parity(adapter: ModelAdapter, manifest: Manifest, *, atol: float, rtol: float,
                 new_tokens: int = 20, require_identical_tokens: bool = True,
                 min_cosine: float | None = None) -> dict[str, Any]:
    """Run the bundle at ``manifest.path`` and the source model; raise :class:`ExportError` naming the
    first output beyond tolerance (``min_cosine``: see :class:`_Diffs`). Returns the record written
    into the manifest."""
    assert manifest.path is not None
    backend = choose_backend(manifest)
    sessions = {role: backend.open(manifest.path, g) for role, g in manifest.graphs.items()}
    tokenizer = BundleTokenizer.from_file(manifest.path / manifest.tokenizer["file"])
    photos = parity_photos()
    pixels = parity_pixels(PreprocessSpec.from_dict(manifest.preprocess), photos)
    diffs = _Diffs(atol, rtol, min_cosine)
    # Graphs made static (batch 1) for TensorRT take the photos one at a time.
    first = next(iter(manifest.graphs.values())).inputs[0]
    batches = [pixels] if isinstance(first.shape[0], str) else [pixels[i:i + 1] for i in range(len(pixels))]
    task = get_task(adapter.task)
    extra: dict[str, Any] = {}
    for batch in batches:
        model = task.runtime_type()(manifest, sessions, tokenizer)
        extra = task.parity(adapter, model, batch, diffs, new_tokens=new_tokens, so_far=extra)
    tolerance = {"atol": atol, "rtol": rtol, **({"or_min_cosine": min_cosine} if min_cosine is not None else {})}
    record = {"backend": backend.name, "images": list(photos), "tolerance": tolerance,
              "outputs": diffs.outputs, **extra}
    bad = [(n, o) for n, o in diffs.outputs.items() if not o["ok"]]
    tokens_bad = require_identical_tokens and extra.get("greedy_tokens_identical") is False
    record["passed"] = not bad and not tokens_bad
    if bad:
        name, o = bad[0]
        cos = f" and cosine {o['cosine']:.4f} < {min_cosine}" if min_cosine is not None else ""
        raise ExportError(f"parity failed for output {name!r}: max |exported - source| = "
                          f"{o['max_abs_diff']:.3g} > allowed {o['allowed']:.3g} (atol {atol} + rtol "
                          f"{rtol} x {o['max_abs_source']:.3g}){cos}; use a higher precision or "
                          "--skip-parity to write an unverified bundle")
    if tokens_bad:
        cases = extra.get("cases") or [extra]
        first = next((c for c in cases if c["source_token_ids"] != c["exported_token_ids"]), cases[0])
        raise ExportError(f"parity failed: greedy decoding of {new_tokens} tokens differs from "
                          f"transformers (source {first['source_token_ids']}, exported "
                          f"{first['exported_token_ids']}); use --skip-parity to write it unverified")
    return record
