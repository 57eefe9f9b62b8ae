"""The ``distill`` stage: train the current (pruned) model to match the original (teacher).

loss = ``task_weight`` * task loss + ``kl_weight`` * KD loss + ``hidden_weight`` * hidden-state loss, the
task and KD terms from the model's task (:meth:`edgevlp.tasks.Task.distill_terms`; the losses live in
:mod:`edgevlp.tasks.losses`, shared with the demo zoo's training):

- captioners: task = token cross-entropy on the reference captions (``shapes:`` data) or, for images
  without captions (a folder), on the teacher's greedy captions; KD = T^2 KL(softmax(t/T) || softmax(s/T))
  per caption token, teacher-forced on the same tokens;
- detectors: task = the DETR-style set loss where boxes are known (``shapes:`` data, any detector),
  else none; KD = T^2 KL between the per-patch, per-prompt sigmoid class probabilities plus L1
  between student and teacher boxes;
- hidden: MSE between student and teacher vision hidden states after every layer, divided by the
  teacher's mean square (pruning keeps the hidden width, so the states compare directly).

Training runs on the loop the demo zoo trains with too (:mod:`edgevlp._training`): seeded data, AdamW
with warmup and cosine decay, a progress bar with the loss terms, atomic checkpoints every ``checkpoint_every`` steps,
and exact resume (``edgevlp compress ... --resume``) from the checkpoint folder ``OUTPUT.train/``.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from edgevlp.compress.recipe import DistillConfig
from edgevlp.compress.state import CompressState
from edgevlp.errors import InputError
from edgevlp.models.base import ModelAdapter
from edgevlp.tasks import get_task
from edgevlp import _training

__all__ = ["apply", "DistillTraining", "distill_loss"]


class DistillTraining(_training.Recipe):
    """The training loop's hooks for distilling ``teacher`` into ``student`` on ``data``."""

    name = "distill"

    def __init__(self, student: ModelAdapter, teacher: ModelAdapter, cfg: DistillConfig, data: str) -> None:
        self.student, self.teacher, self.cfg, self.data = student, teacher, cfg, data
        self.family = student.family
        self.task = get_task(student.task)
        self.spec = student.preprocess_spec()
        self.teacher.model.eval()
        for p in self.teacher.model.parameters():
            p.requires_grad_(False)
        self._frames: list[Any] | None = None
        self._prompts: list[str] | None = None
        if data.startswith("shapes:"):
            from edgevlp.data.vocab import SPLITS

            self.split = data.split(":", 1)[1]
            if self.split not in SPLITS:
                raise InputError(f"distill data {data!r}: unknown split; use shapes:{'|'.join(SPLITS)}")
        else:
            from edgevlp.compress.calib import load_frames

            self.split = None
            self._frames = load_frames(data, 100_000, size=max(64, self.spec.height))
            if not self._frames:
                raise InputError(f"distill data {data!r} holds no images")
        if cfg.task_weight > 0 and not self.task.has_task_loss(self.split):
            raise InputError(f"distill: task_weight > 0 needs labels, which {data!r} has not for the "
                             f"{self.task.name} task of {student.family} (detectors: box labels of shapes: "
                             "data); set task_weight = 0 to distil from the teacher alone, or use shapes:train")

    # -------------------------------------------------------------------------------- loop hooks
    def build(self, seed: int, tiny: bool) -> ModelAdapter:
        return self.student

    def batch(self, step: int, batch_size: int, seed: int) -> dict[str, Any]:
        from edgevlp.runtime.preprocess import preprocess

        if self.split is not None:
            from edgevlp.data import dataset
            from edgevlp.data.vocab import SPLITS

            start = (seed * 7919 + step * batch_size) % (len(SPLITS[self.split]) - batch_size)
            scenes = list(dataset(self.split, batch_size, size=max(64, self.spec.height), start=start))
            bgr = [np.ascontiguousarray(s.image[..., ::-1]) for s in scenes]
            rng = np.random.default_rng([seed, step, 2])
            captions = [s.captions[int(rng.integers(len(s.captions)))] for s in scenes]
        else:
            assert self._frames is not None
            idx = [(step * batch_size + i) % len(self._frames) for i in range(batch_size)]
            scenes, captions = None, None
            bgr = [self._frames[i].bgr for i in idx]
        pixels = torch.from_numpy(np.concatenate([preprocess(b, self.spec)[0] for b in bgr]))
        return {"pixel_values": pixels, "captions": captions, "scenes": scenes}

    def loss(self, adapter: ModelAdapter, batch: dict[str, Any]) -> tuple[torch.Tensor, dict[str, float]]:
        total, parts = distill_loss(self, batch)
        return total, {k: round(v, 5) for k, v in parts.items()}

    def quick_eval(self, adapter: ModelAdapter, n: int) -> dict[str, float]:
        from edgevlp.eval import evaluate

        data = "shapes:val" if self.split is not None else None
        if data is None:
            return {}
        result = evaluate(adapter, data, n, progress=False)
        return {k: float(result[k]) for k in ("cider", "bleu4", "map50", "vqa_accuracy") if k in result}

    # ----------------------------------------------------------------------------------- helpers
    def prompts(self) -> list[str]:
        """The prompt set a detector is distilled on (shapes: the training queries; else the frames'),
        see :meth:`edgevlp.tasks.detect.DetectTask.distill_prompts`."""
        if self._prompts is None:
            self._prompts = self.task.distill_prompts(self.split, self._frames)
        return self._prompts


def _hidden_loss(student: ModelAdapter, teacher: ModelAdapter, px: torch.Tensor
                 ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Relative MSE over the vision layers, and both towers' last hidden states (reused by the caller)."""
    s_out = student.vision_tower()(pixel_values=px, output_hidden_states=True, return_dict=True)
    with torch.no_grad():
        t_out = teacher.vision_tower()(pixel_values=px, output_hidden_states=True, return_dict=True)
    terms = [F.mse_loss(s, t) / t.pow(2).mean().clamp(min=1e-8)
             for s, t in zip(s_out.hidden_states[1:], t_out.hidden_states[1:])]
    return torch.stack(terms).mean(), s_out.last_hidden_state, t_out.last_hidden_state


def distill_loss(job: DistillTraining, batch: dict[str, Any]) -> tuple[torch.Tensor, dict[str, float]]:
    """The weighted loss of one batch and its terms (task, kd, hidden)."""
    cfg, student, teacher = job.cfg, job.student, job.teacher
    hidden, s_enc, t_enc = _hidden_loss(student, teacher, batch["pixel_values"])
    task, kd = job.task.distill_terms(job, batch, s_enc, t_enc)
    total = cfg.task_weight * task + cfg.kl_weight * kd + cfg.hidden_weight * hidden
    return total, {"task": float(task.detach()), "kd": float(kd.detach()), "hidden": float(hidden.detach())}


def checkpoint_dir(output: Path) -> Path:
    """Where a distillation run keeps its checkpoints (next to the output, kept until it succeeds)."""
    return output.with_name(output.name + ".train")


def apply(state: CompressState, cfg: DistillConfig) -> dict[str, Any]:
    """Distil ``state.teacher`` (the model as it was before compression) into ``state.adapter``."""
    if state.teacher is None:
        raise InputError("distill: no teacher (compress_model keeps the original model as the teacher; "
                         "pass --teacher to use another)")
    data = cfg.data
    job = DistillTraining(state.adapter, state.teacher, cfg, data)
    steps = cfg.steps
    settings = _training.TrainSettings(
        name=f"distill-{state.adapter.family}", steps=steps, batch_size=cfg.batch_size, lr=cfg.lr,
        warmup=max(1, min(100, steps // 10)), weight_decay=0.01, eval_every=steps, eval_n=32,
        checkpoint_every=cfg.checkpoint_every or steps, threads=max(1, torch.get_num_threads()), bf16=cfg.bf16)
    ckpt = state.checkpoints
    state.adapter.model.train()
    with torch.no_grad():
        first = distill_loss(job, job.batch(0, cfg.batch_size, 0))[1]
    resume = state.resume and (ckpt / _training.STATE_DIR / "state.json").is_file()
    result = _training.run(job, settings, ckpt, resume=resume, progress=state.progress)
    state.adapter.model.eval()
    state.model_changed()
    log = result.log
    tail = log[-min(len(log), 20):] if log else []
    last = {k: float(np.mean([r[k] for r in tail])) for k in ("task", "kd", "hidden")} if tail else {}
    return {"data": data, "steps": result.steps_done, "teacher": state.teacher.source,
            "loss_first_batch": first, "loss_last_20_steps": last,
            "eval_val": result.last_eval, "train_seconds": round(result.wall_time_s, 1),
            "checkpoints": str(ckpt), "weights": {"task": cfg.task_weight, "kd": cfg.kl_weight,
                                                  "hidden": cfg.hidden_weight, "temperature": cfg.temperature}}


def teacher_copy(adapter: ModelAdapter) -> ModelAdapter:
    """A frozen copy of ``adapter`` to distil from."""
    teacher = copy.copy(adapter)
    teacher.model = copy.deepcopy(adapter.model).eval()
    return teacher
