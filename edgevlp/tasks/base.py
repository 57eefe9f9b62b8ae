"""The :class:`Task` interface (torch-free: the heavy arguments are typed ``Any`` and described in the
docstrings, so no heavy module is imported, not even for type checking)."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Mapping
from pathlib import Path
from typing import Any, ClassVar

from edgevlp._lazy import import_object

__all__ = ["Task"]


class Task(ABC):
    """What edgevlp does differently per task; one instance per task, looked up by
    :func:`edgevlp.tasks.get_task`.

    Attributes:
        name: the task name (``ModelAdapter.task``, ``Manifest.task``).
        runtime_class: ``"module:Class"`` of the :mod:`edgevlp.runtime` model that runs its bundles.
        app_slot: the key of its model in the app's ``{"captioner": ..., "detector": ...}``.
        metric: the headline metric of :func:`edgevlp.eval.evaluate` (higher is better).
        card_metrics: the metrics a model card's table shows, in order.
        metric_labels: ``(key, label)`` of the metrics `edgevlp eval` prints, in order (keys absent from a
            result are left out).
        metric_note: how the metrics are measured (the model card's paragraph under the table).
        manifest_section: the manifest field its runtime settings go in (``generation`` / ``detection``).
        generates: it decodes tokens (``edgevlp bench`` measures decode ms per new token).
        reference_note: what ``edgevlp bench``'s transformers reference row runs.
    """

    name: ClassVar[str]
    runtime_class: ClassVar[str]
    app_slot: ClassVar[str]
    metric: ClassVar[str]
    card_metrics: ClassVar[tuple[str, ...]]
    metric_labels: ClassVar[tuple[tuple[str, str], ...]]
    metric_note: ClassVar[str]
    manifest_section: ClassVar[str]
    generates: ClassVar[bool]
    reference_note: ClassVar[str]

    def runtime_type(self) -> type:
        """The runtime class (imported now; torch-free)."""
        return import_object(self.runtime_class)

    def __repr__(self) -> str:
        return f"<task {self.name}>"

    # ------------------------------------------------------------------------------------ export
    @abstractmethod
    def graphs(self, adapter: Any) -> list[Any]:
        """The graphs ``adapter``'s model is exported as, in execution order."""

    @abstractmethod
    def manifest_settings(self, adapter: Any, *, max_new_tokens: int,
                          roles: Mapping[str, Any]) -> dict[str, Any]:
        """The runtime settings written into the manifest's :attr:`manifest_section` (``roles``: the
        exported graphs by role)."""

    @abstractmethod
    def parity(self, adapter: Any, model: Any, pixels: Any, diffs: Any, *,
               new_tokens: int, so_far: dict[str, Any]) -> dict[str, Any]:
        """Compare the runtime ``model`` with ``adapter`` on ``pixels`` (outputs into ``diffs``); return
        the task's part of the parity record, merged with ``so_far`` (earlier batches)."""

    # ------------------------------------------------------------------------------- compression
    @abstractmethod
    def calibration_feeds(self, adapter: Any, graphs: dict[str, Path], frames: list[Any],
                          pixels: list[Any], *, max_new_tokens: int) -> dict[str, list[dict[str, Any]]]:
        """Feeds (role -> input dicts, batch 1) for every graph, from preprocessed ``pixels`` of
        ``frames`` (FP32 ONNX ``graphs`` by role, for graphs fed by earlier ones)."""

    #: the graph role whose quantisation a fallback may judge on whole greedy answers (``answers``)
    answer_role: str | None = None

    def answers(self, adapter: Any, graphs: dict[str, Path], run: Any, feeds: list[dict[str, Any]], *,
                max_new_tokens: int) -> list[list[int]]:
        """Greedy answer tokens with ``run`` (a candidate graph of :attr:`answer_role`) from the prompts
        among its calibration ``feeds``, the other graphs FP32 (``graphs``)."""
        raise NotImplementedError(f"task {self.name!r} has no answers to judge a fallback on")

    @abstractmethod
    def run_forward(self, adapter: Any, batch: Any) -> None:
        """One forward pass over ``batch`` as deployed (for hooks that observe activations)."""

    @abstractmethod
    def fisher_loss(self, adapter: Any, batch: Any, gen: Any) -> Any:
        """Log-likelihood loss of the model's own (sampled or greedy) predictions (pruning importance)."""

    @abstractmethod
    def has_task_loss(self, split: str | None) -> bool:
        """Whether distillation data ``shapes:SPLIT`` (``None``: images only) give this task a loss."""

    @abstractmethod
    def distill_terms(self, job: Any, batch: dict[str, Any], student_states: Any,
                      teacher_states: Any) -> tuple[Any, Any]:
        """``(task loss, KD loss)`` of one distillation batch (the vision towers' last hidden states
        are passed in, already computed)."""

    # ------------------------------------------------------------------------------------- bench
    @abstractmethod
    def bench_call(self, model: Any, prompts: list[str], exact: bool) -> Any:
        """``call(frame, n)`` running the runtime ``model`` end to end on a BGR frame (``n`` new tokens
        where it generates: exactly ``n`` with ``exact``, as for random weights; prompts set once here)."""

    @abstractmethod
    def reference_call(self, adapter: Any, processor: Any, prompts: list[str], exact: bool) -> Any:
        """``call(pixels, rgb, n) -> new tokens`` running the transformers model behind ``adapter`` as a
        user would (HF ``processor``'s ``pixels`` of the ``rgb`` frame; post-processing included)."""

    # -------------------------------------------------------------------------------- evaluation
    @abstractmethod
    def evaluate(self, predictor: Any, samples: list[Any], phrases: tuple[str, ...], *, data: str,
                 bundle: bool, batch_size: int, max_new_tokens: int, progress: bool) -> dict[str, Any]:
        """The task metrics of ``predictor`` (a bundle model if ``bundle``, else an adapter)."""
