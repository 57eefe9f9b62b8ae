"""What the Python models of a repository share: their config, the bundle files, error responses, and
:class:`BLSSession`, a runtime graph session whose ``run`` is a BLS request to a leaf model.

Imported only inside tritonserver's Python backend (``triton_python_backend_utils`` exists there).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

import triton_python_backend_utils as pb_utils  # type: ignore[import-not-found]

from edgevlp.bundle import GraphSpec, Manifest, read_manifest
from edgevlp.errors import EdgeVLPError, InputError
from edgevlp.runtime.backends import GraphSession
from edgevlp.runtime.tokenizer import BundleTokenizer

__all__ = ["PythonModel", "BLSSession", "pb_utils", "MAX_IMAGE_SIDE"]

#: Largest image side a request may carry (a 20000 x 20000 frame is refused, not resized).
MAX_IMAGE_SIDE = 8192


class BLSSession(GraphSession):
    """A bundle graph served by leaf model ``model``: ``run(feeds)`` is one BLS request (the feeds'
    first axis is the batch the leaf's dynamic batcher sees)."""

    def __init__(self, graph: GraphSpec, model: str) -> None:
        super().__init__(graph)
        self.model = model

    def run(self, feeds: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        request = pb_utils.InferenceRequest(
            model_name=self.model, requested_output_names=self.output_names,
            inputs=[pb_utils.Tensor(n, np.ascontiguousarray(feeds[n])) for n in self.input_names])
        response = request.exec()
        if response.has_error():
            raise RuntimeError(f"leaf model {self.model}: {response.error().message()}")
        return {n: pb_utils.get_output_tensor_by_name(response, n).as_numpy() for n in self.output_names}


class PythonModel:
    """Base of the repository's Python models: ``initialize`` reads the config and the bundle;
    subclasses implement :meth:`respond` (requests -> responses, in order)."""

    def initialize(self, args: dict[str, Any]) -> None:
        self.model_config, self.params = model_config(args)
        self.repository = Path(args["model_repository"]).parent
        self.bundle_dir = self.repository / self.params["edgevlp_bundle"]
        # the repository's files were hashed as a whole (edgevlp serve checks them); the bundle's
        # manifest lists graphs that live in the leaves' directories, so it is read unverified here
        self.manifest: Manifest = read_manifest(self.bundle_dir, verify=False)
        self.tokenizer = BundleTokenizer.from_file(self.bundle_dir / self.manifest.tokenizer["file"])
        self.setup()

    def setup(self) -> None:
        """Per-model set-up after the bundle is read."""

    def json_param(self, key: str, default: Any = None) -> Any:
        """A config parameter written as JSON (numbers, lists, objects)."""
        return json.loads(self.params[key]) if key in self.params else default

    def sessions(self) -> dict[str, GraphSession]:
        """Every bundle graph that has a leaf (``edgevlp_leaves``), as a :class:`BLSSession`."""
        leaves = self.json_param("edgevlp_leaves", {})
        return {role: BLSSession(self.manifest.graphs[role], model) for role, model in leaves.items()}

    def execute(self, requests: Sequence[Any]) -> list[Any]:
        try:
            return self.respond(requests)
        except Exception as err:  # noqa: BLE001 - every request gets an answer, the model stays up
            return [error(err) for _ in requests]

    def respond(self, requests: Sequence[Any]) -> list[Any]:
        raise NotImplementedError

    def finalize(self) -> None:
        pass


def model_config(args: dict[str, Any]) -> tuple[dict[str, Any], dict[str, str]]:
    """The model's config (``initialize``'s ``args``) and its string parameters."""
    config = json.loads(args["model_config"])
    return config, {k: v["string_value"] for k, v in config.get("parameters", {}).items()}


def error(err: BaseException | str) -> Any:
    """An error response: an :class:`EdgeVLPError` says what is wrong with the request; anything else
    is named as a server-side failure."""
    text = str(err) if isinstance(err, (EdgeVLPError, str)) else f"internal error: {type(err).__name__}: {err}"
    return pb_utils.InferenceResponse(output_tensors=[], error=pb_utils.TritonError(text))


def tensor(request: Any, name: str, *, required: bool = True) -> np.ndarray | None:
    t = pb_utils.get_input_tensor_by_name(request, name)
    if t is None:
        if required:
            raise InputError(f"the request has no {name} input")
        return None
    return t.as_numpy()


def frame_of(request: Any) -> np.ndarray:
    """The request's IMAGE (1, H, W, 3) uint8 as one BGR frame, checked."""
    image = tensor(request, "IMAGE")
    assert image is not None
    if image.ndim != 4 or image.shape[0] != 1 or image.shape[3] != 3:
        raise InputError(f"IMAGE must be one BGR uint8 frame of shape (1, H, W, 3), got {tuple(image.shape)}")
    h, w = image.shape[1:3]
    if h == 0 or w == 0:
        raise InputError(f"IMAGE is empty ({h} x {w}); send a decoded frame")
    if max(h, w) > MAX_IMAGE_SIDE:
        raise InputError(f"IMAGE is {w} x {h}; the largest side served is {MAX_IMAGE_SIDE} px: resize it")
    return image[0]


def budget(request: Any, default: int, limit: int) -> int:
    """The request's MAX_NEW_TOKENS (``default`` when absent), checked to be in 1..``limit``."""
    value = tensor(request, "MAX_NEW_TOKENS", required=False)
    if value is None:
        return default
    flat = np.asarray(value).reshape(-1)
    if flat.size != 1:
        raise InputError(f"MAX_NEW_TOKENS must be one number, got {flat.size}")
    n = int(flat[0])
    if not 1 <= n <= limit:
        raise InputError(f"MAX_NEW_TOKENS must be in 1..{limit}, got {n}")
    return n


def truncate(tokens: Sequence[int] | np.ndarray, budget: int, eos: int | list[int] | None) -> list[int]:
    """A generated row cut to its own ``budget`` and to its first eos (kept): what a run with that budget
    alone gives, for greedy rows decoded in step with longer ones."""
    out = [int(t) for t in tokens[:budget]]
    stops = set(eos if isinstance(eos, list) else [] if eos is None else [eos])
    for k, t in enumerate(out):
        if t in stops:
            return out[:k + 1]
    return out


def text_response(text: str, tokens: Sequence[int]) -> Any:
    """A TEXT + TOKEN_IDS response (captioner and assistant)."""
    return pb_utils.InferenceResponse([
        pb_utils.Tensor("TEXT", np.array([[text.encode("utf-8")]], dtype=object)),
        pb_utils.Tensor("TOKEN_IDS", np.array([list(tokens)], dtype=np.int64))])


def per_request(requests: Sequence[Any], work: Callable[[Any], Any]) -> list[Any]:
    """``work(request)`` for each request; a failing one gets its error response, the others go on."""
    out = []
    for r in requests:
        try:
            out.append(work(r))
        except Exception as err:  # noqa: BLE001
            out.append(error(err))
    return out
