"""The deployable runtime: numpy, an inference engine and the C++ preprocessing extension.

Never imports torch or transformers (``tests/test_lean_import.py`` checks it in a fresh process).
The bundle loader (``load``), ``Captioner`` and ``Detector`` land with the runtime issue (#5).

Example:
    >>> import numpy as np
    >>> from edgevlp.runtime import normalize
    >>> frame = np.zeros((4, 6, 3), np.uint8)
    >>> normalize(frame, mean=(0.5,) * 3, std=(0.5,) * 3).shape
    (1, 3, 4, 6)
"""

from __future__ import annotations

from edgevlp.runtime.preprocess import normalize, normalize_reference

__all__ = ["normalize", "normalize_reference"]
