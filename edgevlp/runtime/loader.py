"""``load(bundle)``: verify, pick a backend, open every graph, return the runtime model of the bundle's task
(a Captioner or a Detector, named by :mod:`edgevlp.tasks`)."""

from __future__ import annotations

import os
from pathlib import Path

from edgevlp.bundle import Manifest, read_manifest
from edgevlp.errors import BackendUnavailableError
from edgevlp.runtime.backends import TARGET_PREFERENCES, Backend, available_backends, get_backend
from edgevlp.runtime.base import BundleModel
from edgevlp.runtime.tokenizer import BundleTokenizer
from edgevlp.tasks import get_task

__all__ = ["load", "choose_backend"]


def choose_backend(manifest: Manifest, backend: str | None = None, device: str | None = None) -> Backend:
    """The named backend, or the first of the target's preferences that is installed and can open
    every graph of the bundle (e.g. a jetson bundle without engines falls back to onnxruntime)."""
    if backend is not None:
        chosen = get_backend(backend, device=device, precision=manifest.precision)
        unreadable = [g.role for g in manifest.graphs.values() if not chosen.can_open(g)]
        if unreadable:
            raise BackendUnavailableError(
                f"backend {backend!r} cannot open graph(s) {unreadable} of this {manifest.target} bundle "
                f"({', '.join(sorted({g.format for g in manifest.graphs.values()}))}); pick another "
                "backend or re-export for it")
        return chosen
    installed = available_backends()
    preferences = TARGET_PREFERENCES.get(manifest.target, ("onnxruntime",))
    for name in preferences:
        if name not in installed:
            continue
        candidate = get_backend(name, device=device, precision=manifest.precision)
        if all(candidate.can_open(g) for g in manifest.graphs.values()):
            return candidate
    raise BackendUnavailableError(
        f"no installed backend can run this {manifest.target} bundle (tried {', '.join(preferences)}; "
        f"installed: {', '.join(installed) or 'none'}); install one, e.g. pip install "
        f"'edgevlp[{preferences[0]}]'")


def load(path: str | os.PathLike[str], backend: str | None = None, device: str | None = None, *,
         verify: bool = True) -> BundleModel:
    """Open a bundle. Hashes are verified unless ``verify=False`` (trusted read-only deployments).

    Example:
        >>> from edgevlp.runtime import load
        >>> model = load("bundles/blip-cpu")                  # doctest: +SKIP
        >>> model.caption(frame_bgr).text                     # doctest: +SKIP
    """
    manifest = read_manifest(path, verify=verify)
    root = Path(path)
    engine = choose_backend(manifest, backend, device)
    sessions = {role: engine.open(root, graph) for role, graph in manifest.graphs.items()}
    tokenizer = BundleTokenizer.from_file(root / manifest.tokenizer["file"])
    model = get_task(manifest.task).runtime_type()(manifest, sessions, tokenizer)
    model.backend = engine.name
    return model
