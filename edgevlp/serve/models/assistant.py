"""The VLM's BLS model: each request's question about its image, answered by the runtime's own
:class:`~edgevlp.runtime.Assistant` over :class:`BLSSession` graphs (vision tiles, ``embed_tokens``,
prefill + KV-cache decode on the decoder leaf), so the answers are the in-process runtime's. QUESTION
is UTF-8 text (none: the bundle's default captioning prompt); MAX_NEW_TOKENS per request.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from edgevlp.errors import InputError
from edgevlp.runtime.assistant import Assistant
from edgevlp.serve.models._base import PythonModel, frame_of, pb_utils, per_request, tensor

__all__ = ["TritonPythonModel"]

#: Longest question accepted, in UTF-8 bytes.
MAX_QUESTION_BYTES = 4096


class TritonPythonModel(PythonModel):
    def setup(self) -> None:
        self.assistant = Assistant(self.manifest, self.sessions(), self.tokenizer)

    def respond(self, requests: Sequence[Any]) -> list[Any]:
        return per_request(requests, self._answer)

    def _answer(self, request: Any) -> Any:
        frame = frame_of(request)
        question = None
        raw = tensor(request, "QUESTION", required=False)
        if raw is not None:
            item = np.asarray(raw).reshape(-1)[0]
            data = item if isinstance(item, bytes) else str(item).encode()
            if len(data) > MAX_QUESTION_BYTES:
                raise InputError(f"the question is {len(data)} bytes; at most {MAX_QUESTION_BYTES} are served")
            try:
                question = data.decode("utf-8")
            except UnicodeDecodeError:
                raise InputError("the question is not valid UTF-8 text") from None
        budget = tensor(request, "MAX_NEW_TOKENS", required=False)
        options = {} if budget is None else {"max_new_tokens": int(np.asarray(budget).reshape(-1)[0])}
        answer = self.assistant.ask(frame, question, **options)
        return pb_utils.InferenceResponse([
            pb_utils.Tensor("TEXT", np.array([[answer.text.encode("utf-8")]], dtype=object)),
            pb_utils.Tensor("TOKEN_IDS", np.array([answer.token_ids], dtype=np.int64))])
