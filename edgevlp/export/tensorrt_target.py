"""``--target jetson | laptop-gpu``: TensorRT-ready ONNX, an fp16 risk report, ``build_engines.sh``.

The ONNX is constant-folded and simplified (onnxsim), made static where the profile says so
(``static_batch``), and checked with ``onnx.checker`` (full check). ``build_engines.sh`` runs ``trtexec``
with the profile's min/opt/max shapes for every dynamic input and registers the engines in the manifest
(``python3 -m edgevlp.bundle add-engines``). Engines are built in-process only where ``tensorrt`` imports.
"""

from __future__ import annotations

import dataclasses
import shlex
from pathlib import Path

import numpy as np
import onnx

from edgevlp.bundle import GraphSpec, TensorSpec
from edgevlp.errors import ExportError, InputError
from edgevlp.export.context import ExportContext
from edgevlp.export.onnx_export import set_dim_names

__all__ = ["write", "build_script", "trtexec_command", "FP16_MAX"]

FP16_MAX = 65504.0
SCRIPT = "build_engines.sh"
_DLA_ROLES = ("vision_encoder", "image_encoder")  # convolution/matmul-heavy; decoders stay on the GPU


def _fix_batch(graph: GraphSpec) -> GraphSpec:
    def fix(t: TensorSpec) -> TensorSpec:
        return dataclasses.replace(t, shape=tuple(1 if d == "batch" else d for d in t.shape))

    return dataclasses.replace(graph, inputs=tuple(map(fix, graph.inputs)),
                               outputs=tuple(map(fix, graph.outputs)))


def _simplify(path: Path, graph: GraphSpec) -> dict[str, int]:
    import onnxsim

    model = onnx.load(str(path))
    set_dim_names(model, graph)
    before = len(model.graph.node)
    simplified, ok = onnxsim.simplify(model)
    if not ok:
        raise ExportError(f"onnxsim could not validate the simplified {graph.role} graph")
    onnx.save(simplified, str(path))
    onnx.checker.check_model(str(path), full_check=True)
    return {"nodes_before": before, "nodes_after": len(simplified.graph.node)}


def fp16_risks(path: Path, feeds: dict[str, np.ndarray], limit: int = 20) -> list[dict[str, object]]:
    """Nodes whose float outputs exceed the fp16 range on ``feeds`` (they would overflow to inf)."""
    import onnxruntime as ort

    model = onnx.load(str(path))
    inferred = onnx.shape_inference.infer_shapes(model)
    float_values = {v.name for v in inferred.graph.value_info
                    if v.type.tensor_type.elem_type == onnx.TensorProto.FLOAT}
    existing = {o.name for o in model.graph.output}
    producer = {}
    for node in model.graph.node:
        for out in node.output:
            if out in float_values and out not in existing:
                model.graph.output.append(onnx.helper.make_tensor_value_info(out, onnx.TensorProto.FLOAT,
                                                                             None))
                producer[out] = f"{node.op_type}:{node.name or out}"
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    options.log_severity_level = 3
    session = ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])
    names = [o.name for o in session.get_outputs()]
    values = session.run(names, {k: v for k, v in feeds.items()
                                 if k in {i.name for i in session.get_inputs()}})
    risks = []
    for name, value in zip(names, values):
        if name in producer and value.size and np.issubdtype(value.dtype, np.floating):
            peak = float(np.nanmax(np.abs(value)))
            if not np.isfinite(peak) or peak > FP16_MAX:
                risks.append({"node": producer[name], "tensor": name, "max_abs": peak})
    risks.sort(key=lambda r: -float(r["max_abs"]))  # type: ignore[arg-type]
    return risks[:limit]


def _shape_arg(shapes: dict[str, tuple[int, ...]]) -> str:
    return ",".join(f"{name}:{'x'.join(str(d) for d in shape)}" for name, shape in shapes.items())


def trtexec_command(graph: GraphSpec, ctx: ExportContext, static: dict[str, int]) -> list[str]:
    """The trtexec argument list for one graph under ``ctx.profile``."""
    profile = ctx.profile
    engine = f"engines/{Path(graph.file).stem}.plan"
    cmd = ["--onnx=" + graph.file, "--saveEngine=" + engine,
           f"--memPoolSize=workspace:{profile.workspace_mib}M", "--skipInference"]
    if any(isinstance(d, str) for t in graph.inputs for d in t.shape):
        ranges = profile.input_shapes(graph, static)
        for i, flag in enumerate(("--minShapes=", "--optShapes=", "--maxShapes=")):
            cmd.append(flag + _shape_arg({n: r[i] for n, r in ranges.items()}))
    if ctx.precision == "fp16":
        cmd.append("--fp16")
    elif ctx.precision == "int8":
        cmd += ["--int8", "--fp16"]  # QDQ graphs: explicit quantisation, fp16 for the rest
    if profile.dla_core >= 0 and graph.role in _DLA_ROLES:
        cmd += [f"--useDLACore={profile.dla_core}", "--allowGPUFallback"]
    return cmd


def build_script(ctx: ExportContext, commands: dict[str, list[str]]) -> str:
    """Bash script that builds every engine with trtexec, then registers them in manifest.json."""
    lines = [
        "#!/usr/bin/env bash",
        f"# Build TensorRT engines for this bundle on the device (profile {ctx.profile.name}: "
        f"{ctx.profile.description}).",
        f"# Written for TensorRT {ctx.profile.versions.get('tensorrt', '10.x')}"
        + (f", JetPack {ctx.profile.versions['jetpack']}" if "jetpack" in ctx.profile.versions else "")
        + f"; precision {ctx.precision}. Usage: bash {SCRIPT} [path/to/trtexec]",
        "set -euo pipefail",
        'cd "$(dirname "$0")"',
        'TRTEXEC="${1:-$(command -v trtexec || echo /usr/src/tensorrt/bin/trtexec)}"',
        'if [ ! -x "$TRTEXEC" ]; then echo "trtexec not found: pass its path as the first argument" >&2;'
        " exit 1; fi",
        "mkdir -p engines",
    ]
    for role, args in commands.items():
        lines.append(f'echo "building {role} ..."')
        lines.append('"$TRTEXEC" ' + " ".join(shlex.quote(a) for a in args))
    lines.append("python3 -m edgevlp.bundle add-engines . "
                 + " ".join(f"{role}=engines/{Path(f).stem}.plan" for role, f in
                            ((g.role, g.file) for g in ctx.graphs)))
    return "\n".join(lines) + "\n"


def write(ctx: ExportContext) -> None:
    if ctx.precision == "int8" and not ctx.prequantized:
        raise InputError(f"--precision int8 for --target {ctx.target} needs a calibrated (QDQ) model: "
                         "run `edgevlp compress MODEL --recipe recipes/int8-ptq.toml` first and export "
                         "its output, or use --precision fp16")
    static = {}
    simplified = {}
    for graph in list(ctx.graphs):
        new = _fix_batch(graph) if ctx.profile.static_batch else graph
        with ctx.progress.stage("simplify", graph.role):
            simplified[graph.role] = _simplify(ctx.root / new.file, new)
        ctx.replace_graph(graph, new)
        if new.role == "vision_encoder":
            static["encoder_sequence"] = int(new.outputs[0].shape[1])
    risks = {}
    with ctx.progress.stage("fp16 check"):
        for graph in ctx.graphs:
            feeds = ctx.sample_feeds.get(graph.role)
            if feeds is not None:
                if ctx.profile.static_batch:
                    feeds = {k: v[:1] for k, v in feeds.items()}
                risks[graph.role] = fp16_risks(ctx.root / graph.file, feeds)
    commands = {g.role: trtexec_command(g, ctx, static) for g in ctx.graphs}
    script = ctx.root / SCRIPT
    script.write_text(build_script(ctx, commands))
    script.chmod(0o755)
    ctx.notes["tensorrt"] = {
        "profile": ctx.profile.name, "script": SCRIPT, "trtexec": {r: c for r, c in commands.items()},
        "simplify": simplified, "fp16_overflow_risks": risks,
        "engines_built_in_process": _build_in_process(ctx, static),
    }


def _build_in_process(ctx: ExportContext, static: dict[str, int]) -> bool:
    """Build the engines now with TensorRT's Python API, if it imports here (never on CPU machines)."""
    try:
        import tensorrt as trt
    except ImportError:
        return False
    (ctx.root / "engines").mkdir(exist_ok=True)  # pragma: no cover - needs TensorRT from here on
    for graph in list(ctx.graphs):
        logger = trt.Logger(trt.Logger.WARNING)
        builder = trt.Builder(logger)
        network = builder.create_network(0)
        parser = trt.OnnxParser(network, logger)
        if not parser.parse_from_file(str(ctx.root / graph.file)):
            errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
            raise ExportError(f"TensorRT could not parse {graph.file}: {errors}")
        config = builder.create_builder_config()
        config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, ctx.profile.workspace_mib << 20)
        if ctx.precision in ("fp16", "int8"):
            config.set_flag(trt.BuilderFlag.FP16)
        if ctx.precision == "int8":
            config.set_flag(trt.BuilderFlag.INT8)
        if any(isinstance(d, str) for t in graph.inputs for d in t.shape):
            opt = builder.create_optimization_profile()
            for name, (lo, mid, hi) in ctx.profile.input_shapes(graph, static).items():
                opt.set_shape(name, lo, mid, hi)
            config.add_optimization_profile(opt)
        if ctx.profile.dla_core >= 0 and graph.role in _DLA_ROLES:
            config.default_device_type = trt.DeviceType.DLA
            config.DLA_core = ctx.profile.dla_core
            config.set_flag(trt.BuilderFlag.GPU_FALLBACK)
        data = builder.build_serialized_network(network, config)
        if data is None:
            raise ExportError(f"TensorRT failed to build an engine for {graph.file}")
        engine = f"engines/{Path(graph.file).stem}.plan"
        (ctx.root / engine).write_bytes(bytes(data))
        ctx.replace_graph(graph, graph.with_engine(engine))
    ctx.notes["engines_tensorrt_version"] = str(trt.__version__)  # engines load only on this version
    return True
