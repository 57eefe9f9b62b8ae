"""A bundle as a Triton Inference Server model repository (``edgevlp export --target triton``).

Layout, for a bundle served as ``NAME``::

    REPO/edgevlp-repository.json     what was written: models, leaf kind, bundle manifest, sha256 of files
    REPO/README.md                   how to serve it (edgevlp serve, NVIDIA's container)
    REPO/NAME/                       the entry model: a Python BLS captioner, or a detector ensemble;
         1/bundle/                   the bundle's manifest and tokenizer (read by the Python models)
    REPO/NAME_<graph role>/          one leaf model per graph (dynamic batching, instance groups)
    REPO/NAME_preprocess|prompts|postprocess/   the detector ensemble's Python steps

The entry model is found by clients through its ``edgevlp_task`` config parameter
(:class:`edgevlp.serve.Client`). Topologies are one function per task in :data:`TOPOLOGIES`.
Torch-free: a repository is cut from a bundle.
"""

from __future__ import annotations

import json
import os
import re
import shutil
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from edgevlp import __version__
from edgevlp.bundle import (GraphSpec, Manifest, TensorSpec, atomic_directory, check_files, hash_files,
                            read_manifest, read_record)
from edgevlp.errors import BundleError, InputError
from edgevlp.serve.leaves import Leaf, get_leaf
from edgevlp.serve.pbtxt import TRITON_DTYPES, Enum, pbtxt

__all__ = ["ServeSettings", "write_repository", "read_repository", "REPOSITORY_FILE", "TOPOLOGIES",
           "IMAGE", "MAX_NEW_TOKENS", "TEXT", "TOKEN_IDS", "PROMPTS", "THRESHOLD", "BOXES", "SCORES",
           "LABELS", "QUESTION"]

REPOSITORY_FILE = "edgevlp-repository.json"
FORMAT = "edgevlp-triton-repository"
FORMAT_VERSION = 1
#: The entry models' request and response tensors (what :class:`edgevlp.serve.Client` sends).
IMAGE, MAX_NEW_TOKENS, TEXT, TOKEN_IDS = "IMAGE", "MAX_NEW_TOKENS", "TEXT", "TOKEN_IDS"
QUESTION = "QUESTION"
PROMPTS, THRESHOLD, BOXES, SCORES, LABELS = "PROMPTS", "THRESHOLD", "BOXES", "SCORES", "LABELS"
_NAME = re.compile(r"^[A-Za-z][A-Za-z0-9_-]{0,63}$")


@dataclass(frozen=True)
class ServeSettings:
    """How the repository's models are scheduled.

    Attributes:
        max_batch_size: requests one entry model / image leaf runs together.
        queue_delay_us: how long the dynamic batcher of an entry model or image leaf waits to fill a
            batch (decoder and cross-attention leaves never wait: the BLS already batches them).
        instances: model instances per model (``instance_group`` count).
        kind: ``KIND_CPU`` or ``KIND_GPU`` (leaves only; Python steps always run on the CPU).
        batching: False writes no ``dynamic_batching``: each request runs alone (the load test's baseline).
        prompt_cache: prompt sets whose text embeddings the detector keeps.
        threads: onnxruntime intra-op threads of each Python leaf (0: one per core).
    """

    max_batch_size: int = 8
    queue_delay_us: int = 2000
    instances: int = 1
    kind: str = "KIND_CPU"
    batching: bool = True
    prompt_cache: int = 64
    threads: int = 0

    @classmethod
    def from_profile(cls, serve: dict[str, Any], **overrides: Any) -> "ServeSettings":
        """Settings from a profile's ``[serve]`` table (recorded in the bundle), then ``overrides``
        (None values are ignored)."""
        known = {f for f in cls.__dataclass_fields__}
        values = {**serve, **{k: v for k, v in overrides.items() if v is not None}}
        unknown = sorted(set(values) - known)
        if unknown:
            raise InputError(f"unknown serve setting(s) {unknown}; known: {sorted(known)}")
        return cls(**values)

    def __post_init__(self) -> None:
        if not 1 <= self.max_batch_size <= 256:
            raise InputError(f"max_batch_size must be in 1..256, got {self.max_batch_size}")
        if not 0 <= self.queue_delay_us <= 1_000_000:
            raise InputError(f"queue delay must be in 0..1000000 microseconds, got {self.queue_delay_us}")
        if not 1 <= self.instances <= 64:
            raise InputError(f"instances must be in 1..64, got {self.instances}")
        if self.kind not in ("KIND_CPU", "KIND_GPU"):
            raise InputError(f"instance kind must be KIND_CPU or KIND_GPU, got {self.kind!r}")


# ------------------------------------------------------------------------------------------- configs
def _dims(shape: tuple[int | str, ...]) -> list[int]:
    return [d if isinstance(d, int) else -1 for d in shape]


def _io(name: str, dtype: str, dims: list[int], *, optional: bool = False) -> dict[str, Any]:
    return {"name": name, "data_type": Enum(TRITON_DTYPES[dtype]), "dims": dims,
            "optional": True if optional else None}


def _tensor(t: TensorSpec) -> dict[str, Any]:
    """A graph tensor as a batched Triton tensor: its first axis is the batch."""
    return _io(t.name, t.dtype, _dims(t.shape[1:]))


def _params(**values: Any) -> list[dict[str, Any]]:
    return [{"key": k, "value": {"string_value": v if isinstance(v, str) else json.dumps(v)}}
            for k, v in values.items()]


@dataclass
class _Model:
    """One model directory to write: its config fields and files (relative path -> source or text)."""

    name: str
    config: dict[str, Any]
    files: dict[str, Path | str]
    role: str | None = None  # the bundle graph a leaf serves


class _Writer:
    """What a topology function gets: the bundle, the leaf kind, the settings and the model list."""

    def __init__(self, manifest: Manifest, name: str, leaf: Leaf, settings: ServeSettings) -> None:
        self.manifest, self.name, self.leaf, self.settings = manifest, name, leaf, settings
        self.models: list[_Model] = []
        self.bundle_rel = f"{name}/1/bundle"  # the bundle's small files, relative to the repository

    def config(self, name: str, *, inputs: list[dict[str, Any]], outputs: list[dict[str, Any]],
               engine: dict[str, str], batch: int, wait: bool, parameters: dict[str, Any] | None = None,
               cpu: bool = False, **extra: Any) -> dict[str, Any]:
        s = self.settings
        batching = ({"max_queue_delay_microseconds": s.queue_delay_us if wait else 0}
                    if s.batching and batch > 1 else None)
        groups = None if engine.get("platform") == "ensemble" else \
            [{"kind": Enum("KIND_CPU" if cpu else s.kind), "count": s.instances}]
        return {"name": name, **engine, "max_batch_size": batch, "input": inputs, "output": outputs,
                "dynamic_batching": batching, "instance_group": groups,
                "parameters": _params(**(parameters or {})) or None, **extra}

    def python_model(self, name: str, module: str, what: str, **config: Any) -> _Model:
        shim = (f'"""Triton Python model: {what}.\n\nWritten by `edgevlp export --target triton` '
                f'(edgevlp {__version__}); the code is edgevlp.serve.models.{module}."""\n\n'
                f"from edgevlp.serve.models.{module} import TritonPythonModel  # noqa: F401\n")
        params = {"edgevlp_bundle": self.bundle_rel, **config.pop("parameters", {})}
        model = _Model(name, self.config(name, engine={"backend": "python"}, cpu=True, parameters=params,
                                         **config), {"1/model.py": shim})
        self.models.append(model)
        return model

    def leaf_model(self, graph: GraphSpec, *, wait: bool, batch_dim_max: int) -> str:
        """The leaf serving ``graph``; returns its model name."""
        name = f"{self.name}_{graph.role}"
        root = self.manifest.path
        assert root is not None
        files: dict[str, Path | str] = {f"1/{rel}": root / rel for rel in (graph.file, *graph.extra_files)}
        params: dict[str, Any] = {}
        if self.leaf.python:
            files["1/model.py"] = (f'"""Triton Python model: the {graph.role} graph through onnxruntime.'
                                   f'\n\nWritten by `edgevlp export --target triton` (edgevlp '
                                   f'{__version__}); the code is edgevlp.serve.models.leaf."""\n\n'
                                   "from edgevlp.serve.models.leaf import TritonPythonModel  # noqa: F401\n")
            params["edgevlp_graph"] = json.dumps(graph.to_dict())
            params["edgevlp_threads"] = str(self.settings.threads)
        config = self.config(name, inputs=[_tensor(t) for t in graph.inputs],
                             outputs=[_tensor(t) for t in graph.outputs], engine=self.leaf.engine,
                             batch=min(batch_dim_max, 1024), wait=wait, parameters=params,
                             default_model_filename=None if self.leaf.python else self.leaf.model_file(graph))
        self.models.append(_Model(name, config, files, role=graph.role))
        return name

    def batch_max(self, graph: GraphSpec) -> int:
        """How many rows a leaf takes at once: the profile's range of its first axis (``batch``,
        ``num_queries``), at least the entry models' batch; a static first axis is its size."""
        first = graph.inputs[0].shape[0]
        if isinstance(first, int):  # a static batch (TensorRT profiles with static_batch)
            return first
        shapes = self.manifest.target_profile.get("shapes", {})
        return max(int(shapes.get(first, [0, 0, 0])[2]), self.settings.max_batch_size)


# ---------------------------------------------------------------------------------------- topologies
def _image_input() -> dict[str, Any]:
    return _io(IMAGE, "uint8", [-1, -1, 3])


def _captioner(w: _Writer) -> None:
    """One Python BLS model: the vision leaf for the whole batch of requests, the cross-attention leaf,
    then the decode loop for the batch in step on the decoder leaf (:mod:`edgevlp.serve.models.captioner`)."""
    graphs = w.manifest.graphs
    leaves = {role: w.leaf_model(g, wait=False, batch_dim_max=w.batch_max(g)) for role, g in graphs.items()}
    batch = min([w.settings.max_batch_size, *(w.batch_max(g) for g in graphs.values())])
    w.python_model(w.name, "captioner", f"{w.name} captioner (BLS over {', '.join(leaves.values())})",
                   inputs=[_image_input(), _io(MAX_NEW_TOKENS, "int32", [1], optional=True)],
                   outputs=[_io(TEXT, "bytes", [1]), _io(TOKEN_IDS, "int64", [-1])],
                   batch=batch, wait=True,
                   parameters={"edgevlp_task": "caption", "edgevlp_leaves": leaves})


def _assistant(w: _Writer) -> None:
    """One Python BLS model answering each request's QUESTION (UTF-8; none: the bundle's default
    prompt) about its IMAGE: tiles through the vision leaf, the prompt through ``embed_tokens``, prefill
    and KV-cache decode on the decoder leaf (the runtime's :class:`~edgevlp.runtime.Assistant`). The
    requests of a dynamic batch are answered together: one left-padded prefill, one decode loop
    (:mod:`edgevlp.serve.models.assistant`)."""
    graphs = w.manifest.graphs
    leaves = {role: w.leaf_model(g, wait=False, batch_dim_max=w.batch_max(g)) for role, g in graphs.items()}
    w.python_model(w.name, "assistant", f"{w.name} visual question answering (BLS over "
                   f"{', '.join(leaves.values())})",
                   inputs=[_image_input(), _io(QUESTION, "bytes", [1], optional=True),
                           _io(MAX_NEW_TOKENS, "int32", [1], optional=True)],
                   outputs=[_io(TEXT, "bytes", [1]), _io(TOKEN_IDS, "int64", [-1])],
                   batch=w.settings.max_batch_size, wait=True,
                   parameters={"edgevlp_task": "vqa", "edgevlp_leaves": leaves})


def _detector(w: _Writer) -> None:
    """An ensemble: preprocess -> image leaf -> postprocess, with prompts -> text embeddings (cached per
    prompt set, the text leaf only on a miss) beside the image branch."""
    image, text = w.manifest.graphs["image_encoder"], w.manifest.graphs["text_encoder"]
    pixel_values = image.inputs[0]
    embed_dim = _dims(text.outputs[0].shape[1:])
    b = min(w.settings.max_batch_size, w.batch_max(image))
    image_leaf = w.leaf_model(image, wait=True, batch_dim_max=w.batch_max(image))
    text_leaf = w.leaf_model(text, wait=False, batch_dim_max=w.batch_max(text))
    pre, prompts, post = (f"{w.name}_{step}" for step in ("preprocess", "prompts", "postprocess"))
    transform = _io("TRANSFORM", "float64", [6])
    embeds = _io("TEXT_EMBEDS", "float32", [-1, *embed_dim])
    refused = _io("REFUSED", "bytes", [1])  # why a branch's step refused its input ("" if it did not)
    w.python_model(pre, "detector", "detector preprocessing (the bundle's spec, C++ extension)",
                   inputs=[_image_input()], outputs=[_tensor(pixel_values), transform, refused], batch=b, wait=False,
                   parameters={"edgevlp_step": "preprocess"})
    max_prompts = int(w.manifest.target_profile.get("shapes", {}).get("num_queries", [1, 8, 64])[2])
    w.python_model(prompts, "detector", f"prompt sets -> text embeddings through {text_leaf}, cached",
                   inputs=[_io(PROMPTS, "bytes", [-1])], outputs=[embeds, refused], batch=b, wait=False,
                   parameters={"edgevlp_step": "prompts", "edgevlp_leaves": {"text_encoder": text_leaf},
                               "edgevlp_prompt_cache": w.settings.prompt_cache,
                               "edgevlp_max_prompts": max_prompts})
    heads = [_tensor(t) for t in image.outputs]
    results = [_io(BOXES, "float32", [-1, 4]), _io(SCORES, "float32", [-1]), _io(LABELS, "int64", [-1])]
    w.python_model(post, "detector", "detector post-processing (class head, thresholds, NMS, frame boxes)",
                   inputs=[*heads, embeds, transform, _io(THRESHOLD, "float32", [1]),
                           _io("IMAGE_REFUSED", "bytes", [1]), _io("PROMPTS_REFUSED", "bytes", [1])],
                   outputs=results,
                   batch=b, wait=False, parameters={"edgevlp_step": "postprocess"})

    def step(model: str, inputs: dict[str, str], outputs: dict[str, str]) -> dict[str, Any]:
        return {"model_name": model, "model_version": -1,
                "input_map": [{"key": k, "value": v} for k, v in inputs.items()],
                "output_map": [{"key": k, "value": v} for k, v in outputs.items()]}

    head_names = {t.name: f"head.{t.name}" for t in image.outputs}
    # no step but postprocess, the join, fails a request: a refusal travels as REFUSED (models.detector)
    steps = [step(pre, {IMAGE: IMAGE}, {pixel_values.name: "pixel_values", "TRANSFORM": "transform",
                                        "REFUSED": "image_refused"}),
             step(image_leaf, {pixel_values.name: "pixel_values"}, head_names),
             step(prompts, {PROMPTS: PROMPTS}, {"TEXT_EMBEDS": "text_embeds", "REFUSED": "prompts_refused"}),
             step(post, {**{k: v for k, v in head_names.items()}, "TEXT_EMBEDS": "text_embeds",
                         "TRANSFORM": "transform", THRESHOLD: THRESHOLD,
                         "IMAGE_REFUSED": "image_refused", "PROMPTS_REFUSED": "prompts_refused"},
                  {BOXES: BOXES, SCORES: SCORES, LABELS: LABELS})]
    config = w.config(w.name, inputs=[_image_input(), _io(PROMPTS, "bytes", [-1]), _io(THRESHOLD, "float32", [1])],
                      outputs=results, engine={"platform": "ensemble"}, batch=b, wait=False,
                      parameters={"edgevlp_task": "detect", "edgevlp_bundle": w.bundle_rel},
                      ensemble_scheduling={"step": steps})
    config["dynamic_batching"] = None  # an ensemble's steps batch; the ensemble itself has no scheduler
    w.models.append(_Model(w.name, config, {}))


#: bundle task -> topology writer.
TOPOLOGIES: dict[str, Callable[[_Writer], None]] = {"caption": _captioner, "detect": _detector,
                                                     "vqa": _assistant}


# ------------------------------------------------------------------------------------------- writing
def _readme(repo: dict[str, Any], leaf: Leaf) -> str:
    names = ", ".join(f"`{m['name']}` ({m['task']})" for m in repo["entries"])
    native = "" if leaf.python else (
        "\n## NVIDIA's container\n\n"
        "```\ndocker run --rm --net=host -v $PWD:/models nvcr.io/nvidia/tritonserver:24.08-py3 \\\n"
        "  bash -c 'pip install edgevlp && tritonserver --model-repository /models'\n```\n\n"
        "The Python steps import `edgevlp.runtime` (torch-free): install edgevlp in the container "
        "(as above) or build an image with it.\n")
    return (f"# Triton model repository (edgevlp {__version__})\n\n"
            f"Entry models: {names}. Leaves: {leaf.name} ({leaf.note}).\n\n"
            "## Serve it\n\n```\nmake serve-env          # once: .serve-venv with nvidia-pytriton "
            "(numpy<2) and edgevlp\nedgevlp serve . --port 8000     # HTTP 8000, gRPC 8001, metrics 8002, "
            "bound to 127.0.0.1\n```\n\n"
            "## Use it\n\n```python\nfrom edgevlp.serve import Client\nclient = Client(\"grpc://127.0.0.1:8001\")\n"
            "client.caption(frame_bgr).text\nclient.detect(frame_bgr, [\"person\", \"cup\"], threshold=0.2)\n```\n\n"
            "or `edgevlp run --server grpc://127.0.0.1:8001 --source cam0.mp4 --source cam1.mp4 --headless`.\n"
            f"{native}\n`edgevlp-repository.json` lists every file with its sha256 (`edgevlp serve` checks them).\n")


def _engine_script(manifest: Manifest, models: list[_Model]) -> str:
    """trtexec per TensorRT leaf, with the bundle's own engine commands (its profile's shapes and
    precision), reading the ONNX beside the leaf and writing its model.plan."""
    import shlex

    commands = manifest.export.get("tensorrt", {}).get("trtexec", {})
    lines = ["#!/usr/bin/env bash", "# Build each TensorRT leaf's model.plan from the ONNX beside it, on the "
             f"serving GPU (profile {manifest.target_profile.get('name', '?')}, precision {manifest.precision}).",
             "# Usage: bash build_engines.sh [path/to/trtexec]", "set -euo pipefail", 'cd "$(dirname "$0")"',
             'TRTEXEC="${1:-$(command -v trtexec || echo /usr/src/tensorrt/bin/trtexec)}"']
    for m in models:
        if m.config.get("platform") != "tensorrt_plan" or m.role is None:
            continue
        onnx = next(k for k in m.files if k.endswith(".onnx"))
        args = [a for a in commands.get(m.role, []) if not a.startswith(("--onnx=", "--saveEngine="))]
        lines.append('"$TRTEXEC" ' + " ".join(shlex.quote(a) for a in (
            f"--onnx={m.name}/{onnx}", f"--saveEngine={m.name}/1/model.plan", *args)))
    return "\n".join(lines) + "\n"


def write_repository(bundle: str | os.PathLike[str], output: str | os.PathLike[str], *,
                     leaf: str = "python", name: str | None = None, settings: ServeSettings | None = None,
                     force: bool = False) -> dict[str, Any]:
    """Write a Triton model repository serving ``bundle`` (verified first); returns its record.

    The repository is built in a temp dir and moved into place (never half written). ``settings``
    default to the ``[serve]`` table of the profile the bundle was exported with.

    Example:
        >>> from edgevlp.serve import write_repository
        >>> write_repository("bundles/owl-cpu", "triton-repo", leaf="python")["entries"]  # doctest: +SKIP
        [{'name': 'owlvit', 'task': 'detect', ...}]
    """
    row = get_leaf(leaf)
    manifest = read_manifest(bundle, verify=True)
    settings = settings or ServeSettings.from_profile(manifest.target_profile.get("serve", {}))
    if manifest.task not in TOPOLOGIES:
        raise InputError(f"a {manifest.task} bundle cannot be served through Triton yet (served tasks: "
                         f"{', '.join(TOPOLOGIES)}); run it in process with `edgevlp run`")
    if manifest.target not in row.serves:
        raise InputError(f"--leaf {leaf} serves bundles exported for --target {' or '.join(row.serves)}; "
                         f"this one is --target {manifest.target}: export the model for "
                         f"--target {row.bundle_target} (or pass the model itself), or pick another --leaf")
    name = name or manifest.family
    if not _NAME.match(name):
        raise InputError(f"model name {name!r} must start with a letter and hold only letters, digits, "
                         "'_' or '-' (at most 64)")
    writer = _Writer(manifest, name, row, settings)
    TOPOLOGIES[manifest.task](writer)
    root_bundle = Path(bundle)
    small = ["manifest.json", manifest.tokenizer["file"], *(
        p.name for p in root_bundle.iterdir() if p.is_file() and p.suffix in (".json", ".jinja", ".txt")
        and p.name not in ("manifest.json", manifest.tokenizer["file"]))]
    with atomic_directory(output, force=force) as tmp:
        for model in writer.models:
            d = tmp / model.name
            (d / "1").mkdir(parents=True)
            (d / "config.pbtxt").write_text(pbtxt(model.config), encoding="utf-8")
            for rel, src in model.files.items():
                dst = d / rel
                dst.parent.mkdir(parents=True, exist_ok=True)
                if isinstance(src, Path):
                    shutil.copyfile(src, dst)
                else:
                    dst.write_text(src, encoding="utf-8")
        (tmp / writer.bundle_rel).mkdir(parents=True, exist_ok=True)
        for fname in small:
            shutil.copyfile(root_bundle / fname, tmp / writer.bundle_rel / fname)
        if row.name == "tensorrt":
            script = tmp / "build_engines.sh"
            script.write_text(_engine_script(manifest, writer.models), encoding="utf-8")
            script.chmod(0o755)
        entry = writer.models[-1] if manifest.task == "detect" else next(m for m in writer.models if m.name == name)
        record: dict[str, Any] = {
            "format": FORMAT, "format_version": FORMAT_VERSION, "edgevlp": __version__, "leaf": row.name,
            "settings": asdict(settings),
            "entries": [{"name": entry.name, "task": manifest.task, "family": manifest.family,
                         "bundle": writer.bundle_rel}],
            "models": sorted(m.name for m in writer.models),
            "bundle": {"source": manifest.source, "target": manifest.target, "precision": manifest.precision,
                       "parity": manifest.parity, "verified": manifest.verified},
        }
        (tmp / "README.md").write_text(_readme(record, row), encoding="utf-8")
        record["files"] = hash_files(tmp)
        (tmp / REPOSITORY_FILE).write_text(json.dumps(record, indent=2) + "\n", encoding="utf-8")
    return record


def read_repository(path: str | os.PathLike[str], *, verify: bool = True) -> dict[str, Any]:
    """The record of a repository written by :func:`write_repository`; with ``verify`` every listed
    file's sha256 is checked (a model directory added by hand is allowed and not checked)."""
    root, record = read_record(path, REPOSITORY_FILE, what="edgevlp Triton repository",
                               make="write one with `edgevlp export BUNDLE --target triton -o REPO`",
                               fix="export the repository again")
    file = root / REPOSITORY_FILE
    if record.get("format") != FORMAT:
        raise BundleError(f"{file} is not an edgevlp Triton repository record (format "
                          f"{record.get('format')!r})")
    if verify:
        check_files(root, record.get("files", {}), what="repository", listed_in=REPOSITORY_FILE,
                    fix="export the repository again")
    return record
