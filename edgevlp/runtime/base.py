"""What every model loaded from a bundle shares: manifest, tokenizer, preprocessing spec."""

from __future__ import annotations

import numpy as np

from edgevlp.bundle import Manifest
from edgevlp.runtime.tokenizer import BundleTokenizer
from edgevlp.spec import PreprocessSpec

__all__ = ["BundleModel"]


class BundleModel:
    """Base of :class:`~edgevlp.runtime.Captioner` and :class:`~edgevlp.runtime.Detector`."""

    #: Name of the backend the graphs were opened with (set by :func:`edgevlp.runtime.load`).
    backend: str = ""

    def __init__(self, manifest: Manifest, tokenizer: BundleTokenizer) -> None:
        self.manifest = manifest
        self.tokenizer = tokenizer
        self.spec = PreprocessSpec.from_dict(manifest.preprocess)

    def preprocess(self, frame: np.ndarray) -> np.ndarray:
        """The exact float32 NCHW tensor fed to the vision/image graph for a BGR uint8 ``frame``."""
        from edgevlp.runtime.preprocess import preprocess

        return preprocess(frame, self.spec)[0]
