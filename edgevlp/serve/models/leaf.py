"""The Python leaf: one bundle graph through onnxruntime inside Triton's Python backend.

The requests Triton's dynamic batcher hands over together are grouped by their shapes (past the batch
axis), concatenated, run once per group and split back: a decoder step of four captions and one of a
single caption with a longer cache are two runs, never a padded mix.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from edgevlp.bundle import GraphSpec
from edgevlp.runtime.backends.onnxruntime import OnnxRuntimeBackend
from edgevlp.serve.models._base import error, model_config, pb_utils

__all__ = ["TritonPythonModel"]


class TritonPythonModel:
    def initialize(self, args: dict[str, Any]) -> None:
        _, params = model_config(args)
        self.graph = GraphSpec.from_dict(json.loads(params["edgevlp_graph"]))
        root = Path(args["model_repository"]) / args["model_version"]
        # the repository's sessions share the cores: idle threads sleep instead of spinning
        threads = int(params.get("edgevlp_threads", "0"))
        self.session = OnnxRuntimeBackend("cpu", threads=threads, spinning=False).open(root, self.graph)
        self.inputs = [t.name for t in self.graph.inputs]
        self.outputs = [t.name for t in self.graph.outputs]

    def execute(self, requests: Sequence[Any]) -> list[Any]:
        feeds = []
        for r in requests:
            feeds.append({n: pb_utils.get_input_tensor_by_name(r, n).as_numpy() for n in self.inputs})
        groups: dict[tuple, list[int]] = {}
        for i, f in enumerate(feeds):
            groups.setdefault(tuple((n, f[n].shape[1:], f[n].dtype.str) for n in self.inputs), []).append(i)
        responses: list[Any] = [None] * len(requests)
        for members in groups.values():
            try:
                batch = {n: np.concatenate([feeds[i][n] for i in members]) if len(members) > 1
                         else feeds[members[0]][n] for n in self.inputs}
                out = self.session.run(batch)
                start = 0
                for i in members:
                    rows = feeds[i][self.inputs[0]].shape[0]
                    responses[i] = pb_utils.InferenceResponse(
                        [pb_utils.Tensor(n, np.ascontiguousarray(out[n][start:start + rows])) for n in self.outputs])
                    start += rows
            except Exception as err:  # noqa: BLE001 - answer each request, stay up
                for i in members:
                    responses[i] = error(err)
        return responses

    def finalize(self) -> None:
        pass
