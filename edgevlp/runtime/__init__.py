"""The deployable runtime: numpy, an inference engine and the C++ preprocessing extension.

Never imports torch or transformers (``tests/test_lean_import.py`` checks it in a fresh process).

Example:
    >>> from edgevlp.runtime import load
    >>> captioner = load("bundles/blip-cpu")            # doctest: +SKIP
    >>> captioner.caption(frame_bgr).text               # doctest: +SKIP
    >>> import numpy as np
    >>> from edgevlp.runtime import normalize
    >>> normalize(np.zeros((4, 6, 3), np.uint8), mean=(0.5,) * 3, std=(0.5,) * 3).shape
    (1, 3, 4, 6)
"""

from __future__ import annotations

from edgevlp.runtime.assistant import Assistant
from edgevlp.runtime.captioner import Captioner
from edgevlp.runtime.detector import Detector
from edgevlp.runtime.loader import load
from edgevlp.runtime.preprocess import normalize, normalize_reference
from edgevlp.runtime.results import Answer, Caption, Detections

__all__ = ["load", "Captioner", "Detector", "Assistant", "Caption", "Detections", "Answer", "normalize", "normalize_reference"]
