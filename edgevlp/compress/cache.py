"""A content-addressed cache of trained compression stages (pruning + distillation results).

Training is the slow part of a recipe (minutes to hours); quantisation is seconds. When a recipe's
leading stages include training, their result is stored under a key made of the input model's files
and those stages' settings, so the same model + same stages reuse it: the user cache
(``$EDGEVLP_CACHE/stages``, default ``~/.cache/edgevlp/stages``) first, then the entries shipped with
the demo zoo (``edgevlp/zoo/stage-cache``: the flagship recipe's prune + distill result for the demo
models, so ``make demo`` runs the flagship recipe in minutes). Each entry is a saved model plus
``stages.json`` (the key's inputs and the stage reports of the run that made it).

Example:
    >>> key = stage_key(Path("edgevlp/zoo/demo-blip"), load_recipe("recipes/prune30-kd.toml").stages)  # doctest: +SKIP
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from edgevlp.compress.recipe import STAGE_KEYS, DistillConfig, QuantConfig

__all__ = ["stage_key", "lookup", "store", "ship", "cacheable_prefix", "read_reports", "SHIPPED", "user_cache"]

CACHE_VERSION = 1
SHIPPED = Path(__file__).resolve().parent.parent / "zoo" / "stage-cache"
_KEY_OF = {cls: key for key, cls in STAGE_KEYS.items()}


def user_cache() -> Path:
    return Path(os.environ.get("EDGEVLP_CACHE", "~/.cache/edgevlp")).expanduser() / "stages"


def cacheable_prefix(stages: Sequence[Any]) -> int:
    """How many leading stages are cached: every stage before quantisation, if one of them trains."""
    n = next((i for i, s in enumerate(stages) if isinstance(s, QuantConfig)), len(stages))
    return n if any(isinstance(s, DistillConfig) for s in stages[:n]) else 0


def _model_digest(model_dir: Path) -> str:
    h = hashlib.sha256()
    for path in sorted(model_dir.glob("*.safetensors")) + [model_dir / "config.json"]:
        h.update(path.name.encode())
        with path.open("rb") as f:
            for chunk in iter(lambda: f.read(1 << 20), b""):
                h.update(chunk)
    return h.hexdigest()


def stage_key(model_dir: Path, stages: Sequence[Any]) -> str:
    """The cache key of running ``stages`` on the model saved in ``model_dir``."""
    body = json.dumps({"version": CACHE_VERSION, "model": _model_digest(model_dir),
                       "stages": [{_KEY_OF[type(s)]: s.to_dict()} for s in stages]}, sort_keys=True)
    return hashlib.sha256(body.encode()).hexdigest()[:24]


def lookup(key: str) -> Path | None:
    """The cached model folder for ``key`` (user cache first, then the shipped entries), if any."""
    for root in (user_cache(), SHIPPED):
        if (root / key / "stages.json").is_file() and (root / key / "config.json").is_file():
            return root / key
    return None


def read_reports(entry: Path) -> list[dict[str, Any]]:
    return json.loads((entry / "stages.json").read_text(encoding="utf-8"))["reports"]


def store(key: str, adapter: Any, reports: list[dict[str, Any]], source: str) -> Path | None:
    """Save ``adapter`` as the cache entry ``key`` (written to a temporary folder, then renamed)."""
    root = user_cache()
    final = root / key
    tmp = root / f".{key}.tmp"
    try:
        root.mkdir(parents=True, exist_ok=True)
        shutil.rmtree(tmp, ignore_errors=True)
        adapter.save_pretrained(tmp)
        (tmp / "stages.json").write_text(json.dumps({"key": key, "source": source, "reports": reports},
                                                    indent=2) + "\n", encoding="utf-8")
        shutil.rmtree(final, ignore_errors=True)
        os.replace(tmp, final)
    except OSError:  # a read-only or full home: caching is an optimisation, never a failure
        shutil.rmtree(tmp, ignore_errors=True)
        return None
    return final


def ship(entry: Path) -> Path:
    """Copy a user-cache entry into the shipped cache with float16 weights (half the size; loads as
    float32). How the demo zoo's entries were made, after `edgevlp compress demo-X --recipe ...`."""
    from edgevlp.models import load_model
    from edgevlp.zoo.train import save_shipped

    entry = Path(entry)
    out = SHIPPED / entry.name
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    save_shipped(load_model(entry), out)
    shutil.copyfile(entry / "stages.json", out / "stages.json")
    return out
