"""Serving through NVIDIA Triton Inference Server (torch-free; tritonclient imported when a Client is made).

- :func:`write_repository`: a bundle -> a Triton model repository (``edgevlp export --target triton``);
- :class:`TritonServer`: a real tritonserver on a repository (``edgevlp serve``);
- :class:`Client`: requests from your code or the camera app (``edgevlp run --server``).
"""

from __future__ import annotations

from edgevlp.serve.client import Client
from edgevlp.serve.repository import ServeSettings, read_repository, write_repository
from edgevlp.serve.server import TritonServer, find_tritonserver

__all__ = ["write_repository", "read_repository", "ServeSettings", "TritonServer", "find_tritonserver",
           "Client"]
