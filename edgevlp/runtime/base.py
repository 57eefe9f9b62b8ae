"""What every model loaded from a bundle shares: manifest, tokenizer, preprocessing spec."""

from __future__ import annotations

import numpy as np

from edgevlp.bundle import Manifest
from edgevlp.errors import InputError
from edgevlp.runtime.tokenizer import BundleTokenizer
from edgevlp.spec import PreprocessSpec

__all__ = ["BundleModel", "check_frame"]


def check_frame(frame: object, call: str) -> None:
    """Raise :class:`InputError` unless ``frame`` is a numpy array (its dtype and shape are checked by
    the preprocessing, with their own fixes); ``call`` names the method in the message.

    Example:
        >>> check_frame(np.zeros((2, 2, 3), np.uint8), "caption()")  # fine: returns None
    """
    if not isinstance(frame, np.ndarray):
        got = "None (cv2.imread returns None for a file it cannot read)" if frame is None else \
            type(frame).__name__
        raise InputError(f"{call} takes one BGR uint8 frame, a numpy array of shape (H, W, 3) as cv2.imread "
                         f"or VideoCapture.read give it; got {got}")


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
