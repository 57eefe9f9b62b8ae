"""OpenVINO's model converter and NNCF send usage telemetry (Google Analytics) unless the user opted out;
edgevlp turns it off around the calls it makes (:func:`openvino_telemetry_off`), and restores it after.

Beyond privacy on a deployment toolkit, the send is unsafe offline: it resolves the analytics host in a
forked child of a multi-threaded process, and on a machine without network that child can block
forever on the resolver lock (an ``edgevlp compress`` and a test run hung on it here). Both packages
fall back to their own telemetry stubs when ``openvino_telemetry`` is missing; this puts those stubs in
place for the duration. ``EDGEVLP_OPENVINO_TELEMETRY=1`` leaves the packages' own setting alone.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from typing import Any
from unittest import mock

__all__ = ["openvino_telemetry_off"]

#: modules that bind ``openvino_telemetry`` as ``tm`` at import (each falls back to this stub).
_OVC_MODULES = ("openvino.tools.ovc.convert_impl", "openvino.tools.ovc.telemetry_utils")
_OVC_STUB = "openvino.tools.ovc.telemetry_stub"


@contextmanager
def openvino_telemetry_off(nncf: bool = False) -> Iterator[None]:
    """Within the block, ``openvino.convert_model`` (and, with ``nncf``, NNCF, imported here if it is
    not yet) send nothing.

    Example:
        >>> with openvino_telemetry_off():                 # doctest: +SKIP
        ...     model = openvino.convert_model("vision_encoder.onnx")
    """
    if os.environ.get("EDGEVLP_OPENVINO_TELEMETRY") == "1":
        yield
        return
    import importlib

    with ExitStack() as patches:
        try:
            stub: Any = importlib.import_module(_OVC_STUB)
        except ImportError:
            stub = None
        for name in _OVC_MODULES:
            module = sys.modules.get(name)
            if module is None and stub is not None:
                try:
                    module = importlib.import_module(name)
                except ImportError:
                    continue
            if module is not None and stub is not None and hasattr(module, "tm"):
                patches.enter_context(mock.patch.object(module, "tm", stub))
        nncf_wrapper = sys.modules.get("nncf.telemetry.wrapper")
        if nncf_wrapper is None and nncf:
            try:
                nncf_wrapper = importlib.import_module("nncf.telemetry.wrapper")
            except ImportError:
                nncf_wrapper = None
        impl = getattr(getattr(nncf_wrapper, "telemetry", None), "_impl", None)
        if impl is not None:
            patches.enter_context(mock.patch.object(nncf_wrapper.telemetry, "_impl", mock.MagicMock()))
        yield
