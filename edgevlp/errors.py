"""One exception family for everything edgevlp raises on purpose.

Every message says what was wrong and how to fix it. The CLI prints ``str(err)`` on one line and
exits with :data:`EdgeVLPError.exit_code`; a traceback is shown only with ``--debug``.

Example:
    >>> from edgevlp.errors import InputError
    >>> try:
    ...     raise InputError("image must be uint8 HxWx3, got float32; convert with img.astype('uint8')")
    ... except EdgeVLPError as err:
    ...     print(err.exit_code)
    1
"""

from __future__ import annotations

__all__ = [
    "EdgeVLPError",
    "ModelLoadError",
    "UnsupportedModelError",
    "BundleError",
    "InputError",
    "RecipeError",
    "ExportError",
    "BackendUnavailableError",
    "DependencyError",
    "SourceError",
    "ServerError",
    "NotAvailableYet",
]


class EdgeVLPError(Exception):
    """Base of every error edgevlp raises deliberately (exit code 1 in the CLI)."""

    exit_code: int = 1


class ModelLoadError(EdgeVLPError):
    """A model path, hub id or checkpoint file could not be read."""


class UnsupportedModelError(EdgeVLPError):
    """The checkpoint's architecture has no adapter; the message lists the known ones."""


class BundleError(EdgeVLPError):
    """A bundle is missing, tampered with, of an unknown format version, or inconsistent."""


class InputError(EdgeVLPError, ValueError):
    """A value passed by the user (image, prompt, option) is invalid."""


class RecipeError(EdgeVLPError, ValueError):
    """A compression recipe has a wrong field; the message names the field and its allowed range."""


class ExportError(EdgeVLPError):
    """An export failed, e.g. the exported graph differs from its source beyond tolerance."""


class BackendUnavailableError(EdgeVLPError):
    """An inference backend (onnxruntime, OpenVINO, TensorRT) was asked for but cannot be imported."""


class DependencyError(EdgeVLPError):
    """An optional package a feature needs is not installed; the message names the extra to install."""


class SourceError(EdgeVLPError):
    """A video source (camera, file, stream, GStreamer pipeline) cannot be opened or was lost."""


class ServerError(EdgeVLPError):
    """An inference server (tritonserver) could not be started or reached, or refused a request."""


class NotAvailableYet(EdgeVLPError):
    """A CLI verb whose implementation has not landed yet (exit code 3)."""

    exit_code = 3
