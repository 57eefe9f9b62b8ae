"""State shared by the export stages and the per-target writers."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from edgevlp.bundle import GraphSpec
from edgevlp.export.profiles import TargetProfile
from edgevlp.export.progress import Progress

__all__ = ["ExportContext"]


@dataclass
class ExportContext:
    """What a target writer sees: the bundle being written (``root``), its graphs (mutable: a writer
    may swap files/formats), the profile, precision, sample feeds per graph and notes for the manifest."""

    root: Path
    graphs: list[GraphSpec]
    profile: TargetProfile
    precision: str
    target: str
    progress: Progress
    sample_feeds: dict[str, dict[str, np.ndarray]] = field(default_factory=dict)
    prequantized: bool = False
    #: the model family (``blip``, ``owlvit``, ...): keys per-family tables such as graph optimisation
    family: str | None = None
    notes: dict[str, Any] = field(default_factory=dict)

    def graphs_by_role(self) -> dict[str, GraphSpec]:
        return {g.role: g for g in self.graphs}

    def note_graph(self, role: str, key: str, value: Any) -> None:
        """Record ``value`` under ``notes["graph_optimization"][role][key]`` beside what other passes
        recorded for that graph."""
        notes = self.notes.setdefault("graph_optimization", {})
        entry = notes.get(role)
        notes[role] = {**(entry if isinstance(entry, dict) else {}), key: value}

    def replace_graph(self, old: GraphSpec, new: GraphSpec) -> None:
        self.graphs[self.graphs.index(old)] = new
