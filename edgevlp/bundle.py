"""Bundles: one self-describing directory per exported model (torch-free).

A bundle holds ``manifest.json``, the graph files (ONNX, OpenVINO IR, TensorRT engines) and
``tokenizer.json``. The manifest is the single contract between exporter and runtime: graphs with their
inputs/outputs/dtypes/dynamic axes, preprocessing, tokenizer and generation settings, compression recipe,
parity results and the sha256 of every file. Writing is atomic: a bundle appears whole or not at all.

Example:
    >>> from edgevlp.bundle import read_manifest
    >>> manifest = read_manifest("bundles/blip-cpu")          # doctest: +SKIP
    >>> manifest.task, sorted(manifest.graphs)                # doctest: +SKIP
    ('caption', ['cross_kv', 'text_decoder', 'vision_encoder'])
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import re
import shutil
import sys
import tempfile
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from edgevlp._io import read_json_object
from edgevlp.errors import BundleError
from edgevlp.targets import PRECISIONS, TARGETS, graph_formats
from edgevlp.tasks import TASKS as _TASK_TABLE

__all__ = ["FORMAT", "FORMAT_VERSION", "MANIFEST_FILE", "TENSORRT_ENGINE", "TensorSpec", "GraphSpec",
           "Manifest", "read_manifest", "verify_files", "file_digest", "atomic_directory", "sibling_tempdir",
           "hash_files", "is_bundle", "build_bundle", "write_manifest", "add_engines", "manifest_schema"]

FORMAT = "edgevlp-bundle"
FORMAT_VERSION = 1
MANIFEST_FILE = "manifest.json"
#: Key of a TensorRT engine in ``GraphSpec.engines`` (written by the exporter and by ``add-engines``).
TENSORRT_ENGINE = "tensorrt"
TASKS = tuple(_TASK_TABLE)  # the task registry's names (edgevlp.tasks)
DTYPES = ("float32", "float16", "int64", "int32", "bool", "uint8", "int8")


@dataclass(frozen=True)
class TensorSpec:
    """One graph input or output: name, dtype and shape (ints, or names for dynamic axes)."""

    name: str
    dtype: str
    shape: tuple[int | str, ...]

    def __post_init__(self) -> None:
        if self.dtype not in DTYPES:
            raise BundleError(f"tensor {self.name!r} has unknown dtype {self.dtype!r} (known: {DTYPES})")

    @property
    def dynamic_axes(self) -> dict[int, str]:
        return {i: d for i, d in enumerate(self.shape) if isinstance(d, str)}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "TensorSpec":
        return cls(name=str(d["name"]), dtype=str(d["dtype"]),
                   shape=tuple(v if isinstance(v, str) else int(v) for v in d["shape"]))


@dataclass(frozen=True)
class GraphSpec:
    """A graph of the bundle: its role, file(s) relative to the bundle, and I/O contract."""

    role: str
    file: str
    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]
    format: str = "onnx"  # "onnx" | "openvino" | "tensorrt"
    extra_files: tuple[str, ...] = ()
    engines: Mapping[str, str] = field(default_factory=dict)

    @property
    def dynamic_axes(self) -> dict[str, dict[int, str]]:
        return {t.name: t.dynamic_axes for t in (*self.inputs, *self.outputs) if t.dynamic_axes}

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["dynamic_axes"] = {k: {str(a): n for a, n in v.items()} for k, v in self.dynamic_axes.items()}
        return d

    def with_engine(self, rel: str) -> "GraphSpec":
        """This graph with the TensorRT engine ``rel`` (relative to the bundle) registered."""
        return dataclasses.replace(self, engines={**dict(self.engines), TENSORRT_ENGINE: rel})

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "GraphSpec":
        return cls(role=str(d["role"]), file=str(d["file"]),
                   inputs=tuple(TensorSpec.from_dict(t) for t in d["inputs"]),
                   outputs=tuple(TensorSpec.from_dict(t) for t in d["outputs"]),
                   format=str(d.get("format", "onnx")), extra_files=tuple(d.get("extra_files", ())),
                   engines=dict(d.get("engines", {})))


@dataclass
class Manifest:
    """The parsed ``manifest.json`` (see ``edgevlp/bundle.schema.json``)."""

    task: str
    family: str
    architecture: str
    source: dict[str, Any]
    target: str
    precision: str
    graphs: dict[str, GraphSpec]
    preprocess: dict[str, Any]
    tokenizer: dict[str, Any]
    generation: dict[str, Any] = field(default_factory=dict)
    detection: dict[str, Any] = field(default_factory=dict)
    compression: dict[str, Any] | None = None
    parity: dict[str, Any] = field(default_factory=dict)
    verified: bool = False
    versions: dict[str, str] = field(default_factory=dict)
    target_profile: dict[str, Any] = field(default_factory=dict)
    export: dict[str, Any] = field(default_factory=dict)
    files: dict[str, dict[str, Any]] = field(default_factory=dict)
    format: str = FORMAT
    format_version: int = FORMAT_VERSION
    path: Path | None = None

    def to_dict(self) -> dict[str, Any]:
        d = {k: v for k, v in asdict(self).items() if k not in ("graphs", "path")}
        d["graphs"] = {k: g.to_dict() for k, g in self.graphs.items()}
        order = ["format", "format_version", "task", "family", "architecture", "source", "target",
                 "precision", "verified"]
        return {**{k: d[k] for k in order}, **{k: v for k, v in d.items() if k not in order}}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any], *, path: Path | None = None) -> "Manifest":
        where = f" in {path}" if path else ""
        if d.get("format") != FORMAT:
            raise BundleError(f"not an edgevlp bundle{where}: format is {d.get('format')!r}, "
                              f"expected {FORMAT!r}")
        version = d.get("format_version")
        if version != FORMAT_VERSION:
            raise BundleError(f"bundle format version {version!r}{where} is not supported by this "
                              f"edgevlp (reads version {FORMAT_VERSION}); re-export the model or "
                              "upgrade edgevlp")
        if d.get("task") not in TASKS:
            raise BundleError(f"bundle task {d.get('task')!r}{where} is not one of {TASKS}")
        known = set(cls.__dataclass_fields__) - {"path"}
        unknown = set(d) - known
        if unknown:
            raise BundleError(f"manifest{where} has unknown keys {sorted(unknown)}; upgrade edgevlp")
        try:
            kw = {k: v for k, v in d.items() if k != "graphs"}
            graphs = {k: GraphSpec.from_dict(g) for k, g in d["graphs"].items()}
            return cls(graphs=graphs, path=path, **kw)
        except (KeyError, TypeError, ValueError) as err:
            raise BundleError(f"manifest{where} is malformed ({type(err).__name__}: {err}); "
                              "re-export the bundle") from None


def is_bundle(path: str | os.PathLike[str]) -> bool:
    """Whether ``path`` is a directory with a ``manifest.json``."""
    return (Path(path) / MANIFEST_FILE).is_file()


def file_digest(path: Path) -> str:
    """sha256 hex digest of a file, read in 1 MiB chunks."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def hash_files(root: Path) -> dict[str, dict[str, Any]]:
    """``{relative path: {sha256, size}}`` for every file under ``root`` except the manifest."""
    out: dict[str, dict[str, Any]] = {}
    for path in sorted(p for p in root.rglob("*") if p.is_file()):
        rel = path.relative_to(root).as_posix()
        if rel != MANIFEST_FILE:
            out[rel] = {"sha256": file_digest(path), "size": path.stat().st_size}
    return out


def check_files(root: Path, files: Mapping[str, Mapping[str, Any]], *, what: str, listed_in: str,
                fix: str) -> None:
    """Check every ``{relative path: {sha256, size}}`` under ``root`` exists with its size and sha256;
    raise :class:`BundleError` naming the file (``what``: "bundle", "repository"; ``fix``: how to mend)."""
    for rel, meta in files.items():
        path = root / rel
        if not path.is_file():
            raise BundleError(f"{what} {root} is missing {rel}; {fix}")
        if path.stat().st_size != meta["size"] or file_digest(path) != meta["sha256"]:
            raise BundleError(f"{what} file {path} does not match its sha256 in {listed_in} (modified or "
                              f"corrupted); {fix}")


def verify_files(manifest: Manifest) -> None:
    """Check every listed file exists with its recorded size and sha256; raise naming the file."""
    root = manifest.path
    assert root is not None, "verify_files needs a manifest read from disk"
    check_files(root, manifest.files, what="bundle", listed_in=MANIFEST_FILE,
                fix="re-export or copy the whole bundle again")
    for graph in manifest.graphs.values():
        for rel in (graph.file, *graph.extra_files):
            if rel not in manifest.files:
                raise BundleError(f"graph {graph.role!r} file {rel} is not listed in the manifest's "
                                  "files; the bundle is inconsistent, re-export it")


def manifest_schema() -> dict[str, Any]:
    """The JSON schema of ``manifest.json`` (``bundle.schema.json``) with the target, precision and graph
    format enums filled in from :data:`edgevlp.targets.TARGETS`, where they are declared.

    Example:
        >>> manifest_schema()["properties"]["target"]["enum"]
        ['cpu', 'openvino', 'jetson', 'laptop-gpu']
    """
    schema = json.loads(Path(__file__).with_name("bundle.schema.json").read_text(encoding="utf-8"))
    props = schema["properties"]
    props["target"] = {"enum": list(TARGETS)}
    props["precision"] = {"enum": list(PRECISIONS)}
    props["graphs"]["additionalProperties"]["properties"]["format"] = {"enum": list(graph_formats())}
    return schema


def read_record(path: str | os.PathLike[str], name: str, *, what: str, make: str,
                fix: str) -> tuple[Path, dict[str, Any]]:
    """``(root, the JSON object in root/name)`` of a directory described by one JSON file (a bundle's
    manifest, a serving repository's record); :class:`BundleError` when it is missing or malformed."""
    root = Path(path)
    if not root.exists():
        raise BundleError(f"no such {what}: {root}")
    if not (root / name).is_file():
        raise BundleError(f"{root} is not {'an' if what[0] in 'aeiou' else 'a'} {what}: it has no {name} ({make})")
    return root, read_json_object(root / name, BundleError, fix)


def read_manifest(path: str | os.PathLike[str], *, verify: bool = True) -> Manifest:
    """Read and validate a bundle's manifest; with ``verify`` also check every file's sha256."""
    root, data = read_record(path, MANIFEST_FILE, what="bundle", make="write one with `edgevlp export`",
                             fix="re-export the bundle")
    manifest = Manifest.from_dict(data, path=root)
    if verify:
        verify_files(manifest)
    return manifest


def write_manifest(root: Path, manifest: Manifest) -> None:
    """Hash every file under ``root`` into the manifest and write ``manifest.json``."""
    manifest.files = hash_files(root)
    (root / MANIFEST_FILE).write_text(json.dumps(manifest.to_dict(), indent=2) + "\n", encoding="utf-8")


#: ``.NAME.tmp-PID-RANDOM``: a hidden build directory and the process that owns it.
_TEMP_DIR = re.compile(r"^\..+\.tmp-(\d+)-[^-]+$")


def _pid_alive(pid: int) -> bool:
    if os.name == "nt":  # no signal 0 there: never treat another build as dead
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # EPERM: alive, another user's
        return True
    return True


def sibling_tempdir(target: Path) -> Path:
    """Create a hidden ``.NAME.tmp-PID-*`` build directory beside ``target`` (same file system, so it is
    renamed into place in one step), first removing those that builds killed before they could clean up
    (a SIGKILL runs no ``finally``) left in the same parent: the ones whose owning process is gone."""
    parent = target.parent
    for old in parent.glob(".*.tmp-*"):
        match = _TEMP_DIR.match(old.name)
        if match and old.is_dir() and not _pid_alive(int(match.group(1))):
            shutil.rmtree(old, ignore_errors=True)
    return Path(tempfile.mkdtemp(prefix=f".{target.name}.tmp-{os.getpid()}-", dir=parent))


@contextmanager
def atomic_directory(target: str | os.PathLike[str], *, force: bool = False) -> Iterator[Path]:
    """Yield a temp dir beside ``target``; on success it replaces ``target`` in one rename.

    A non-empty ``target`` is refused unless ``force``. On any error the temp dir is removed; a killed
    build leaves it as a hidden ``.name.tmp-PID-*`` sibling, removed by the next build into the same
    parent (:func:`sibling_tempdir`); ``target`` is never half written.
    """
    target = Path(target).absolute()
    if target.exists() and not target.is_dir():
        raise BundleError(f"{target} exists and is a file; choose another output directory")
    if target.is_dir() and any(target.iterdir()) and not force:
        raise BundleError(f"output directory {target} is not empty; pass --force to replace it")
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = sibling_tempdir(target)
    try:
        yield tmp
        old = None
        if target.exists():
            old = target.with_name(f".{target.name}.old-{os.getpid()}")
            target.rename(old)
        tmp.rename(target)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


def build_bundle(target: str | os.PathLike[str], write: Callable[[Path], Manifest], *,
                 force: bool = False) -> Manifest:
    """Run ``write(tmp_dir) -> Manifest`` then hash, write the manifest and move into place."""
    with atomic_directory(target, force=force) as tmp:
        manifest = write(tmp)
        write_manifest(tmp, manifest)
    manifest.path = Path(target)
    return manifest


def add_engines(root: str | os.PathLike[str], assignments: dict[str, str]) -> Manifest:
    """Register TensorRT engines (``{role: relative path}``) built on the device into the manifest.

    The other files are verified first; the manifest is replaced atomically.
    """
    manifest = read_manifest(root, verify=True)
    base = Path(root)
    for role, rel in assignments.items():
        if role not in manifest.graphs:
            raise BundleError(f"bundle has no graph {role!r} (graphs: {', '.join(manifest.graphs)})")
        if not (base / rel).is_file():
            raise BundleError(f"engine file {base / rel} does not exist; did trtexec fail?")
        manifest.graphs[role] = manifest.graphs[role].with_engine(rel)
    manifest.files = hash_files(base)
    tmp = base / (MANIFEST_FILE + ".tmp")
    tmp.write_text(json.dumps(manifest.to_dict(), indent=2) + "\n", encoding="utf-8")
    os.replace(tmp, base / MANIFEST_FILE)
    return manifest


def _main(argv: list[str]) -> int:
    """``python3 -m edgevlp.bundle add-engines BUNDLE role=engines/x.plan ...`` (used by build_engines.sh)."""
    if len(argv) < 3 or argv[0] != "add-engines" or not all("=" in a for a in argv[2:]):
        print("usage: python3 -m edgevlp.bundle add-engines BUNDLE ROLE=ENGINE [ROLE=ENGINE ...]",
              file=sys.stderr)
        return 2
    try:
        manifest = add_engines(argv[1], dict(a.split("=", 1) for a in argv[2:]))
    except BundleError as err:
        print(f"edgevlp.bundle: error: {err}", file=sys.stderr)
        return 1
    print(f"registered engines for {', '.join(a.split('=')[0] for a in argv[2:])} in "
          f"{Path(argv[1]) / MANIFEST_FILE} ({len(manifest.files)} files hashed)")
    return 0


if __name__ == "__main__":
    sys.exit(_main(sys.argv[1:]))
