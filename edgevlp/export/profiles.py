"""Target profiles (``export/targets/*.toml``): shapes, precision, device facts per deployment target."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from edgevlp._toml import tomllib
from edgevlp.bundle import GraphSpec
from edgevlp.errors import InputError
from edgevlp.targets import PRECISIONS, default_precision, devices, get_target

__all__ = ["PRECISIONS", "TargetProfile", "load_profile", "profiles_dir", "check_profile_target"]

_KEYS = {"name", "target", "description", "precision", "image_size", "static_batch", "workspace_mib",
         "dla_core", "jetpack", "tensorrt", "cuda", "openvino_device", "shapes", "generation",
         "tolerance", "serve"}


def profiles_dir() -> Path:
    """``export/targets`` of the source tree, or the copy installed inside the package."""
    here = Path(__file__).resolve()
    for candidate in (here.parents[2] / "export" / "targets", here.parent / "targets"):
        if candidate.is_dir():
            return candidate
    raise InputError("target profiles not found (export/targets); reinstall edgevlp")


@dataclass(frozen=True)
class TargetProfile:
    """A parsed target profile."""

    name: str
    target: str
    description: str
    precision: str
    shapes: dict[str, tuple[int, int, int]]
    max_new_tokens: int = 20
    static_batch: bool = False
    workspace_mib: int = 1024
    dla_core: int = -1
    openvino_device: str = "CPU"
    versions: dict[str, str] = field(default_factory=dict)
    tolerance: dict[str, tuple[float, float]] = field(default_factory=dict)
    #: Triton scheduling of a repository cut from this profile's bundles (edgevlp.serve.ServeSettings)
    serve: dict[str, Any] = field(default_factory=dict)
    path: str = ""

    def range_of(self, dim: str, graph_static: int | None = None) -> tuple[int, int, int]:
        """min/opt/max for a dynamic dimension name."""
        if dim in self.shapes:
            return self.shapes[dim]
        base = dim[len("total_"):] if dim.startswith("total_") else None
        if base and base in self.shapes and f"past_{base}" in self.shapes:  # cache + new: total_sequence, ...
            lo, opt, hi = self.shapes[f"past_{base}"]
            s_lo, s_opt, s_hi = self.shapes[base]
            return (lo + s_lo, opt + s_opt, hi + s_hi)
        if graph_static is not None:
            return (graph_static,) * 3
        raise InputError(f"profile {self.name} has no [shapes] entry for dynamic dimension {dim!r}")

    def input_shapes(self, graph: GraphSpec, static: dict[str, int]) -> dict[str, tuple[tuple[int, ...], ...]]:
        """``{input: (min_shape, opt_shape, max_shape)}`` for TensorRT profiles."""
        out = {}
        for t in graph.inputs:
            dims = [self.range_of(d, static.get(d)) if isinstance(d, str) else (d, d, d) for d in t.shape]
            out[t.name] = tuple(tuple(int(d[i]) for d in dims) for i in range(3))
        return out

    def tolerance_for(self, precision: str) -> tuple[float, float]:
        return self.tolerance.get(precision, {"fp32": (1e-4, 1e-3), "fp16": (1e-2, 2e-2),
                                              "int8": (5e-2, 1e-1), "int4": (1e-1, 2e-1)}[precision])

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "target": self.target, "description": self.description,
                "precision": self.precision, "static_batch": self.static_batch,
                "workspace_mib": self.workspace_mib, "dla_core": self.dla_core,
                "openvino_device": self.openvino_device, "max_new_tokens": self.max_new_tokens,
                "shapes": {k: list(v) for k, v in self.shapes.items()}, "versions": self.versions,
                "tolerance": {k: list(v) for k, v in self.tolerance.items()}, "serve": dict(self.serve)}


def load_profile(name_or_path: str | os.PathLike[str]) -> TargetProfile:
    """Load a profile by name (``jetson-orin-nano``) or path (``export/targets/x.toml``)."""
    text = os.fspath(name_or_path)
    path = Path(text)
    if not path.suffix:
        path = profiles_dir() / f"{text}.toml"
    if not path.is_file():
        known = sorted(p.stem for p in profiles_dir().glob("*.toml"))
        raise InputError(f"no target profile {text!r}; known profiles: {', '.join(known)} "
                         "(or pass a path to a .toml file)")
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except tomllib.TOMLDecodeError as err:
        raise InputError(f"profile {path} is not valid TOML: {err}") from None
    unknown = set(data) - _KEYS
    if unknown:
        raise InputError(f"profile {path} has unknown keys {sorted(unknown)}; allowed: {sorted(_KEYS)}")
    try:
        shapes = {k: tuple(int(x) for x in v) for k, v in data.get("shapes", {}).items()}
        for k, v in shapes.items():
            if len(v) != 3 or not (0 <= v[0] <= v[1] <= v[2]):
                raise InputError(f"profile {path}: shapes.{k} must be [min, opt, max] with "
                                 f"0 <= min <= opt <= max, got {list(v)}")
        for required in ("batch", "sequence", "past_sequence", "num_queries"):
            if required not in shapes:
                raise InputError(f"profile {path} needs shapes.{required} = [min, opt, max]")
        target = data.get("target")
        if target not in devices():
            raise InputError(f"profile {path}: target {target!r} is not one of {sorted(devices())}")
        precision = data.get("precision", default_precision(target))
        if precision not in PRECISIONS:
            raise InputError(f"profile {path}: precision {precision!r} is not one of {PRECISIONS}")
        if data.get("image_size", "model") != "model":
            raise InputError(f"profile {path}: image_size must be \"model\" (ViT position embeddings "
                             "fix the input size; re-train or fine-tune for another size)")
        tolerance = {k: (float(v["atol"]), float(v["rtol"])) for k, v in data.get("tolerance", {}).items()}
        return TargetProfile(
            name=str(data.get("name", path.stem)), target=target,
            description=str(data.get("description", "")), precision=precision, shapes=shapes,
            max_new_tokens=int(data.get("generation", {}).get("max_new_tokens", 20)),
            static_batch=bool(data.get("static_batch", False)),
            workspace_mib=int(data.get("workspace_mib", 1024)), dla_core=int(data.get("dla_core", -1)),
            openvino_device=str(data.get("openvino_device", "CPU")),
            versions={k: str(data[k]) for k in ("jetpack", "tensorrt", "cuda") if k in data},
            tolerance=tolerance, serve=dict(data.get("serve", {})), path=str(path))
    except (KeyError, TypeError, ValueError) as err:
        if isinstance(err, InputError):
            raise
        raise InputError(f"profile {path} is malformed: {type(err).__name__}: {err}") from None


def check_profile_target(profile: TargetProfile, target: str) -> None:
    """Raise :class:`InputError` unless ``profile`` describes the device class of ``target``."""
    row = get_target(target)
    if profile.target != row.device:
        raise InputError(f"profile {profile.name} is written for target {profile.target!r}, not "
                         f"{target!r}; pick a profile for {target} (e.g. {row.profile})")
