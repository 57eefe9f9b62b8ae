"""The training loop shared by the demo-zoo recipes and distillation: seeded, resumable, with progress and
checkpoints.

A :class:`Recipe` says how to build a model, draw a batch for a step, compute the loss and run a quick
evaluation; :func:`run` does the rest. Data are a pure function of ``(seed, step)`` and the models
have no dropout, so a resumed run continues exactly where the interrupted one stopped.

Checkpoint layout under ``out/.train/``: ``model.safetensors`` (fp32 weights), ``optimizer.safetensors``
(AdamW moments, keyed by parameter name), ``state.json`` (step, settings) and ``log.jsonl``.
"""

from __future__ import annotations

import dataclasses
import json
import math
import sys
import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, ClassVar

import numpy as np
import torch
from safetensors.torch import load_file, save_file

from edgevlp.data.vocab import SHAPES, SPLITS
from edgevlp.errors import InputError

__all__ = ["Recipe", "TrainSettings", "run", "to_pixels", "patch_shape_labels", "shape_probe_loss", "train_index", "STATE_DIR"]

STATE_DIR = ".train"


def to_pixels(images: list[np.ndarray], mean: tuple[float, ...], std: tuple[float, ...]) -> torch.Tensor:
    """uint8 RGB HxWx3 images (already at the model's size) -> normalised float32 NCHW, exactly as the
    model's image processor does it (rescale by 1/255, then (x - mean) / std)."""
    x = torch.from_numpy(np.stack(images)).permute(0, 3, 1, 2).float() / 255.0
    m = torch.tensor(mean, dtype=torch.float32).view(1, 3, 1, 1)
    s = torch.tensor(std, dtype=torch.float32).view(1, 3, 1, 1)
    return (x - m) / s


@dataclass(frozen=True)
class TrainSettings:
    """What one training run does; written into ``state.json`` and the model card."""

    name: str
    steps: int
    batch_size: int
    lr: float
    seed: int = 0
    warmup: int = 200
    weight_decay: float = 0.05
    eval_every: int = 250
    eval_n: int = 64
    checkpoint_every: int = 100
    tiny: bool = False
    threads: int = 2
    #: a time budget: the run measures its first steps and fixes ``steps`` to what fits (at most ``steps``)
    minutes: float | None = None
    #: torch device: "cpu", "cuda" or "cuda:N" (the weights and the metrics are the same on CPU)
    device: str = "cpu"
    #: bfloat16 autocast for the forward pass (weights, optimizer and loss reductions stay float32):
    #: 2.1x the images/s of float32 for demo-owlvit on a CPU with AVX-512 BF16
    bf16: bool = False
    #: a model directory whose ``model.safetensors`` starts the run instead of random weights (a
    #: warm restart of a shipped model: a new schedule, fresh optimizer moments; use a new ``seed`` so
    #: the batches are new ones)
    init_from: str | None = None

    def __post_init__(self) -> None:
        for key in ("steps", "batch_size", "eval_every", "eval_n", "checkpoint_every", "threads"):
            value = getattr(self, key)
            if not isinstance(value, int) or value < 1:
                raise InputError(f"{key}={value!r}: expected an int >= 1")
        if not self.lr > 0:
            raise InputError(f"lr={self.lr!r}: expected a positive learning rate")
        if self.minutes is not None and not self.minutes > 0:
            raise InputError(f"--minutes {self.minutes!r}: expected a positive number of minutes")
        if not (self.device == "cpu" or self.device.split(":")[0] == "cuda"):
            raise InputError(f"--device {self.device!r}: expected cpu, cuda or cuda:N")


class Recipe:
    """How one demo model is trained. Subclasses fill in the four hooks."""

    name: ClassVar[str]
    family: ClassVar[str]
    defaults: ClassVar[dict[str, Any]] = {}
    #: name prefixes of training-only modules that :meth:`finalize` drops (a warm restart from a
    #: saved model starts them afresh)
    training_only: ClassVar[tuple[str, ...]] = ()

    def build(self, seed: int, tiny: bool) -> Any:
        """A fresh adapter (random weights, seeded)."""
        raise NotImplementedError

    def batch(self, step: int, batch_size: int, seed: int) -> Any:
        """The training batch for ``step`` (a pure function of its arguments)."""
        raise NotImplementedError

    def loss(self, adapter: Any, batch: Any) -> tuple[torch.Tensor, dict[str, float]]:
        """Scalar loss and any extra numbers to log."""
        raise NotImplementedError

    def quick_eval(self, adapter: Any, n: int) -> dict[str, float]:
        """A few metrics on the first ``n`` val scenes (for the progress log)."""
        raise NotImplementedError

    def finalize(self, adapter: Any) -> None:
        """Called once training is over, before the model is saved (e.g. to drop training-only heads)."""


@dataclass
class RunResult:
    """What :func:`run` returns: the trained adapter, the log and timings."""

    adapter: Any
    settings: TrainSettings
    steps_done: int
    wall_time_s: float
    log: list[dict[str, Any]] = field(default_factory=list)
    last_eval: dict[str, float] = field(default_factory=dict)


def _lr_at(step: int, s: TrainSettings) -> float:
    if step < s.warmup:
        return s.lr * (step + 1) / s.warmup
    t = (step - s.warmup) / max(1, s.steps - s.warmup)
    return s.lr * (0.05 + 0.95 * 0.5 * (1 + math.cos(math.pi * min(t, 1.0))))


def _optimizer(model: torch.nn.Module, s: TrainSettings) -> tuple[torch.optim.AdamW, dict[int, str]]:
    decay, no_decay, names = [], [], {}
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        names[id(p)] = name
        (no_decay if p.dim() < 2 or "embedding" in name else decay).append(p)
    groups = [{"params": decay, "weight_decay": s.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    return torch.optim.AdamW(groups, lr=s.lr, betas=(0.9, 0.98)), names


def _save_checkpoint(state_dir: Path, model: torch.nn.Module, opt: torch.optim.Optimizer,
                     names: dict[int, str], step: int, s: TrainSettings, wall: float) -> None:
    state_dir.mkdir(parents=True, exist_ok=True)
    weights = {k: v.detach().cpu().contiguous().clone() for k, v in model.state_dict().items()}
    moments: dict[str, torch.Tensor] = {}
    for p, st in opt.state.items():
        for key, value in st.items():
            moments[f"{names[id(p)]}::{key}"] = torch.as_tensor(value).detach().cpu().contiguous().clone() \
                .reshape(-1) if key == "step" else value.detach().cpu().contiguous().clone()
    # write to temporary names, then rename: a crash mid-write never leaves a torn checkpoint
    save_file(_dedupe(weights), str(state_dir / "model.safetensors.tmp"))
    save_file(moments, str(state_dir / "optimizer.safetensors.tmp"))
    (state_dir / "state.json.tmp").write_text(json.dumps(
        {"step": step, "settings": asdict(s), "wall_time_s": wall}, indent=1))
    for name in ("model.safetensors", "optimizer.safetensors", "state.json"):
        os.replace(state_dir / f"{name}.tmp", state_dir / name)


def _dedupe(tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """safetensors refuses shared storage (tied weights): give each tensor its own copy."""
    return {k: v.clone() for k, v in tensors.items()}


def _load_checkpoint(state_dir: Path, model: torch.nn.Module, opt: torch.optim.Optimizer,
                     names: dict[int, str], s: TrainSettings) -> tuple[int, float]:
    state_path = state_dir / "state.json"
    if not state_path.is_file():
        raise InputError(f"--resume: no checkpoint in {state_dir}; start without --resume")
    state = json.loads(state_path.read_text())
    saved = state["settings"]
    fixed = ("name", "batch_size", "lr", "seed", "warmup", "weight_decay", "tiny", "bf16", "init_from")
    diff = [f"{k}: {saved.get(k)!r} -> {getattr(s, k)!r}" for k in fixed if saved.get(k) != getattr(s, k)]
    if diff:
        raise InputError("--resume: the checkpoint was trained with other settings (" + "; ".join(diff)
                         + "); use the same settings or a new --out")
    model.load_state_dict(load_file(str(state_dir / "model.safetensors")))
    moments = load_file(str(state_dir / "optimizer.safetensors"))
    by_name = {name: p for p in (q for g in opt.param_groups for q in g["params"])
               for name in [names[id(p)]]}
    for key, value in moments.items():
        pname, _, slot = key.rpartition("::")
        param = by_name[pname]
        st = opt.state[param]
        st[slot] = value.reshape(()) if slot == "step" else value.to(param.device)
    return int(state["step"]), float(state.get("wall_time_s", 0.0))


def run(recipe: Recipe, s: TrainSettings, out: Path, *, resume: bool = False,
        progress: bool = True, on_eval: Callable[[int, dict[str, float]], None] | None = None) -> RunResult:
    """Train ``recipe`` with settings ``s``; checkpoints go to ``out/.train``. Returns the adapter."""
    from tqdm.auto import tqdm

    torch.set_num_threads(s.threads)
    torch.manual_seed(s.seed)
    np.random.seed(s.seed)
    device = _device(s.device)
    state_dir = Path(out) / STATE_DIR
    if not resume and (state_dir / "state.json").is_file():
        raise InputError(f"{state_dir} already holds a checkpoint; pass --resume to continue it or "
                         "choose another --out")
    if resume and s.minutes is not None:
        raise InputError("--minutes budgets a new run; continue a checkpoint with --resume --steps N")
    adapter = recipe.build(s.seed, s.tiny)
    if s.init_from is not None and not resume:
        _init_weights(adapter.model, Path(s.init_from), recipe.training_only)
    model = adapter.model.to(device)
    model.train()
    opt, names = _optimizer(model, s)
    start, wall_before = (0, 0.0)
    if resume:
        start, wall_before = _load_checkpoint(state_dir, model, opt, names, s)
    state_dir.mkdir(parents=True, exist_ok=True)
    log_path = state_dir / "log.jsonl"
    if resume and log_path.is_file():  # drop records of steps after the checkpoint (they are redone)
        kept = [ln for ln in log_path.read_text().splitlines() if json.loads(ln)["step"] <= start]
        log_path.write_text("".join(ln + "\n" for ln in kept))
    result = RunResult(adapter, s, start, wall_before)
    t0 = time.time()
    ema, seen, t_rate = None, 0, time.time()
    # a time budget is turned into a step count after the first steps (all inside the warm-up, whose
    # learning rates do not depend on the step count), so the run reproduces with --steps N
    probe = min(BUDGET_PROBE_STEPS, s.warmup, s.steps) if s.minutes is not None else 0
    bar = tqdm(total=s.steps, initial=start, desc=f"train {s.name}", disable=not progress,
               dynamic_ncols=True, mininterval=2.0)
    step = start
    while step < s.steps:
        for group in opt.param_groups:
            group["lr"] = _lr_at(step, s)
        batch = _to_device(recipe.batch(step, s.batch_size, s.seed), device)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=s.bf16):
            loss, extra = recipe.loss(adapter, batch)
        loss = loss.float()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        value = float(loss.detach())
        if not math.isfinite(value):
            raise RuntimeError(f"loss became {value} at step {step}; lower the learning rate")
        ema = value if ema is None else 0.98 * ema + 0.02 * value
        seen += s.batch_size
        rate = seen / max(time.time() - t_rate, 1e-9)
        terms = {k: f"{v:.3f}" for k, v in extra.items() if isinstance(v, float)}
        bar.set_postfix(loss=f"{ema:.3f}", **terms, img_s=f"{rate:.1f}", refresh=False)
        bar.update(1)
        done = step + 1
        if done == probe:
            per_step, budget = (time.time() - t0) / probe, float(s.minutes)  # type: ignore[arg-type]
            s = dataclasses.replace(s, steps=min(s.steps, max(probe, int(budget * 60 / per_step))))
            result.settings = s
            bar.total = s.steps
            bar.write(f"--minutes {budget:g}: {per_step:.2f} s/step measured, training {s.steps} steps "
                      f"(reproduce with --steps {s.steps})", file=sys.stderr)
        record: dict[str, Any] = {"step": done, "loss": round(value, 5), "lr": _lr_at(step, s), **extra}
        if done % s.eval_every == 0 or done == s.steps:
            model.eval()
            model.to("cpu")  # recipes evaluate on CPU tensors (and the metrics are the CPU ones)
            with torch.no_grad():
                metrics = recipe.quick_eval(adapter, s.eval_n)
            model.to(device)
            model.train()
            record["eval"] = metrics
            result.last_eval = metrics
            bar.write(f"step {done}: loss {ema:.4f}, " + ", ".join(f"{k} {v:.3f}" for k, v in metrics.items()),
                      file=sys.stderr)
            if on_eval:
                on_eval(done, metrics)
        with log_path.open("a") as f:
            f.write(json.dumps(record) + "\n")
        result.log.append(record)
        if done % s.checkpoint_every == 0 or done == s.steps:
            _save_checkpoint(state_dir, model, opt, names, done, s, wall_before + time.time() - t0)
        result.steps_done = done
        step = done
    bar.close()
    model.to("cpu")
    model.eval()
    result.wall_time_s = wall_before + time.time() - t0
    return result


BUDGET_PROBE_STEPS = 20


def _init_weights(model: torch.nn.Module, model_dir: Path, training_only: tuple[str, ...] = ()) -> None:
    """Load ``model_dir/model.safetensors`` into the freshly built ``model`` (same recipe and size).

    Tied weights are saved once (they come back through the tensor they share), and modules named in
    ``training_only`` keep their fresh initialisation."""
    path = model_dir / "model.safetensors"
    if not path.is_file():
        raise InputError(f"--init-from {model_dir}: no model.safetensors there; pass a directory "
                         "`edgevlp zoo train` wrote (or a shipped demo model's, edgevlp/zoo/NAME)")
    own = model.state_dict()
    weights = load_file(str(path))
    loaded = {own[k].data_ptr() for k in own if k in weights}
    missing = sorted(k for k in set(own) - set(weights)
                     if own[k].data_ptr() not in loaded and not k.startswith(training_only))
    wrong = sorted(k for k in set(own) & set(weights) if own[k].shape != weights[k].shape)
    if missing or wrong:
        what = "; ".join(filter(None, [f"missing {', '.join(missing[:3])}" if missing else "",
                                       f"other shapes: {', '.join(wrong[:3])}" if wrong else ""]))
        raise InputError(f"--init-from {model_dir}: its weights are not this recipe's model ({what}); "
                         "initialise from a model of the same recipe and size")
    model.load_state_dict({k: weights[k].to(own[k].dtype) for k in own if k in weights}, strict=False)


def _device(name: str) -> torch.device:
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise InputError(f"--device {name}: this torch ({torch.__version__}) sees no CUDA device; "
                         "train with --device cpu (the default) or on a machine with a GPU")
    return torch.device(name)


def _to_device(obj: Any, device: torch.device) -> Any:
    """Move every tensor of a batch (nested dicts, lists, tuples) to ``device``."""
    if device.type == "cpu":
        return obj
    if isinstance(obj, torch.Tensor):
        return obj.to(device, non_blocking=True)
    if isinstance(obj, dict):
        return {k: _to_device(v, device) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(_to_device(v, device) for v in obj)
    return obj


def train_index(step: int, batch_size: int, seed: int, offset: int = 0) -> int:
    """First train-split scene of ``step``: seeds (and each model's ``offset``) start at different
    places, then walk forward, so training data are a function of seed and step (exact resume)."""
    return (seed * 499_979 + offset + step * batch_size) % (len(SPLITS["train"]) - batch_size)


def patch_shape_labels(scenes: list[Any], size: int, patch: int) -> torch.Tensor:
    """``(batch, patches)`` int64: 1 + the index in SHAPES of the topmost object whose box holds each patch
    centre (objects are drawn in list order, later ones on top), 0 for background."""
    grid = size // patch
    centres = (np.arange(grid) + 0.5) * patch
    labels = np.zeros((len(scenes), grid, grid), np.int64)
    for i, scene in enumerate(scenes):
        for obj in scene.objects:
            x0, y0, x1, y1 = obj.box_xyxy
            rows = (centres >= y0) & (centres < y1)
            cols = (centres >= x0) & (centres < x1)
            labels[i][np.ix_(rows, cols)] = 1 + SHAPES.index(obj.shape)
    return torch.from_numpy(labels.reshape(len(scenes), -1))


#: weight of the background class in :func:`shape_probe_loss` (~89 % of the patches are background)
PROBE_BACKGROUND_WEIGHT = 0.1


def shape_probe_loss(probe_logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Cross-entropy of a per-patch shape probe ``(batch, patches, 1 + shapes)`` against
    :func:`patch_shape_labels`, background down-weighted (the demo captioner's and assistant's
    training-only signal that gives the vision tower the shapes)."""
    weight = torch.ones(probe_logits.shape[-1], device=probe_logits.device)
    weight[0] = PROBE_BACKGROUND_WEIGHT
    return torch.nn.functional.cross_entropy(probe_logits.float().flatten(0, 1), labels.to(probe_logits.device).flatten(),
                                             weight=weight)
