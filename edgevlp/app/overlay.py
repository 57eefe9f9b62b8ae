"""Drawing on frames: detection boxes with prompt labels and scores, the caption wrapped at the bottom,
and a HUD (FPS, per-stage latency). Everything scales with the frame width.

Example:
    >>> import numpy as np
    >>> from edgevlp.app.overlay import render
    >>> out = render(np.zeros((120, 160, 3), np.uint8), caption="a red circle", hud=["12.0 FPS"])
    >>> out.shape
    (120, 160, 3)
"""

from __future__ import annotations

from collections.abc import Sequence

import cv2
import numpy as np

from edgevlp.runtime.results import Detections

__all__ = ["render", "draw_detections", "draw_caption", "draw_hud", "wrap_text", "color_for"]

_FONT = cv2.FONT_HERSHEY_SIMPLEX
# BGR, well apart in hue and readable on both dark and bright scenes.
_PALETTE = ((56, 56, 255), (151, 157, 255), (31, 112, 255), (29, 178, 255), (49, 210, 207), (10, 249, 72),
            (23, 204, 146), (134, 219, 61), (211, 188, 0), (209, 119, 0), (255, 149, 0), (255, 55, 168))


def color_for(label: int) -> tuple[int, int, int]:
    """The box colour of prompt number ``label`` (stable across frames)."""
    return _PALETTE[int(label) % len(_PALETTE)]


def _scale(image: np.ndarray) -> tuple[float, int]:
    """Font scale and line thickness for the frame width (0.5 and 1 at 640 px)."""
    width = image.shape[1]
    scale = max(0.35, min(1.5, width / 1280.0))
    return scale, max(1, int(round(scale * 2)))


def _ascii(text: str) -> str:
    # OpenCV's Hershey fonts draw ASCII only; anything else would show as '?'.
    return text.encode("ascii", "replace").decode("ascii")


def _label(image: np.ndarray, text: str, x: int, y: int, color: tuple[int, int, int], scale: float,
           thickness: int) -> None:
    (tw, th), base = cv2.getTextSize(text, _FONT, scale, thickness)
    y_top = max(0, y - th - base - 2)
    cv2.rectangle(image, (x, y_top), (x + tw + 4, y_top + th + base + 2), color, cv2.FILLED)
    cv2.putText(image, text, (x + 2, y_top + th + 1), _FONT, scale, (0, 0, 0), thickness, cv2.LINE_AA)


def draw_detections(image: np.ndarray, detections: Detections, max_boxes: int = 50) -> np.ndarray:
    """Draw up to ``max_boxes`` boxes (highest score first), each labelled ``prompt score``; in place."""
    scale, thickness = _scale(image)
    for i in range(min(len(detections), max_boxes)):
        x1, y1, x2, y2 = (int(round(float(v))) for v in detections.boxes_xyxy[i])
        label = int(detections.labels[i])
        name = detections.label_names[label] if 0 <= label < len(detections.label_names) else str(label)
        color = color_for(label)
        cv2.rectangle(image, (x1, y1), (x2, y2), color, thickness)
        _label(image, _ascii(f"{name} {float(detections.scores[i]):.2f}"), x1, y1, color, scale * 0.9, 1)
    return image


def wrap_text(text: str, max_width: int, scale: float, thickness: int = 1) -> list[str]:
    """Split ``text`` into lines no wider than ``max_width`` pixels (a longer word is cut).

    Example:
        >>> wrap_text("a small red circle next to a big blue square", 180, 0.5)
        ['a small red circle next to a', 'big blue square']
    """
    lines: list[str] = []
    current = ""
    for word in _ascii(" ".join(str(text).split())).split(" "):
        if not word:
            continue
        trial = f"{current} {word}" if current else word
        if cv2.getTextSize(trial, _FONT, scale, thickness)[0][0] <= max_width:
            current = trial
            continue
        if current:
            lines.append(current)
        while cv2.getTextSize(word, _FONT, scale, thickness)[0][0] > max_width and len(word) > 1:
            cut = len(word) - 1
            while cut > 1 and cv2.getTextSize(word[:cut], _FONT, scale, thickness)[0][0] > max_width:
                cut -= 1
            lines.append(word[:cut])
            word = word[cut:]
        current = word
    if current:
        lines.append(current)
    return lines


def draw_caption(image: np.ndarray, caption: str, max_lines: int = 3) -> np.ndarray:
    """The caption wrapped to the frame width on a dark band at the bottom; in place."""
    if not caption:
        return image
    scale, thickness = _scale(image)
    height, width = image.shape[:2]
    lines = wrap_text(caption, width - 16, scale, thickness)
    if len(lines) > max_lines:
        lines = lines[: max_lines - 1] + [lines[max_lines - 1] + " ..."]
    line_h = cv2.getTextSize("Ag", _FONT, scale, thickness)[0][1] + 8
    top = max(0, height - line_h * len(lines) - 8)
    band = image[top:height]
    band[:] = (band * 0.35).astype(np.uint8)
    for i, line in enumerate(lines):
        cv2.putText(image, line, (8, top + 4 + line_h * (i + 1) - 6), _FONT, scale, (255, 255, 255), thickness,
                    cv2.LINE_AA)
    return image


def draw_hud(image: np.ndarray, lines: Sequence[str]) -> np.ndarray:
    """Small text lines (FPS, latencies) on a dark box at the top left; in place."""
    if not lines:
        return image
    scale, _ = _scale(image)
    scale *= 0.8
    sizes = [cv2.getTextSize(_ascii(line), _FONT, scale, 1)[0] for line in lines]
    line_h = max(h for _, h in sizes) + 6
    box_w = min(image.shape[1], max(w for w, _ in sizes) + 10)
    box_h = min(image.shape[0], line_h * len(lines) + 6)
    roi = image[:box_h, :box_w]
    roi[:] = (roi * 0.4).astype(np.uint8)
    for i, line in enumerate(lines):
        cv2.putText(image, _ascii(line), (5, line_h * (i + 1)), _FONT, scale, (0, 255, 0), 1, cv2.LINE_AA)
    return image


def render(frame: np.ndarray, detections: Detections | None = None, caption: str | None = None,
           hud: Sequence[str] = ()) -> np.ndarray:
    """A copy of ``frame`` with boxes, the caption and the HUD drawn on it."""
    image = np.array(frame, dtype=np.uint8, copy=True, order="C")
    if detections is not None:
        draw_detections(image, detections)
    if caption:
        draw_caption(image, caption)
    draw_hud(image, hud)
    return image
