"""The detector ensemble's Python steps (config parameter ``edgevlp_step``), each the runtime's own code
(:class:`~edgevlp.runtime.Detector`), so boxes and scores are the in-process runtime's:

- ``preprocess``: IMAGE -> the image leaf's pixel values + the frame transform (6 float64s);
- ``prompts``: PROMPTS (UTF-8 BYTES) -> normalised text embeddings through the text leaf, kept per
  prompt set (LRU), so a camera that keeps its prompts costs the text encoder once;
- ``postprocess``: image heads + text embeddings + transform + THRESHOLD -> BOXES (frame pixels, xyxy),
  SCORES, LABELS (indices into the request's prompts).

No step but the last fails a request. A bad IMAGE or PROMPTS makes its step answer with a placeholder and
the reason in ``REFUSED`` (empty when all is well); ``postprocess``, where both branches join, turns a
reason into the request's error. An ensemble step that errors while the other branch is still running
makes Triton drop the request under that branch (a hang for an empty image, a crash in
``TRITONBACKEND_ResponseSend`` seen once); a request refused at the join has nothing left in flight.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from edgevlp.errors import InputError
from edgevlp.runtime.detector import Detector
from edgevlp.runtime.preprocess import Transform, preprocess
from edgevlp.serve.models._base import PythonModel, frame_of, pb_utils, per_request, tensor

__all__ = ["TritonPythonModel"]

_TRANSFORM_FIELDS = ("scale_x", "scale_y", "offset_x", "offset_y", "frame_width", "frame_height")


class TritonPythonModel(PythonModel):
    def setup(self) -> None:
        sessions = self.sessions()
        self.detector = Detector(self.manifest, {"image_encoder": None, "text_encoder": sessions.get("text_encoder")},
                                 self.tokenizer)
        self.step = self.params["edgevlp_step"]
        self.heads = [t.name for t in self.manifest.graphs["image_encoder"].outputs]
        self.pixel_name = self.manifest.graphs["image_encoder"].inputs[0].name
        self.cache: OrderedDict[tuple[str, ...], np.ndarray] = OrderedDict()
        self.cache_size = int(self.json_param("edgevlp_prompt_cache", 64))
        self.max_prompts = int(self.json_param("edgevlp_max_prompts", 64))
        self.work = {"preprocess": self._refusable(self._preprocess, self._image_placeholder()),
                     "prompts": self._refusable(self._prompts, self._prompts_placeholder()),
                     "postprocess": self._postprocess}[self.step]

    def respond(self, requests: Sequence[Any]) -> list[Any]:
        return per_request(requests, self.work)

    def _refusable(self, work: Callable[[Any], dict[str, np.ndarray]], placeholder: dict[str, np.ndarray]
                   ) -> Callable[[Any], Any]:
        """``work``'s outputs and an empty ``REFUSED``; for a request it refuses, ``placeholder`` and
        the reason."""
        def run(request: Any) -> Any:
            try:
                outputs, reason = work(request), ""
            except InputError as err:
                outputs, reason = placeholder, str(err)
            refused = np.array([[reason.encode("utf-8")]], dtype=object)
            return pb_utils.InferenceResponse([*(pb_utils.Tensor(n, v) for n, v in outputs.items()),
                                               pb_utils.Tensor("REFUSED", refused)])
        return run

    def _image_placeholder(self) -> dict[str, np.ndarray]:
        return self._pixels(np.zeros((8, 8, 3), np.uint8))

    def _prompts_placeholder(self) -> dict[str, np.ndarray]:
        dim = self.manifest.graphs["text_encoder"].outputs[0].shape[-1]
        return {"TEXT_EMBEDS": np.zeros((1, 1, int(dim)), np.float32)}

    def _pixels(self, frame: np.ndarray) -> dict[str, np.ndarray]:
        pixels, t = preprocess(frame, self.detector.spec)
        transform = np.array([[getattr(t, f) for f in _TRANSFORM_FIELDS]], dtype=np.float64)
        return {self.pixel_name: pixels, "TRANSFORM": transform}

    def _preprocess(self, request: Any) -> dict[str, np.ndarray]:
        return self._pixels(frame_of(request))

    def _prompts(self, request: Any) -> dict[str, np.ndarray]:
        raw = tensor(request, "PROMPTS")
        assert raw is not None
        items = list(np.asarray(raw).reshape(-1))
        if len(items) > self.max_prompts:
            raise InputError(f"{len(items)} prompts in one request; this repository serves at most "
                             f"{self.max_prompts} (the profile's num_queries)")
        prompts = []
        for p in items:
            try:
                prompts.append(p.decode("utf-8") if isinstance(p, bytes) else str(p))
            except UnicodeDecodeError:
                raise InputError(f"prompt {p[:40]!r} is not valid UTF-8 text") from None
        key = tuple(prompts)
        embeds = self.cache.get(key)
        if embeds is None:
            embeds = self.detector.embed_prompts(prompts)
            self.cache[key] = embeds
            if len(self.cache) > self.cache_size:
                self.cache.popitem(last=False)
        else:
            self.cache.move_to_end(key)
        return {"TEXT_EMBEDS": embeds[None].astype(np.float32)}

    def _postprocess(self, request: Any) -> Any:
        for name in ("IMAGE_REFUSED", "PROMPTS_REFUSED"):
            reason = np.asarray(tensor(request, name)).reshape(-1)[0]
            if reason:
                raise InputError(reason.decode("utf-8") if isinstance(reason, bytes) else str(reason))
        heads = {n: tensor(request, n) for n in self.heads}
        embeds = tensor(request, "TEXT_EMBEDS")
        values = np.asarray(tensor(request, "TRANSFORM"), np.float64).reshape(-1)
        threshold = float(np.asarray(tensor(request, "THRESHOLD")).reshape(-1)[0])
        if not np.isfinite(threshold):
            raise InputError(f"THRESHOLD must be a number in [0, 1], got {threshold}")
        t = Transform(*(float(v) for v in values[:4]), int(values[4]), int(values[5]))
        found = self.detector.postprocess(heads, embeds[0], t.to_frame, threshold=threshold)
        return pb_utils.InferenceResponse([
            pb_utils.Tensor("BOXES", found.boxes_xyxy.reshape(1, -1, 4)),
            pb_utils.Tensor("SCORES", found.scores.reshape(1, -1)),
            pb_utils.Tensor("LABELS", found.labels.reshape(1, -1))])
