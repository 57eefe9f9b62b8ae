"""The camera app: capture -> detector and captioner -> overlay -> window or files, on the lean runtime.

Submodules: :mod:`~edgevlp.app.capture` (sources, capture thread, bounded frame slot, reconnects),
:mod:`~edgevlp.app.pipeline` (the loop, caption thread, statistics), :mod:`~edgevlp.app.overlay`
(drawing), :mod:`~edgevlp.app.sinks` (window, MP4/JSONL/summary files), :mod:`~edgevlp.app.config`
(settings and command-line options, importable without OpenCV). Names are imported on first use, so
``import edgevlp.app`` stays cheap. Never imports torch or transformers.

Example:
    >>> from edgevlp.app import AppConfig, load_models, run_app
    >>> models = load_models(["bundles/owl-cpu"])                                   # doctest: +SKIP
    >>> run_app(AppConfig(source="0", prompts=("cup",)), **models)                  # doctest: +SKIP
"""

from __future__ import annotations

import importlib
from typing import Any

__all__ = ["AppConfig", "add_run_arguments", "csi_pipeline", "parse_source", "open_source", "Capture",
           "FrameSlot", "Frame", "Backoff", "load_models", "run_app", "format_summary", "render", "FileSink",
           "WindowSink", "PromptsFile", "run_command"]

_WHERE = {
    "AppConfig": "config", "add_run_arguments": "config",
    "csi_pipeline": "capture", "parse_source": "capture", "open_source": "capture", "Capture": "capture",
    "FrameSlot": "capture", "Frame": "capture", "Backoff": "capture",
    "load_models": "pipeline", "run_app": "pipeline", "format_summary": "pipeline",
    "render": "overlay", "FileSink": "sinks", "WindowSink": "sinks", "PromptsFile": "prompts",
    "run_command": "main",
}


def __getattr__(name: str) -> Any:
    if name in _WHERE:
        return getattr(importlib.import_module(f"edgevlp.app.{_WHERE[name]}"), name)
    raise AttributeError(f"module 'edgevlp.app' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(__all__)
