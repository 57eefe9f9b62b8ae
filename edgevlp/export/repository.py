"""``export_repository``: a model or bundle -> a serving repository (``--target triton``).

A bundle is wrapped as it is (verified); a model is first exported, into a temp dir beside the output,
for the bundle target the chosen leaf serves (:data:`edgevlp.targets.REPOSITORY_TARGETS`).
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Any

from edgevlp._lazy import import_object
from edgevlp.bundle import is_bundle
from edgevlp.errors import BundleError, InputError
from edgevlp.targets import REPOSITORY_TARGETS

__all__ = ["export_repository"]


def export_repository(model: str | os.PathLike[str], output: str | os.PathLike[str], *, target: str = "triton",
                      leaf: str = "python", precision: str | None = None,
                      profile: str | os.PathLike[str] | None = None, name: str | None = None,
                      settings: dict[str, Any] | None = None, force: bool = False, skip_parity: bool = False,
                      progress: bool = True) -> dict[str, Any]:
    """Write the ``target`` repository of ``model`` (a bundle, or anything `edgevlp export` takes).

    ``settings`` override the profile's ``[serve]`` table (``max_batch_size``, ``queue_delay_us``,
    ``instances``, ``kind``, ``batching``, ``prompt_cache``).

    Example:
        >>> export_repository("demo-owlvit", "triton-repo", leaf="python")["models"]   # doctest: +SKIP
        ['owlvit', 'owlvit_image_encoder', 'owlvit_postprocess', ...]
    """
    if target not in REPOSITORY_TARGETS:
        raise InputError(f"unknown repository target {target!r}; known: {', '.join(REPOSITORY_TARGETS)}")
    row = REPOSITORY_TARGETS[target]
    leaves = import_object(row.leaves)
    if leaf not in leaves:
        raise InputError(f"unknown --leaf {leaf!r}; choose one of {', '.join(leaves)}")
    out = Path(output)
    if out.is_dir() and any(out.iterdir()) and not force:
        raise BundleError(f"output directory {out} is not empty; pass --force to replace it")
    write = import_object(row.writer)
    from edgevlp.serve.repository import ServeSettings

    ServeSettings.from_profile({}, **(settings or {}))  # a bad setting fails before any export

    def wrap(bundle: Path) -> dict[str, Any]:
        from edgevlp.bundle import read_manifest

        manifest = read_manifest(bundle, verify=False)
        chosen = ServeSettings.from_profile(manifest.target_profile.get("serve", {}), **(settings or {}))
        return write(bundle, out, leaf=leaf, name=name, settings=chosen, force=force)

    if is_bundle(model):
        if precision is not None or profile is not None:
            raise InputError(f"{model} is a bundle: it keeps its own precision and profile; pass the model "
                             "instead to export it anew with --precision / --profile")
        return wrap(Path(model))
    from edgevlp.export.exporter import export_model

    out.absolute().parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=f".{out.name}.bundle-", dir=out.absolute().parent) as tmp:
        bundle = Path(tmp) / "bundle"
        export_model(model, bundle, target=leaves[leaf].bundle_target, precision=precision, profile=profile,
                     skip_parity=skip_parity, progress=progress)
        return wrap(bundle)
