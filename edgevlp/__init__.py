"""edgevlp: compress, export and run vision-language models on the edge.

The package root stays light: importing :mod:`edgevlp` pulls in neither torch nor transformers.
Heavy parts live in :mod:`edgevlp.models`, :mod:`edgevlp.compress` and :mod:`edgevlp.export`;
the deployable part is :mod:`edgevlp.runtime`.
"""

from __future__ import annotations

__version__ = "0.1.0"
__all__ = ["__version__"]
