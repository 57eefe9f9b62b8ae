"""``edgevlp zoo train NAME``: train a demo-zoo model from scratch on shape scenes.

Example:
    >>> from edgevlp.zoo.train import train
    >>> train("demo-blip", steps=20, out="/tmp/blip-smoke", tiny=True)    # doctest: +SKIP
"""

from __future__ import annotations

import json
import os
import shlex
from dataclasses import asdict
from pathlib import Path
from typing import Any

from edgevlp.errors import InputError

__all__ = ["RECIPES", "train", "recipe_for", "save_shipped"]

#: name -> "module:Class" of its recipe (imported lazily: both import torch).
RECIPES: dict[str, str] = {
    "demo-blip": "edgevlp.zoo.blip_recipe:BlipRecipe",
    "demo-owlvit": "edgevlp.zoo.owlvit_recipe:OwlViTRecipe",
    "demo-smolvlm": "edgevlp.zoo.smolvlm_recipe:SmolVLMRecipe",
}
TARGETS = {
    "demo-blip": "CIDEr >= 2.0 and the shape word right for >= 80 % of objects (shape_accuracy) on shapes:val",
    "demo-owlvit": "mAP@.5 >= 0.7 on shapes:val, >= 0.5 on shapes:heldout",
    "demo-smolvlm": "VQA accuracy (vqa_accuracy, exact match) >= 0.8 on shapes:val questions",
}


def recipe_for(name: str) -> Any:
    """A fresh recipe object for a zoo name."""
    import importlib

    target = RECIPES.get(name)
    if target is None:
        raise InputError(f"unknown demo model {name!r}; trainable: {', '.join(sorted(RECIPES))}")
    module, cls = target.split(":")
    return getattr(importlib.import_module(module), cls)()


def save_shipped(adapter: Any, out: Path) -> None:
    """Save ``adapter`` into ``out`` with float16 weights and a float32 config (loads as float32)."""
    import torch

    model = adapter.model
    model.to(torch.float16)
    try:
        adapter.save_pretrained(out)
    finally:
        model.to(torch.float32)
    cfg_path = out / "config.json"
    cfg = json.loads(cfg_path.read_text())
    for key in ("torch_dtype", "dtype"):
        if key in cfg:
            cfg[key] = "float32"  # storage is fp16; compute (and from_pretrained's default) stays fp32
    cfg_path.write_text(json.dumps(cfg, indent=2, sort_keys=True) + "\n")


def _last_logged_eval(out_dir: Path) -> dict[str, float]:
    """The last quick evaluation in the run's log (a resumed, already finished run evaluates nothing)."""
    log = out_dir / ".train" / "log.jsonl"
    last: dict[str, float] = {}
    if log.is_file():
        for line in log.read_text().splitlines():
            record = json.loads(line)
            last = record.get("eval", last)
    return last


def train(name: str, *, steps: int | None = None, out: str | os.PathLike[str] | None = None, seed: int = 0,
          resume: bool = False, batch_size: int | None = None, lr: float | None = None, tiny: bool = False,
          eval_every: int | None = None, eval_n: int | None = None, checkpoint_every: int | None = None,
          warmup: int | None = None, progress: bool = True, command: str | None = None,
          minutes: float | None = None, device: str = "cpu", threads: int | None = None,
          bf16: bool | None = None, init_from: str | os.PathLike[str] | None = None) -> Path:
    """Train demo model ``name`` and save it (fp16 weights, tokenizer, processor, card) in ``out``.

    ``tiny`` builds a toy-sized config (for tests). Returns ``out``. Checkpoints go to ``out/.train``
    every ``checkpoint_every`` steps; ``resume=True`` continues from there with the same settings (to
    the checkpoint's step count unless ``steps`` is given). ``minutes`` budgets a new run: its first
    steps are timed and ``steps`` becomes what fits (the card gives the ``--steps`` that reproduce it).
    ``device`` is a torch device (``cuda`` trains on a GPU; the card's metrics are measured on CPU).
    ``init_from`` starts from a trained model's weights (a warm restart; the card records it).
    """
    from edgevlp._training import STATE_DIR, TrainSettings, run
    from edgevlp.zoo.card import environment, write_card

    recipe = recipe_for(name)
    d = dict(recipe.defaults)
    overrides = dict(steps=steps, batch_size=batch_size, lr=lr, eval_every=eval_every, eval_n=eval_n,
                     checkpoint_every=checkpoint_every, warmup=warmup, threads=threads, bf16=bf16)
    d.update({k: v for k, v in overrides.items() if v is not None})
    out_dir = Path(out) if out is not None else Path("out") / name
    state = out_dir / STATE_DIR / "state.json"
    if resume and steps is None and state.is_file():
        d["steps"] = int(json.loads(state.read_text())["settings"]["steps"])
    settings = TrainSettings(name=name, seed=seed, tiny=tiny, minutes=minutes, device=device,
                             init_from=None if init_from is None else str(init_from), **d)
    result = run(recipe, settings, out_dir, resume=resume, progress=progress)
    settings = result.settings  # a --minutes budget has fixed its step count
    recipe.finalize(result.adapter)
    save_shipped(result.adapter, out_dir)
    if command is None:
        command = f"edgevlp zoo train {name} --steps {settings.steps} --seed {seed} --out {shlex.quote(str(out_dir))}"
        if settings.lr != recipe.defaults.get("lr"):
            command += f" --lr {settings.lr:g}"
        if settings.init_from is not None:
            command += f" --init-from {shlex.quote(settings.init_from)}"
        if settings.batch_size != recipe.defaults.get("batch_size"):
            command += f" --batch-size {settings.batch_size}"
        if device != "cpu":
            command += f" --device {device}"
        if settings.threads != 2:
            command += f" --threads {settings.threads}"  # float sums (and so the weights) depend on it
    last = result.last_eval or _last_logged_eval(out_dir)
    data = {
        "name": name, "task": result.adapter.task, "family": recipe.family,
        "parameters": sum(p.numel() for p in result.adapter.model.parameters()),
        "image_size": recipe.image_size,
        "training": {**asdict(settings), "command": command, "images_seen": settings.steps * settings.batch_size,
                     "wall_time_min": round(result.wall_time_s / 60, 1),
                     "final_quick_eval": {"data": f"shapes:val:{settings.eval_n}", **last}},
        "environment": environment(),
        "targets": TARGETS.get(name, ""),
        "metrics": {},
    }
    write_card(out_dir, data)
    return out_dir
