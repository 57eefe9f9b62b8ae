"""A Triton client for the repositories ``edgevlp export --target triton`` writes.

The served captioner and detector are found through the server's repository index (each entry model
carries an ``edgevlp_task`` config parameter); results are the runtime's own dataclasses
(:class:`~edgevlp.runtime.results.Caption`, :class:`~edgevlp.runtime.results.Detections`), so code
written against ``edgevlp.runtime.load`` runs against a server unchanged (:meth:`Client.captioner`,
:meth:`Client.detector`).

Example:
    >>> from edgevlp.serve import Client
    >>> client = Client("grpc://127.0.0.1:8001")                      # doctest: +SKIP
    >>> client.caption(frame_bgr).text                                 # doctest: +SKIP
    >>> client.detect(frame_bgr, ["red circle"], threshold=0.2).scores  # doctest: +SKIP
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Sequence
from typing import Any
from urllib.parse import urlparse

import numpy as np

from edgevlp.errors import DependencyError, InputError, ServerError
from edgevlp.runtime.base import check_frame
from edgevlp.runtime.results import Answer, Caption, Detections
from edgevlp.serve.repository import (BOXES, IMAGE, LABELS, MAX_NEW_TOKENS, PROMPTS, QUESTION, SCORES, TEXT,
                                      THRESHOLD, TOKEN_IDS)

__all__ = ["Client", "RemoteCaptioner", "RemoteDetector", "RemoteAssistant", "parse_server_url"]


def parse_server_url(url: str) -> tuple[str, str]:
    """``grpc://host:port`` / ``http://host:port`` / ``host:port`` (gRPC) -> (protocol, "host:port")."""
    parsed = urlparse(url if "://" in url else f"grpc://{url}")
    if parsed.scheme not in ("grpc", "http") or not parsed.hostname or parsed.port is None:
        raise InputError(f"server URL {url!r} must look like grpc://HOST:PORT or http://HOST:PORT "
                         "(e.g. grpc://127.0.0.1:8001)")
    return parsed.scheme, f"{parsed.hostname}:{parsed.port}"


class Client:
    """One connection to a tritonserver serving edgevlp repositories (thread-safe for ``infer``)."""

    def __init__(self, url: str = "grpc://127.0.0.1:8001", *, timeout: float = 30.0,
                 max_in_flight: int | None = None) -> None:
        self.protocol, self.address = parse_server_url(url)
        #: requests in flight at most (blocking :meth:`infer` calls wait for a slot): the queue that
        #: several camera pipelines share; None: unbounded
        self._slots = threading.BoundedSemaphore(max_in_flight) if max_in_flight else None
        self.url = url
        self.timeout = timeout
        try:
            if self.protocol == "grpc":
                import tritonclient.grpc as tc
            else:
                import tritonclient.http as tc
            from tritonclient.utils import InferenceServerException
        except ImportError:
            raise DependencyError("the Triton client needs tritonclient: pip install 'edgevlp[serve]'") from None
        self._tc = tc
        self._error = InferenceServerException
        kwargs = {} if self.protocol == "grpc" else {"concurrency": 64, "network_timeout": timeout}
        self._client = tc.InferenceServerClient(self.address, **kwargs)
        self._models: dict[str, str] | None = None
        self._lock = threading.Lock()

    # ------------------------------------------------------------------------------- discovery
    def _call(self, what: str, fn: Callable[[], Any]) -> Any:
        try:
            return fn()
        except self._error as err:
            text = str(err.message() or err)
            down = "UNAVAILABLE" in str(err.status()) or "connect" in text.lower()
            raise ServerError(f"{what} at {self.url}: {text}" + ("; is the server running (edgevlp serve "
                                                                 "REPO)?" if down else "")) from None
        except Exception as err:  # noqa: BLE001 - connection errors of grpc/gevent
            raise ServerError(f"{what} at {self.url} failed ({type(err).__name__}: {err}); is the "
                              "server running (edgevlp serve REPO)?") from None

    def models(self) -> dict[str, str]:
        """``{task: model name}`` of the ready entry models the server holds."""
        if self._models is None:
            if self.protocol == "grpc":
                index = self._call("listing models", lambda: self._client.get_model_repository_index(as_json=True))
                entries = index.get("models", [])
            else:
                entries = self._call("listing models", self._client.get_model_repository_index)
            found: dict[str, str] = {}
            for m in entries:
                if m.get("state") != "READY":
                    continue
                config = self._config(m["name"])
                task = config.get("parameters", {}).get("edgevlp_task", {}).get("string_value")
                if task:
                    found.setdefault(task, m["name"])
            self._models = found
        return dict(self._models)

    def _config(self, name: str) -> dict[str, Any]:
        if self.protocol == "grpc":
            return self._call(f"reading {name}'s config",
                              lambda: self._client.get_model_config(name, as_json=True)).get("config", {})
        return self._call(f"reading {name}'s config", lambda: self._client.get_model_config(name))

    def model_for(self, task: str, model: str | None = None) -> str:
        if model is not None:
            return model
        found = self.models()
        if task not in found:
            raise ServerError(f"the server at {self.url} serves no {task} model (it serves: "
                              f"{', '.join(f'{v} ({k})' for k, v in found.items()) or 'none'}); export one "
                              "with `edgevlp export ... --target triton`")
        return found[task]

    # ------------------------------------------------------------------------------- requests
    def _inputs(self, frame: np.ndarray, extra: Sequence[tuple[str, np.ndarray, str]]) -> list[Any]:
        check_frame(frame, "the client")
        if frame.dtype != np.uint8 or frame.ndim != 3 or frame.shape[2] != 3:
            raise InputError(f"frames must be BGR uint8 (H, W, 3), got {frame.dtype} {frame.shape}")
        if frame.size == 0:  # also: Triton's ensemble scheduler never answers a zero-byte input
            raise InputError(f"the frame is empty ({frame.shape[1]} x {frame.shape[0]}); send a decoded frame")
        out = []
        for name, value, dtype in ((IMAGE, np.ascontiguousarray(frame[None]), "UINT8"), *extra):
            t = self._tc.InferInput(name, list(value.shape), dtype)
            t.set_data_from_numpy(value)
            out.append(t)
        return out

    def _outputs(self, names: Sequence[str]) -> list[Any]:
        return [self._tc.InferRequestedOutput(n) for n in names]

    def infer(self, model: str, inputs: list[Any], outputs: Sequence[str]) -> dict[str, np.ndarray]:
        if self._slots is not None:
            self._slots.acquire()
        try:
            result = self._call(f"request to {model}", lambda: self._client.infer(
                model, inputs, outputs=self._outputs(outputs), **self._timeout()))
        finally:
            if self._slots is not None:
                self._slots.release()
        return {n: result.as_numpy(n) for n in outputs}

    def _timeout(self) -> dict[str, Any]:
        return {"client_timeout": self.timeout} if self.protocol == "grpc" else {}

    def infer_async(self, model: str, inputs: list[Any], outputs: Sequence[str],
                    done: Callable[[dict[str, np.ndarray] | None, str | None], None]) -> None:
        """Send without waiting; ``done(outputs, None)`` or ``done(None, error)`` runs on a client thread."""
        def finish(result: Any, error: Any) -> None:
            if error is not None:
                done(None, str(error.message() if hasattr(error, "message") else error))
            else:
                done({n: result.as_numpy(n) for n in outputs}, None)

        if self.protocol == "grpc":
            self._client.async_infer(model, inputs, finish, outputs=self._outputs(outputs), **self._timeout())
        else:
            request = self._client.async_infer(model, inputs, outputs=self._outputs(outputs))

            def wait() -> None:
                try:
                    finish(request.get_result(), None)
                except self._error as err:
                    finish(None, err)

            threading.Thread(target=wait, daemon=True).start()

    def caption_inputs(self, frame: np.ndarray, max_new_tokens: int | None = None) -> list[Any]:
        extra = [] if max_new_tokens is None else [(MAX_NEW_TOKENS, np.array([[max_new_tokens]], np.int32), "INT32")]
        return self._inputs(frame, extra)

    def detect_inputs(self, frame: np.ndarray, prompts: Sequence[str], threshold: float) -> list[Any]:
        if isinstance(prompts, (str, bytes)) or not len(prompts):
            raise InputError("prompts must be a non-empty list of strings, e.g. ['person']")
        encoded = np.array([[p.encode("utf-8") if isinstance(p, str) else p for p in prompts]], dtype=object)
        return self._inputs(frame, [(PROMPTS, encoded, "BYTES"),
                                    (THRESHOLD, np.array([[threshold]], np.float32), "FP32")])

    def caption(self, frame: np.ndarray, *, max_new_tokens: int | None = None, model: str | None = None) -> Caption:
        """Caption one BGR frame on the server's captioner."""
        name = self.model_for("caption", model)
        t0 = time.perf_counter()
        out = self.infer(name, self.caption_inputs(frame, max_new_tokens), (TEXT, TOKEN_IDS))
        return caption_result(out, (time.perf_counter() - t0) * 1e3)

    def detect(self, frame: np.ndarray, prompts: Sequence[str], *, threshold: float = 0.1,
               model: str | None = None) -> Detections:
        """Detect ``prompts`` in one BGR frame on the server's detector (boxes in frame pixels)."""
        name = self.model_for("detect", model)
        t0 = time.perf_counter()
        out = self.infer(name, self.detect_inputs(frame, prompts, threshold), (BOXES, SCORES, LABELS))
        return detections_result(out, list(prompts), (time.perf_counter() - t0) * 1e3)

    def ask(self, frame: np.ndarray, question: str | None = None, *, max_new_tokens: int | None = None,
            model: str | None = None) -> Answer:
        """Ask the server's VLM ``question`` about one BGR frame (None: its default captioning prompt)."""
        name = self.model_for("vqa", model)
        extra = [] if max_new_tokens is None else [(MAX_NEW_TOKENS, np.array([[max_new_tokens]], np.int32), "INT32")]
        if question is not None:
            extra.append((QUESTION, np.array([[question.encode("utf-8")]], dtype=object), "BYTES"))
        t0 = time.perf_counter()
        out = self.infer(name, self._inputs(frame, extra), (TEXT, TOKEN_IDS))
        c = caption_result(out, (time.perf_counter() - t0) * 1e3)
        return Answer(text=c.text, token_ids=c.token_ids, timings=c.timings)

    def assistant(self, model: str | None = None) -> "RemoteAssistant":
        return RemoteAssistant(self, self.model_for("vqa", model))

    def captioner(self, model: str | None = None) -> "RemoteCaptioner":
        return RemoteCaptioner(self, self.model_for("caption", model))

    def detector(self, model: str | None = None) -> "RemoteDetector":
        return RemoteDetector(self, self.model_for("detect", model))

    def close(self) -> None:
        self._client.close()


def caption_result(out: dict[str, np.ndarray], ms: float) -> Caption:
    text = out[TEXT].reshape(-1)[0]
    return Caption(text=text.decode("utf-8") if isinstance(text, bytes) else str(text),
                   token_ids=[int(t) for t in out[TOKEN_IDS].reshape(-1)], timings={"server": ms})


def detections_result(out: dict[str, np.ndarray], prompts: list[str], ms: float) -> Detections:
    return Detections(boxes_xyxy=out[BOXES].reshape(-1, 4).astype(np.float32),
                      scores=out[SCORES].reshape(-1).astype(np.float32),
                      labels=out[LABELS].reshape(-1).astype(np.int64), label_names=prompts,
                      timings={"server": ms})


class RemoteCaptioner:
    """The served captioner with the runtime Captioner's ``caption(frame)``."""

    task = "caption"

    def __init__(self, client: Client, model: str) -> None:
        self.client, self.model = client, model
        self.backend = f"triton {model} @ {client.url}"

    def caption(self, frame: np.ndarray, max_new_tokens: int | None = None) -> Caption:
        return self.client.caption(frame, max_new_tokens=max_new_tokens, model=self.model)


class RemoteDetector:
    """The served detector with the runtime Detector's ``set_prompts`` / ``detect``; the server caches
    each prompt set's text embeddings, so sending them with every frame costs no text encoding."""

    task = "detect"

    def __init__(self, client: Client, model: str) -> None:
        self.client, self.model = client, model
        self.prompts: list[str] = []
        self.backend = f"triton {model} @ {client.url}"

    def set_prompts(self, prompts: Sequence[str]) -> None:
        from edgevlp.runtime.detector import _validate_prompts

        self.prompts = _validate_prompts(prompts)

    def detect(self, frame: np.ndarray, threshold: float = 0.1) -> Detections:
        if not self.prompts:
            raise InputError("no prompts set: call set_prompts([...]) before detect()")
        return self.client.detect(frame, self.prompts, threshold=threshold, model=self.model)


class RemoteAssistant:
    """The served VLM with the runtime Assistant's ``ask(frame, question)``."""

    task = "vqa"
    manifest = None

    def __init__(self, client: Client, model: str) -> None:
        self.client, self.model = client, model
        self.backend = f"triton {model} @ {client.url}"

    def ask(self, frame: np.ndarray, question: str | None = None, max_new_tokens: int | None = None) -> Answer:
        return self.client.ask(frame, question, max_new_tokens=max_new_tokens, model=self.model)
