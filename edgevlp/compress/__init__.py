"""Compression: recipes (data) -> stages (prune, distil, quantise) -> a directory `edgevlp export` reads.

Importing this package is torch-free (recipes only); :func:`compress_model` imports torch, onnx and the
quantisers when called.

Example:
    >>> from edgevlp.compress import load_recipe, compress_model
    >>> recipe = load_recipe("recipes/int8-ptq.toml")                          # doctest: +SKIP
    >>> report = compress_model("demo-blip", recipe, "out/blip-int8")          # doctest: +SKIP
    >>> report["graphs"]["vision_encoder"]["min_cosine"] > 0.99               # doctest: +SKIP
    True
"""

from __future__ import annotations

from typing import Any

from edgevlp.compress.record import COMPRESSED_FORMAT  # ``format`` of ``compression.json``
from edgevlp.compress.recipe import (RECIPE_VERSION, CalibrationConfig, DistillConfig, FallbackConfig,
                                     PruneConfig, QuantConfig, QuantScheme, Recipe, load_recipe)

__all__ = ["RECIPE_VERSION", "CalibrationConfig", "DistillConfig", "FallbackConfig", "PruneConfig",
           "QuantConfig", "QuantScheme", "Recipe", "load_recipe", "compress_model", "apply_stage",
           "COMPRESSED_FORMAT"]



def __getattr__(name: str) -> Any:  # heavy entry points, imported on first use
    if name == "compress_model":
        from edgevlp.compress.pipeline import compress_model

        return compress_model
    if name == "apply_stage":
        from edgevlp.compress.stages import apply_stage

        return apply_stage
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
