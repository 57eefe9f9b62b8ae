"""Graph optimisation at export (edgevlp/export/optimize.py) on the tiny models: the fusions keep the
outputs, a failed or wrong fusion keeps the exported graph, untying lets the INT8 quantiser reach a tied
LM head, and the bundle's manifest records it all with parity still run on the final graphs."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import onnx
import pytest

from edgevlp.bundle import GraphSpec, read_manifest
from edgevlp.export.context import ExportContext
from edgevlp.export.optimize import (ALIAS_SUFFIX, FUSIONS, Fusions, fuse_graph, optimize_graphs,
                                     store_weights_externally, untie_transposed_weights)
from edgevlp.export.profiles import load_profile
from edgevlp.export.progress import Progress
from edgevlp.models import adapter_class, known_architectures

BLIP, VED = "BlipForConditionalGeneration", "VisionEncoderDecoderModel"
ROLES = {"caption": ("vision_encoder", "cross_kv", "text_decoder"),
         "detect": ("image_encoder", "text_encoder"), "vqa": ("vision_encoder", "embed_tokens", "decoder")}
TOL = {"atol": 1e-5, "rtol": 1e-4}


def _run(path: Path, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    import onnxruntime as ort

    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    names = [o.name for o in session.get_outputs()]
    return dict(zip(names, session.run(names, feeds)))


@pytest.fixture(scope="module")
def raw_decoder(tiny_model_dir, tmp_path_factory):
    """Factory: architecture -> (text_decoder graph as traced, its GraphExport, family), traced once."""
    from edgevlp.export.graphs import graphs_for
    from edgevlp.export.onnx_export import export_graph
    from edgevlp.models import load_model

    cache = {}

    def make(arch: str):
        if arch not in cache:
            adapter = load_model(tiny_model_dir(arch))
            graph = next(g for g in graphs_for(adapter) if g.role == "text_decoder")
            path = tmp_path_factory.mktemp("raw") / f"{arch}.text_decoder.onnx"
            export_graph(graph, path)
            cache[arch] = (path, graph, adapter.family)
        return cache[arch]

    return make


def _feeds(graph, seed: int | None = None) -> dict[str, np.ndarray]:
    """The tracing inputs, or (``seed``) other token ids, caches and cross-attention keys/values."""
    feeds = {n: t.numpy() for n, t in zip(graph.input_names, graph.example_inputs)}
    if seed is None:
        return feeds
    rng = np.random.default_rng(seed)
    return {n: rng.integers(3, 20, v.shape).astype(v.dtype) if v.dtype.kind == "i"
            else rng.standard_normal(v.shape).astype(v.dtype) for n, v in feeds.items()}


def test_every_family_and_role_has_a_row() -> None:
    for arch in known_architectures():
        cls = adapter_class(arch)
        for role in ROLES[cls.task]:
            assert (cls.family, role) in FUSIONS, (cls.family, role)
    assert all(isinstance(v, (Fusions, str)) for v in FUSIONS.values())


@pytest.mark.parametrize("arch", [BLIP, VED])
def test_fused_decoder_equals_exported(raw_decoder, arch, tmp_path) -> None:
    src, graph, family = raw_decoder(arch)
    fused = shutil.copy(src, tmp_path / "fused.onnx")
    record = fuse_graph(Path(fused), FUSIONS[family, "text_decoder"], _feeds(graph), **TOL)
    assert record["applied"], record
    assert record["after"]["SkipLayerNormalization"] >= 2 * 2  # tiny decoders: 2 layers
    assert record["after"]["nodes"] < record["before"]["nodes"] and record["seconds"] >= 0
    onnx.checker.check_model(str(fused), full_check=True)  # declares com.microsoft, keeps the contract
    for seed in (None, 7):  # the tracing inputs and other ones (past, cross-attention keys/values)
        want, got = _run(src, _feeds(graph, seed)), _run(fused, _feeds(graph, seed))
        assert want.keys() == got.keys()
        for name in want:
            scale = float(np.abs(want[name]).max())
            assert np.abs(got[name] - want[name]).max() <= TOL["atol"] + TOL["rtol"] * scale, name
    # ... and the logits visibly depend on those inputs, so the comparison above is not vacuous
    a, b = _run(src, _feeds(graph))["logits"], _run(src, _feeds(graph, 7))["logits"]
    assert np.abs(a - b).max() > 0.1 * np.abs(a).max()


def test_failed_or_wrong_fusion_keeps_the_exported_graph(raw_decoder, tmp_path, monkeypatch) -> None:
    import onnxruntime.transformers.optimizer as ort_optimizer

    src, graph, family = raw_decoder(BLIP)
    path = Path(shutil.copy(src, tmp_path / "g.onnx"))
    before = path.read_bytes()
    fusions = FUSIONS[family, "text_decoder"]
    real = ort_optimizer.optimize_model

    def broken(*args, **kwargs):
        raise IndexError("list index out of range")  # what model_type "gpt2" does on dynamo graphs

    monkeypatch.setattr(ort_optimizer, "optimize_model", broken)
    record = fuse_graph(path, fusions, _feeds(graph), **TOL)
    assert not record["applied"] and "optimizer failed (IndexError" in record["reason"]
    assert path.read_bytes() == before and not path.with_suffix(".fused.onnx").exists()

    def wrong(*args, **kwargs):  # fuses, then scales one layer norm: outputs change
        optimized = real(*args, **kwargs)
        node = next(n for n in optimized.model.graph.node if n.op_type == "SkipLayerNormalization")
        gamma = next(i for i in optimized.model.graph.initializer if i.name == node.input[2])
        gamma.CopyFrom(onnx.numpy_helper.from_array(onnx.numpy_helper.to_array(gamma) * 1.5 + 0.5,
                                                    gamma.name))
        return optimized

    monkeypatch.setattr(ort_optimizer, "optimize_model", wrong)
    record = fuse_graph(path, fusions, _feeds(graph), **TOL)
    assert not record["applied"] and "differs from the exported one" in record["reason"]
    assert record["check"]["max_diff_over_allowed"] > 1 and path.read_bytes() == before
    record = fuse_graph(path, fusions, None, **TOL)
    assert not record["applied"] and "no sample feeds" in record["reason"]


def test_untied_head_keeps_outputs_and_quantises(raw_decoder, tmp_path) -> None:
    from onnxruntime.quantization import QuantType, quantize_dynamic

    src, graph, _ = raw_decoder(VED)  # GPT-2: the LM head is the word embedding, read transposed
    untied = Path(shutil.copy(src, tmp_path / "untied.onnx"))
    assert untie_transposed_weights(untied) == 1
    assert untie_transposed_weights(untied) == 0  # idempotent
    want, got = _run(src, _feeds(graph, 3)), _run(untied, _feeds(graph, 3))
    for name in want:
        np.testing.assert_allclose(got[name], want[name], rtol=1e-5, atol=1e-5)

    def fp32_matmul_weights(path: Path) -> int:  # MatMuls whose weight is computed from an initializer
        model = onnx.load(str(path))
        made = {o: n.op_type for n in model.graph.node for o in n.output}
        return sum(made.get(n.input[1]) in ("Transpose", "DequantizeLinear")
                   for n in model.graph.node if n.op_type == "MatMul")

    for name, path in (("tied", src), ("untied", untied)):
        quantize_dynamic(str(path), str(tmp_path / f"{name}.q8.onnx"), weight_type=QuantType.QInt8)
    assert fp32_matmul_weights(tmp_path / "tied.q8.onnx") == 1  # the head stayed FP32
    assert fp32_matmul_weights(tmp_path / "untied.q8.onnx") == 0


@pytest.mark.parametrize("arch", [BLIP, VED])
def test_external_weights_store_a_tied_head_once(raw_decoder, arch, tmp_path) -> None:
    """The weights move beside the graph; a tied head reads the embedding's own bytes through an alias
    (no Transpose left for onnxruntime to fold into a copy); the outputs stay those of the export."""
    src, graph, _ = raw_decoder(arch)
    path = Path(shutil.copy(src, tmp_path / "text_decoder.onnx"))
    feeds = _feeds(graph, 5)
    want = _run(src, feeds)
    assert not np.allclose(want["logits"], _run(src, _feeds(graph, 6))["logits"])  # input matters
    raw = onnx.load(str(src))
    raw_inits = {i.name for i in raw.graph.initializer}
    reads = [name for n in raw.graph.node for name in n.input]
    tied = {n.input[0] for n in raw.graph.node if n.op_type == "Transpose" and n.input[0] in raw_inits
            and reads.count(n.input[0]) > 1}
    assert tied or arch == BLIP  # GPT-2 ties its LM head to the word embedding
    assert store_weights_externally(path) == "text_decoder.onnx.data"
    model = onnx.load(str(path), load_external_data=False)
    inits = {i.name: i for i in model.graph.initializer}
    assert all(i.data_location == onnx.TensorProto.EXTERNAL for i in inits.values() if np.prod(i.dims) >= 256)
    aliases = {n.removesuffix(ALIAS_SUFFIX): n for n in inits if n.endswith(ALIAS_SUFFIX)}
    assert set(aliases) == tied, "a tied LM head reads an alias of the word embedding"
    for source, alias in aliases.items():
        assert list(inits[alias].external_data) == list(inits[source].external_data)  # same bytes, once
        head = next(n for n in model.graph.node if alias in n.input)
        assert head.op_type == "FusedMatMul" and head.domain == "com.microsoft"
    assert not any(n.op_type == "Transpose" and n.input[0] in inits for n in model.graph.node)
    data = path.with_name("text_decoder.onnx.data")
    assert data.stat().st_size < src.stat().st_size  # nothing stored twice
    assert oct(data.stat().st_mode & 0o777) == oct(path.stat().st_mode & 0o777)
    got = _run(path, feeds)
    for name in want:
        np.testing.assert_allclose(got[name], want[name], **TOL)


def _context(src: Path, graph, root: Path, precision: str) -> ExportContext:
    root.mkdir()
    shutil.copy(src, root / "text_decoder.onnx")
    spec = GraphSpec(role="text_decoder", file="text_decoder.onnx", inputs=graph.inputs,
                     outputs=graph.outputs)
    return ExportContext(root=root, graphs=[spec], profile=load_profile("cpu"), precision=precision,
                         target="cpu", progress=Progress(enabled=False),
                         sample_feeds={"text_decoder": _feeds(graph)})


def test_cpu_writer_notes(raw_decoder, tmp_path) -> None:
    from edgevlp.export.onnx_target import write

    src, graph, family = raw_decoder(VED)
    ctx = _context(src, graph, tmp_path / "fp32", "fp32")
    records = optimize_graphs(ctx, family)
    assert records["text_decoder"]["applied"] and ctx.notes["graph_optimization"] == records
    assert optimize_graphs(ctx, "not-a-family")["text_decoder"]["reason"].startswith("no row")
    # already fused and quantised graphs are left alone
    ctx = _context(src, graph, tmp_path / "int8", "int8")
    write(ctx)
    notes = ctx.notes["graph_optimization"]
    assert notes["untied_weights"] == {"text_decoder": 1} and "quantization" in ctx.notes
    assert set(notes["text_decoder"]["quantised"]) == {"scales_folded", "gelu_fused"}  # GPT-2: tanh GELU
    assert ctx.notes["external_weights"] == {"text_decoder": "text_decoder.onnx.data"}
    assert ctx.graphs[0].extra_files == ("text_decoder.onnx.data",)
    again = optimize_graphs(ctx, family)["text_decoder"]
    assert not again["applied"] and "already quantised" in again["reason"]


@pytest.mark.parametrize("arch", [BLIP, "OwlViTForObjectDetection"])
def test_bundle_records_optimisation_and_passes_parity(exported, arch) -> None:
    manifest = read_manifest(exported(arch))
    notes = manifest.export["graph_optimization"]
    assert set(notes) == set(manifest.graphs)
    for role, record in notes.items():
        assert isinstance(record["applied"], bool) and (record["applied"] or record["reason"]), role
        if record["applied"]:
            assert record["after"]["nodes"] < record["before"]["nodes"] and "seconds" in record
    assert manifest.parity["passed"]  # parity ran after the writer, on the final graphs
    if manifest.task == "caption":
        assert manifest.parity["greedy_tokens_identical"] is True
