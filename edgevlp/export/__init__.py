"""Export: model -> self-describing bundle (ONNX with KV-cache decoder, OpenVINO IR, TensorRT-ready).

Imports torch; the runtime side never imports this package.

Example:
    >>> from edgevlp.export import export_model
    >>> export_model("demo-owlvit", "bundles/owl-orin", target="jetson")     # doctest: +SKIP
"""

from __future__ import annotations

from edgevlp.export.exporter import export_model

__all__ = ["export_model"]
