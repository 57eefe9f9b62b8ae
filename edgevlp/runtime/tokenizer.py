"""Run-time tokenizer: the bundle's ``tokenizer.json`` through the ``tokenizers`` package only."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
from tokenizers import Tokenizer

from edgevlp.errors import BundleError, InputError

__all__ = ["BundleTokenizer"]


class BundleTokenizer:
    """Encode prompts (padded to a fixed length) and decode generated ids.

    Example:
        >>> tok = BundleTokenizer.from_file("bundle/tokenizer.json")   # doctest: +SKIP
        >>> tok.decode([101, 2054])                                     # doctest: +SKIP
    """

    def __init__(self, tokenizer: Tokenizer) -> None:
        # Padding/truncation are ours to apply (a silently truncated prompt would change its meaning).
        tokenizer.no_truncation()
        tokenizer.no_padding()
        self.tokenizer = tokenizer

    @classmethod
    def from_file(cls, path: Path) -> "BundleTokenizer":
        try:
            return cls(Tokenizer.from_file(str(path)))
        except Exception as err:  # noqa: BLE001 - tokenizers raises plain Exceptions
            raise BundleError(f"could not read tokenizer {path}: {err}") from None

    def decode(self, ids: Sequence[int]) -> str:
        return self.tokenizer.decode([int(i) for i in ids], skip_special_tokens=True)

    def encode_prompts(self, prompts: Sequence[str], *, length: int,
                       pad_id: int) -> tuple[np.ndarray, np.ndarray]:
        """``(input_ids, attention_mask)``, int64 of shape (len(prompts), length)."""
        ids = np.full((len(prompts), length), pad_id, dtype=np.int64)
        mask = np.zeros((len(prompts), length), dtype=np.int64)
        for row, enc in enumerate(self.tokenizer.encode_batch(list(prompts))):
            tokens = enc.ids
            if len(tokens) > length:
                raise InputError(f"prompt {prompts[row]!r} is {len(tokens)} tokens long; the model takes "
                                 f"at most {length}: shorten it")
            ids[row, : len(tokens)] = tokens
            mask[row, : len(tokens)] = 1
        return ids, mask
