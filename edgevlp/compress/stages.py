"""The stage registry: one handler per config type, looked up in a table and imported lazily.

A new stage type is one module with an
``apply(state, config) -> dict`` function plus one row in :data:`HANDLERS`. A handler mutates
``state`` (the torch model, the quantised graphs) and returns the details it wants in the report.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from edgevlp._lazy import import_object
from edgevlp.compress.recipe import DistillConfig, PruneConfig, QuantConfig
from edgevlp.errors import NotAvailableYet

if TYPE_CHECKING:
    from edgevlp.compress.state import CompressState

__all__ = ["HANDLERS", "apply_stage"]

#: config type -> "module:function" applying it.
HANDLERS: dict[type, str] = {
    QuantConfig: "edgevlp.compress.ptq:apply",
    PruneConfig: "edgevlp.compress.prune:apply",
    DistillConfig: "edgevlp.compress.distill:apply",
}


def apply_stage(state: "CompressState", config: Any) -> dict[str, Any]:
    """Apply one recipe stage to ``state``; returns the handler's report details.

    Raises:
        NotAvailableYet: the config type has no handler (a stage type from a newer edgevlp).
    """
    target = HANDLERS.get(type(config))
    if target is None:
        raise NotAvailableYet(f"recipe stage type {type(config).__name__} has no handler in this version of "
                              f"edgevlp; known: {', '.join(t.__name__ for t in HANDLERS)}")
    return import_object(target)(state, config)
