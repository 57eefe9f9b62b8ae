"""Shared fixtures: real photos (scikit-image) and tiny random models saved per architecture."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import numpy as np
import pytest

# Nothing in the test suite may reach a model hub.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
# The compression stage cache goes to a throwaway folder, never the user's ~/.cache.
os.environ["EDGEVLP_CACHE"] = tempfile.mkdtemp(prefix="edgevlp-test-cache-")

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="session")
def photos_rgb() -> dict[str, np.ndarray]:
    """Real photos bundled with scikit-image, RGB uint8."""
    from skimage import data

    return {"astronaut": data.astronaut(), "coffee": data.coffee(), "chelsea": data.chelsea()}


@pytest.fixture(scope="session")
def photos_bgr(photos_rgb: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """The same photos as BGR frames, the layout a camera gives (contiguous)."""
    return {k: np.ascontiguousarray(v[..., ::-1]) for k, v in photos_rgb.items()}


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory: pytest.TempPathFactory):
    """Factory: architecture -> directory holding a saved tiny random model (built once)."""
    cache: dict[str, Path] = {}

    def make(architecture: str) -> Path:
        if architecture not in cache:
            from edgevlp.models import tiny_adapter

            out = tmp_path_factory.mktemp(architecture)
            tiny_adapter(architecture).save_pretrained(out)
            cache[architecture] = out
        return cache[architecture]

    return make


@pytest.fixture(scope="session")
def exported(tiny_model_dir, tmp_path_factory):
    """Factory: (architecture, target) -> bundle of the tiny model, exported once per session."""
    from edgevlp.export import export_model

    cache: dict[tuple[str, str], Path] = {}

    def make(arch: str, target: str = "cpu") -> Path:
        if (arch, target) not in cache:
            out = tmp_path_factory.mktemp("bundles") / f"{arch}-{target}"
            export_model(tiny_model_dir(arch), out, target=target, progress=False)
            cache[arch, target] = out
        return cache[arch, target]

    return make
