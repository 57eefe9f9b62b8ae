"""The task registry: one object per task (``caption``, ``detect``) that owns what differs by task.

Export, calibration, parity, pruning and distillation signals, evaluation, the runtime and the app
look the task up by name (``get_task(adapter.task)`` / ``get_task(manifest.task)``) instead of
branching on adapter classes. A :class:`Task` names its runtime class and metric and builds its
export graphs, calibration feeds, parity check and training signals; the heavy (torch) code is
imported inside the methods, so this package and the task modules stay importable by the lean
runtime.

A new task (e.g. ``vqa``) is one module defining a :class:`Task` instance plus one row in
:data:`TASKS`.

Example:
    >>> from edgevlp.tasks import get_task
    >>> get_task("detect").runtime_class
    'edgevlp.runtime.detector:Detector'
    >>> get_task("caption").metric
    'cider'
"""

from __future__ import annotations

from edgevlp._lazy import import_object
from edgevlp.errors import InputError
from edgevlp.tasks.base import Task

__all__ = ["TASKS", "Task", "get_task", "known_tasks"]

#: task name -> "module:object" of its :class:`Task`; the module is imported on first use.
TASKS: dict[str, str] = {
    "caption": "edgevlp.tasks.caption:CAPTION",
    "detect": "edgevlp.tasks.detect:DETECT",
    "vqa": "edgevlp.tasks.vqa:VQA",
}


def known_tasks() -> tuple[str, ...]:
    """The registered task names."""
    return tuple(TASKS)


def get_task(name: str) -> Task:
    """The :class:`Task` registered as ``name``; an unknown name raises :class:`InputError` listing the
    known ones.

    Example:
        >>> get_task("caption").name
        'caption'
    """
    if name not in TASKS:
        raise InputError(f"unknown task {name!r}; edgevlp knows {', '.join(TASKS)} (a bundle or model of "
                         "another task needs a newer edgevlp, or a task module registered in "
                         "edgevlp.tasks.TASKS)")
    return import_object(TASKS[name])
