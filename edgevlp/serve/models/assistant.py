"""The VLM's BLS model: the requests of a dynamic batch (each a QUESTION about its IMAGE) are answered
together by the runtime's own :class:`~edgevlp.runtime.Assistant` over :class:`BLSSession` graphs
(vision tiles, ``embed_tokens``, one left-padded prefill and a KV-cache decode loop for the whole batch
on the decoder leaf), so the answers are the in-process runtime's. QUESTION is UTF-8 text (none: the
bundle's default captioning prompt); each request may set MAX_NEW_TOKENS (greedy rows are independent,
so a shared run truncated per row equals a run per row).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from edgevlp.errors import InputError
from edgevlp.runtime.assistant import Assistant
from edgevlp.serve.models._base import PythonModel, budget, error, frame_of, tensor, text_response, truncate

__all__ = ["TritonPythonModel"]

#: Longest question accepted, in UTF-8 bytes.
MAX_QUESTION_BYTES = 4096


class TritonPythonModel(PythonModel):
    def setup(self) -> None:
        self.assistant = Assistant(self.manifest, self.sessions(), self.tokenizer)
        self.default_max = int(self.manifest.generation.get("max_new_tokens", 64))
        self.limit = int(self.manifest.generation.get("max_length", 2048)) - 1

    def respond(self, requests: Sequence[Any]) -> list[Any]:
        responses: list[Any] = [None] * len(requests)
        asked: list[tuple[int, np.ndarray, str | None, int]] = []
        for i, r in enumerate(requests):
            try:
                asked.append((i, frame_of(r), self._question(r), budget(r, self.default_max, self.limit)))
            except Exception as err:  # noqa: BLE001 - a bad request is answered alone
                responses[i] = error(err)
        try:
            self._answer(asked, responses)
        except InputError:  # one request's prompt + budget passes the context: each alone, it alone fails
            for one in asked:
                try:
                    self._answer([one], responses)
                except Exception as err:  # noqa: BLE001
                    responses[one[0]] = error(err)
        return responses

    def _answer(self, asked: Sequence[tuple[int, np.ndarray, str | None, int]], responses: list[Any]) -> None:
        if not asked:
            return
        rows, frames, questions, budgets = zip(*asked)
        answers = self.assistant.ask_batch(list(frames), list(questions), max_new_tokens=max(budgets))
        eos = self.manifest.generation.get("eos_token_id")
        for i, answer, n in zip(rows, answers, budgets):
            tokens = truncate(answer.token_ids, n, eos)
            responses[i] = text_response(self.tokenizer.decode(tokens), tokens)

    @staticmethod
    def _question(request: Any) -> str | None:
        raw = tensor(request, "QUESTION", required=False)
        if raw is None:
            return None
        item = np.asarray(raw).reshape(-1)[0]
        data = item if isinstance(item, bytes) else str(item).encode()
        if len(data) > MAX_QUESTION_BYTES:
            raise InputError(f"the question is {len(data)} bytes; at most {MAX_QUESTION_BYTES} are served")
        try:
            return data.decode("utf-8")
        except UnicodeDecodeError:
            raise InputError("the question is not valid UTF-8 text") from None
