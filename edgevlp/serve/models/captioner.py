"""The captioner's BLS model: the requests of a dynamic batch are preprocessed, encoded by the vision
leaf as one batch, and decoded in step on the decoder leaf (one BLS request per token for the whole
batch), by the runtime's own :class:`~edgevlp.runtime.Captioner` over :class:`BLSSession` graphs, so
the tokens are the in-process runtime's. Each request may set MAX_NEW_TOKENS (rows stop at their own
budget or eos: greedy rows are independent, so a shared run truncated per row equals a run per row).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from edgevlp.runtime.captioner import Captioner
from edgevlp.serve.models._base import PythonModel, budget, error, frame_of, text_response, truncate

__all__ = ["TritonPythonModel"]


class TritonPythonModel(PythonModel):
    def setup(self) -> None:
        self.captioner = Captioner(self.manifest, self.sessions(), self.tokenizer)
        self.default_max = int(self.manifest.generation.get("max_new_tokens", 20))
        self.limit = int(self.manifest.generation.get("max_length", 512)) - 1

    def respond(self, requests: Sequence[Any]) -> list[Any]:
        responses: list[Any] = [None] * len(requests)
        pixels, budgets, rows = [], [], []
        for i, r in enumerate(requests):
            try:
                n = budget(r, self.default_max, self.limit)
                pixels.append(self.captioner.preprocess(frame_of(r)))
                budgets.append(n)
                rows.append(i)
            except Exception as err:  # noqa: BLE001 - a bad request is answered alone
                responses[i] = error(err)
        if rows:
            ids = self.captioner.generate(np.concatenate(pixels), max_new_tokens=max(budgets))
            eos = self.manifest.generation.get("eos_token_id")
            for row, i, n in zip(range(len(rows)), rows, budgets):
                tokens = truncate(ids[row], n, eos)
                responses[i] = text_response(self.tokenizer.decode(tokens), tokens)
        return responses
