"""One drawn object of a shape scene (its own module: the scene generator and the captioner both read it)."""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["ShapeObject"]


@dataclass(frozen=True)
class ShapeObject:
    """One drawn shape. ``box_xyxy`` is the tight box of its *visible* pixels, in pixel-edge
    coordinates (``0 <= x0 < x1 <= width``); ``visible_fraction`` is the share of its pixels not
    covered by objects drawn after it."""

    shape: str
    colour: str
    size_name: str
    box_xyxy: tuple[float, float, float, float]
    visible_fraction: float

    @property
    def phrase(self) -> str:
        """The detection prompt for this object, e.g. ``"red circle"``."""
        return f"{self.colour} {self.shape}"
