"""Model resolution: torch-free, so bad input fails fast and cheaply.

A model argument (``arch:NAME`` preset, path, demo-zoo name, hub id) becomes a local directory; its
``config.json``'s ``architectures[0]`` picks the adapter (:mod:`edgevlp.models.adapters`).
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any

from edgevlp._io import read_json_object
from edgevlp.errors import ModelLoadError
from edgevlp.models.adapters import ADAPTERS, adapter_class, known_architectures

__all__ = ["ADAPTERS", "known_architectures", "adapter_class", "resolve_model_dir", "read_config",
           "ZOO_DIR"]

#: Shipped demo models live here, one folder per name (``edgevlp/zoo/demo-blip``).
ZOO_DIR = Path(__file__).resolve().parent.parent / "zoo"

_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*(/[\w.-]+)?$")


def read_config(model_dir: Path) -> dict[str, Any]:
    """Parse ``model_dir/config.json`` with errors that say which file and how to fix it."""
    path = model_dir / "config.json"
    if not path.is_file():
        raise ModelLoadError(
            f"{model_dir} is not a model directory: it has no config.json; pass a folder written by "
            "save_pretrained(), a hub id, or a demo-zoo name (see `edgevlp zoo`)"
        )
    return read_json_object(path, ModelLoadError, "re-save the model or fix the file")


def architecture_of(config: dict[str, Any], where: Path) -> str:
    """``architectures[0]`` of a parsed config, or a clear error."""
    archs = config.get("architectures")
    if not isinstance(archs, list) or not archs or not isinstance(archs[0], str):
        raise ModelLoadError(
            f"{where / 'config.json'} has no 'architectures' list, so the model family is unknown; "
            f"add e.g. \"architectures\": [\"BlipForConditionalGeneration\"] (known: "
            f"{', '.join(known_architectures())})"
        )
    return archs[0]


def resolve_model_dir(model: str | os.PathLike[str]) -> Path:
    """Turn a model argument into a local directory.

    Order: an ``arch:NAME`` preset (real shapes, random weights, built once into the cache; see
    :mod:`edgevlp.models.presets`); an existing path; a demo-zoo name (``demo-blip``); a Hugging Face hub
    id, taken from the local cache (and downloaded only when the hub is reachable and ``HF_HUB_OFFLINE``
    is unset).
    """
    text = os.fspath(model)
    if text.startswith("arch:"):
        from edgevlp.models.presets import materialize

        return materialize(text)
    path = Path(text).expanduser()
    if path.exists():
        if not path.is_dir():
            raise ModelLoadError(f"{path} is a file; pass the model's directory (the one with config.json)")
        return path
    if (ZOO_DIR / text).is_dir():
        return ZOO_DIR / text
    looks_like_path = text.startswith((".", "/", "~")) or os.sep in text.replace("/", "", 1) or \
        text.count("/") > 1
    if looks_like_path or not _HUB_ID.match(text):
        raise ModelLoadError(f"no such model directory: {text}; check the path (or run `edgevlp zoo`; "
                             "real-size shapes with random weights: arch:NAME, see edgevlp.models.presets)")
    return _from_hub(text)


def _from_hub(repo_id: str) -> Path:
    hint = (f"download it where there is network (`huggingface-cli download {repo_id} --local-dir DIR`) "
            f"and pass DIR in its place (every verb takes the model as its first argument, e.g. "
            f"`edgevlp info DIR`)")
    try:
        from huggingface_hub import snapshot_download
    except ImportError:
        raise ModelLoadError(
            f"{repo_id!r} is not a local directory and huggingface_hub is not installed "
            f"(pip install 'edgevlp[compress]'); or {hint}"
        ) from None
    offline = os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes", "on")
    try:
        local = snapshot_download(
            repo_id,
            local_files_only=offline,
            # Weights only as safetensors: never fetch pickles.
            allow_patterns=["*.json", "*.safetensors", "*.txt", "*.model", "merges.txt", "vocab.*"],
        )
    except Exception as err:  # noqa: BLE001 - hub raises many types; all mean "not available here"
        reason = type(err).__name__
        raise ModelLoadError(
            f"{repo_id!r} is not a local directory, a demo-zoo name, nor a model in the Hugging Face "
            f"cache ({reason}{', offline mode' if offline else ''}); {hint}"
        ) from None
    return Path(local)
