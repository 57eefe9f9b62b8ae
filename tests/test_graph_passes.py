"""The export's graph rewrites for onnxruntime: step-invariant nodes hoisted out of the decoder step
(edgevlp/export/hoist.py) and the QDQ rewrites (edgevlp/export/qdq_passes.py), on small hand-built
graphs whose outputs are compared with onnxruntime before and after, and on the tiny BLIP's bundles."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from edgevlp.bundle import read_manifest
from edgevlp.export.hoist import HOISTABLE, PREFIX, hoist_step_invariants
from edgevlp.export.qdq_passes import fold_matmul_scales, fuse_gelu

OPSET = [helper.make_opsetid("", 18)]


def _run(model_or_path, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    import onnxruntime as ort

    data = model_or_path.SerializeToString() if isinstance(model_or_path, onnx.ModelProto) else str(model_or_path)
    session = ort.InferenceSession(data, providers=["CPUExecutionProvider"])
    names = [o.name for o in session.get_outputs()]
    return dict(zip(names, session.run(names, {i.name: feeds[i.name] for i in session.get_inputs()})))


def _const(name: str, value, dtype=np.float32) -> onnx.TensorProto:
    return numpy_helper.from_array(np.asarray(value, dtype=dtype), name)


def _context_pair(tmp_path: Path, perm=(0, 2, 1)) -> tuple[Path, Path]:
    """A producer (per image: K = E * 2) and a step that transposes and quantises K before its product."""
    producer = helper.make_model(helper.make_graph(
        [helper.make_node("Mul", ["E", "two"], ["cross_attention.0.key"])], "producer",
        [helper.make_tensor_value_info("E", TensorProto.FLOAT, ["batch", "seq", 4])],
        [helper.make_tensor_value_info("cross_attention.0.key", TensorProto.FLOAT, ["batch", "seq", 4])],
        [_const("two", 2.0)]), opset_imports=OPSET)
    step = helper.make_model(helper.make_graph(
        [helper.make_node("Transpose", ["cross_attention.0.key"], ["kt"], perm=list(perm)),
         helper.make_node("QuantizeLinear", ["kt", "s", "zp"], ["kq"]),
         helper.make_node("DequantizeLinear", ["kq", "s", "zp"], ["kd"]),
         helper.make_node("MatMul", ["x", "kd"], ["y"])], "step",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 1, 4]),
         helper.make_tensor_value_info("cross_attention.0.key", TensorProto.FLOAT, ["batch", "seq", 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 1, "seq"])],
        [_const("s", 0.05), _const("zp", 128, np.uint8)]), opset_imports=OPSET)
    p, s = tmp_path / "producer.onnx", tmp_path / "step.onnx"
    onnx.save(producer, str(p))
    onnx.save(step, str(s))
    return p, s


def test_hoisting_moves_the_step_invariant_work_and_keeps_the_outputs(tmp_path) -> None:
    p, s = _context_pair(tmp_path)
    rng = np.random.default_rng(0)
    feeds = [{"E": rng.normal(size=(2, 5, 4)).astype(np.float32), "x": rng.normal(size=(2, 1, 4)).astype(np.float32)}
             for _ in range(2)]
    before = []
    for f in feeds:
        made = _run(p, f)
        before.append(_run(s, {**f, **made})["y"])
    assert not np.allclose(before[0], before[1]), "the step's output depends on its inputs"
    specs = hoist_step_invariants(p, s)
    assert [t.dtype for t in specs] == ["uint8"] and specs[0].shape == ("batch", 4, "seq")
    step = onnx.load(str(s))
    assert not any(n.op_type in HOISTABLE for n in step.graph.node), "the step still transposes/quantises"
    assert [i.name for i in step.graph.input] == ["x", specs[0].name] and specs[0].name.startswith(PREFIX)
    for f, ref in zip(feeds, before):
        made = _run(p, f)
        assert made[specs[0].name].dtype == np.uint8
        np.testing.assert_array_equal(_run(s, {**f, **made})["y"], ref)


def test_a_transpose_that_moves_the_batch_axis_stays_in_the_step(tmp_path) -> None:
    p, s = _context_pair(tmp_path, perm=(1, 0, 2))
    step_before = onnx.load(str(s)).SerializeToString()
    assert hoist_step_invariants(p, s) == []
    assert onnx.load(str(s)).SerializeToString() == step_before


def _scaled_scores(scale_op: str = "Mul", value: float = 0.125) -> onnx.ModelProto:
    """scores = DQ(Q(a)) @ DQ(Q(b)) * c (or / c), the attention pattern of a QDQ graph."""
    nodes = [helper.make_node("QuantizeLinear", ["a", "sa", "za"], ["aq"]),
             helper.make_node("DequantizeLinear", ["aq", "sa", "za"], ["ad"]),
             helper.make_node("QuantizeLinear", ["b", "sb", "zb"], ["bq"]),
             helper.make_node("DequantizeLinear", ["bq", "sb", "zb"], ["bd"]),
             helper.make_node("MatMul", ["ad", "bd"], ["scores"]),
             helper.make_node(scale_op, ["scores", "c"], ["scaled"]),
             helper.make_node("Softmax", ["scaled"], ["out"], axis=-1)]
    return helper.make_model(helper.make_graph(
        nodes, "scores", [helper.make_tensor_value_info("a", TensorProto.FLOAT, [2, 3, 8]),
                          helper.make_tensor_value_info("b", TensorProto.FLOAT, [2, 8, 3])],
        [helper.make_tensor_value_info("out", TensorProto.FLOAT, [2, 3, 3])],
        [_const("sa", 0.02), _const("za", 128, np.uint8), _const("sb", 0.03), _const("zb", 128, np.uint8),
         _const("c", value)]), opset_imports=OPSET)


@pytest.mark.parametrize("op,value", [("Mul", 0.125), ("Div", 3.0)])
def test_an_attention_scale_folds_into_the_dequantisation(op, value) -> None:
    model = _scaled_scores(op, value)
    rng = np.random.default_rng(1)
    feeds = [{"a": rng.normal(size=(2, 3, 8)).astype(np.float32), "b": rng.normal(size=(2, 8, 3)).astype(np.float32)}
             for _ in range(2)]
    before = [_run(model, f)["out"] for f in feeds]
    assert not np.allclose(before[0], before[1])
    assert fold_matmul_scales(model) == 1
    assert [n.op_type for n in model.graph.node].count(op) == 0
    onnx.checker.check_model(model)
    for f, ref in zip(feeds, before):
        np.testing.assert_allclose(_run(model, f)["out"], ref, rtol=1e-5, atol=1e-6)


def test_a_scale_on_a_product_of_plain_floats_is_left_alone() -> None:
    model = _scaled_scores()
    mm = next(n for n in model.graph.node if n.op_type == "MatMul")
    mm.input[1] = "b"  # the second operand is no dequantisation
    assert fold_matmul_scales(model) == 0


def _gelu_graph(order: str, bias: bool = True) -> onnx.ModelProto:
    """y = GELU(h [+ bias]) as exporters write it, in one of three orders of its two products."""
    x = "x" if bias else "h"
    nodes = ([helper.make_node("Add", ["h", "bias"], ["x"])] if bias else []) + [
        helper.make_node("Div", [x, "sqrt2"], ["d"]), helper.make_node("Erf", ["d"], ["e"]),
        helper.make_node("Add", ["e", "one"], ["a"])]
    if order == "half_first":      # 0.5 * (1 + erf) then * x
        nodes += [helper.make_node("Mul", ["half", "a"], ["m"]), helper.make_node("Mul", [x, "m"], ["y"])]
    elif order == "x_first":        # x * (1 + erf) then * 0.5
        nodes += [helper.make_node("Mul", [x, "a"], ["m"]), helper.make_node("Mul", ["m", "half"], ["y"])]
    else:                           # (x * 0.5) * (1 + erf)
        nodes += [helper.make_node("Mul", [x, "half"], ["m"]), helper.make_node("Mul", ["m", "a"], ["y"])]
    nodes.append(helper.make_node("Relu", ["y"], ["out"]))
    inits = [_const("sqrt2", 2 ** 0.5), _const("one", 1.0), _const("half", 0.5)]
    inits += [_const("bias", np.linspace(-1, 1, 6))] if bias else []
    return helper.make_model(helper.make_graph(
        nodes, "gelu", [helper.make_tensor_value_info("h", TensorProto.FLOAT, [2, 6])],
        [helper.make_tensor_value_info("out", TensorProto.FLOAT, [2, 6])], inits), opset_imports=OPSET)


@pytest.mark.parametrize("order", ["half_first", "x_first", "x_half"])
@pytest.mark.parametrize("bias", [True, False])
def test_the_exact_gelu_becomes_one_kernel(order, bias) -> None:
    model = _gelu_graph(order, bias)
    rng = np.random.default_rng(2)
    feeds = [{"h": rng.normal(size=(2, 6)).astype(np.float32) * 2} for _ in range(2)]
    before = [_run(model, f)["out"] for f in feeds]
    assert not np.allclose(before[0], before[1])
    assert fuse_gelu(model) == 1
    ops = [n.op_type for n in model.graph.node]
    assert ops == (["BiasGelu", "Relu"] if bias else ["Gelu", "Relu"])
    onnx.checker.check_model(model)
    for f, ref in zip(feeds, before):
        np.testing.assert_allclose(_run(model, f)["out"], ref, rtol=1e-4, atol=1e-5)


def test_a_gelu_whose_input_is_read_elsewhere_keeps_its_bias_add() -> None:
    model = _gelu_graph("half_first")
    model.graph.node.append(helper.make_node("Neg", ["x"], ["also"]))
    model.graph.output.append(helper.make_tensor_value_info("also", TensorProto.FLOAT, [2, 6]))
    assert fuse_gelu(model) == 1
    assert [n.op_type for n in model.graph.node] == ["Add", "Gelu", "Relu", "Neg"]


def test_cpu_bundle_of_a_captioner_hoists_and_passes_parity(exported) -> None:
    manifest = read_manifest(exported("BlipForConditionalGeneration"))
    record = manifest.export["graph_optimization"]["text_decoder"]["hoisted"]
    assert record["applied"] and record["tensors"] > 0
    step = manifest.graphs["text_decoder"]
    context = {t.name for t in manifest.graphs["cross_kv"].outputs}
    assert any(t.name.startswith(PREFIX) for t in step.inputs)
    assert {t.name for t in step.inputs if t.name != "input_ids" and not t.name.startswith("past_")} <= context
    assert manifest.parity["greedy_tokens_identical"]
