"""What the stages of one `edgevlp compress` run share: the model, calibration data, graphs, report."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from edgevlp.models.base import ModelAdapter

__all__ = ["CompressState"]


@dataclass
class CompressState:
    """Mutable state threaded through the stages.

    ``adapter`` is the model being compressed (prune/distil stages change it in place); ``teacher`` the
    original (for distillation); ``work`` a scratch folder, ``out`` the output being written;
    ``checkpoints`` the folder that training stages checkpoint into (kept until the run succeeds) and
    ``resume`` whether they continue from it.
    ``fp32_graphs`` (role -> ONNX path) are exported on first use from the *current* model;
    ``quantized`` (role -> file name in ``out``) are what `compression.json` lists.
    ``shapes_model``: the model was trained on shape scenes (the demo zoo), so a calibration source
    ``auto`` means ``shapes:train`` rather than real photos.
    """

    adapter: ModelAdapter
    out: Path
    work: Path
    teacher: ModelAdapter | None = None
    calib_override: str | None = None
    checkpoints: Path | None = None
    resume: bool = False
    progress: bool = True
    shapes_model: bool = False
    quantized: dict[str, str] = field(default_factory=dict)
    notes: dict[str, Any] = field(default_factory=dict)
    _fp32: dict[str, Path] | None = None

    def fp32_graphs(self) -> dict[str, Path]:
        """Export the current model's graphs to FP32 ONNX once (role -> path, in execution order)."""
        if self._fp32 is None:
            from edgevlp.export.graphs import graphs_for
            from edgevlp.export.onnx_export import export_graph

            folder = self.work / "fp32"
            folder.mkdir(parents=True, exist_ok=True)
            graphs = graphs_for(self.adapter)
            fp32: dict[str, Path] = {}
            with self.bar("FP32 ONNX export", len(graphs), unit="graphs") as bar:
                for g in graphs:
                    bar.update(0, note=g.role)
                    path = folder / f"{g.role}.onnx"
                    export_graph(g, path)
                    fp32[g.role] = path
                    bar.update(note=g.role)
            self._fp32 = fp32
        return self._fp32

    def log(self, text: str) -> None:
        """A progress line on stderr (unless progress is off)."""
        if self.progress:
            import sys

            print(f"[compress] {text}", file=sys.stderr, flush=True)

    def bar(self, label: str, total: int | None, unit: str = "") -> Any:
        """A progress line with an ETA for a counted loop (:class:`edgevlp.export.progress.Bar`)."""
        from edgevlp.export.progress import Bar

        return Bar(label, total, enabled=self.progress, prefix="compress", unit=unit)

    def model_changed(self) -> None:
        """Call after changing the torch model: the FP32 graphs are exported again when next needed."""
        self._fp32 = None
