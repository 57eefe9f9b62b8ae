"""Structured pruning, distillation and QAT on tiny random models.

Pruning removes the asked fraction of heads/neurons physically (parameter count drops, shapes
shrink), the pruned model reloads through the adapters with non-uniform head counts and exports with
exporter parity; 0 % is a no-op; distillation lowers its loss and resumes from checkpoints; QAT
writes QDQ graphs that onnxruntime runs.
"""

from __future__ import annotations

import json

import numpy as np
import onnx
import pytest
import torch

from edgevlp.compress import DistillConfig, PruneConfig, QuantConfig, Recipe
from edgevlp.compress.recipe import CalibrationConfig, FallbackConfig
from edgevlp.models import load_model, tiny_adapter
from edgevlp.models.pruning import attention_groups, mlp_groups, prune_heads, prune_neurons

ARCHS = ["BlipForConditionalGeneration", "VisionEncoderDecoderModel", "OwlViTForObjectDetection",
         "Owlv2ForObjectDetection", "Idefics3ForConditionalGeneration",
         "SmolVLMForConditionalGeneration"]


def _pixels(adapter, photos_bgr) -> torch.Tensor:
    from edgevlp.runtime.preprocess import preprocess

    spec = adapter.preprocess_spec()
    return torch.from_numpy(np.concatenate([preprocess(photos_bgr[k], spec)[0] for k in ("astronaut", "coffee")]))


def _outputs(adapter, px) -> dict[str, torch.Tensor]:
    with torch.no_grad():
        return adapter.forward(px[:, None] if adapter.task == "vqa" else px)  # vqa: (batch, tiles, 3, h, w)


def _assert_input_dependent(out: dict[str, torch.Tensor]) -> None:
    for name, value in out.items():
        assert not torch.allclose(value[0], value[1], atol=1e-4), f"{name} does not depend on the image"


def _units(model) -> dict[str, int]:
    return {**{g.path: g.heads for g in attention_groups(model)}, **{g.path: g.neurons for g in mlp_groups(model)}}


@pytest.mark.parametrize("arch", ARCHS)
def test_prune_removes_the_fraction_reloads_and_exports(arch, tmp_path, photos_bgr) -> None:
    from edgevlp.compress.pipeline import compress_model
    from edgevlp.export import export_model
    from edgevlp.runtime import load

    adapter = tiny_adapter(arch)
    before_units = _units(adapter.model)
    params_before = sum(p.numel() for p in adapter.model.parameters())
    recipe = Recipe(name="p50", stages=(PruneConfig(ratio=0.5, calibration_size=4),))
    report = compress_model(adapter, recipe, tmp_path / "o", progress=False)
    stage = report["stages"][0]
    for part, targets in stage["parts"].items():
        for target, t in targets.items():
            assert t["after"] == t["before"] - round(0.5 * t["before"]), (part, target, t)
            assert all(1 <= after <= before for before, after in t["per_module"].values())
    assert set(stage["parts"]) == {"vision", "text"}
    after_units = _units(adapter.model)
    assert sum(after_units.values()) < sum(before_units.values())
    params_after = sum(p.numel() for p in adapter.model.parameters())
    assert params_after == stage["parameters"]["after"] < 0.8 * params_before
    assert report["parameters"]["after"]["total"] == params_after

    reloaded = load_model(tmp_path / "o" / "model")
    assert _units(reloaded.model) == after_units
    pruning = reloaded.summary()["pruning"]  # what `edgevlp info` prints
    assert pruning["heads"] and pruning["neurons"]
    assert all(after_units[path] == n for kind in pruning.values() for path, n in kind.items())
    px = _pixels(adapter, photos_bgr)
    ref, got = _outputs(adapter, px), _outputs(reloaded, px)
    _assert_input_dependent(ref)
    for name in ref:
        torch.testing.assert_close(got[name], ref[name], rtol=0, atol=1e-6)
    bundle = tmp_path / "bundle"
    manifest = export_model(tmp_path / "o", bundle, target="cpu", progress=False)
    assert manifest.parity["passed"], manifest.parity
    assert load(bundle) is not None


@pytest.mark.parametrize("arch", ["BlipForConditionalGeneration", "VisionEncoderDecoderModel"])
def test_non_uniform_decoder_heads_export_with_per_layer_cache(arch, tmp_path, photos_bgr) -> None:
    """Decoder layers with 1 and 3 self-attention heads: the KV cache inputs differ per layer and the
    bundle's greedy tokens still equal transformers' generate."""
    from edgevlp.export import export_model
    from edgevlp.runtime import load

    adapter = tiny_adapter(arch)
    groups = [g for g in attention_groups(adapter.model) if "decoder" in g.path]
    self_attn = [g for g in groups if g.path.rsplit(".", 1)[1] in ("attention", "attn")]
    prune_heads(adapter.model, {self_attn[0].path: [2], self_attn[1].path: [0, 1, 3]})
    assert adapter.kv_heads() == [1, 3]
    adapter.save_pretrained(tmp_path / "m")
    reloaded = load_model(tmp_path / "m")
    assert reloaded.kv_heads() == [1, 3]
    manifest = export_model(tmp_path / "m", tmp_path / "b", target="cpu", progress=False)
    assert manifest.parity["greedy_tokens_identical"], manifest.parity
    past = {t.name: t.shape[1] for t in manifest.graphs["text_decoder"].inputs if t.name.startswith("past_")}
    assert sorted(past.values()) == [1, 1, 3, 3]
    captioner = load(tmp_path / "b")
    px = _pixels(reloaded, photos_bgr).numpy()
    ids = captioner.generate(px, max_new_tokens=8)
    assert ids.shape[0] == 2 and not np.array_equal(ids[0], ids[1])


@pytest.mark.parametrize("arch", ARCHS)
def test_pruning_nothing_is_a_no_op(arch, tmp_path, photos_bgr) -> None:
    from edgevlp.compress.pipeline import compress_model

    adapter = tiny_adapter(arch)
    px = _pixels(adapter, photos_bgr)
    ref = _outputs(adapter, px)
    n = sum(p.numel() for p in adapter.model.parameters())
    compress_model(adapter, Recipe(name="p0", stages=(PruneConfig(ratio=0.0),)), tmp_path / "o", progress=False)
    assert sum(p.numel() for p in adapter.model.parameters()) == n
    # keeping every unit swaps in the pruning-aware attention forwards: they compute the same thing
    prune_heads(adapter.model, {g.path: range(g.heads) for g in attention_groups(adapter.model)})
    prune_neurons(adapter.model, {g.path: range(g.neurons) for g in mlp_groups(adapter.model)})
    got = _outputs(adapter, px)
    for name in ref:
        torch.testing.assert_close(got[name], ref[name], rtol=0, atol=1e-6)


def test_global_selection_budget_and_floor() -> None:
    from edgevlp.compress.prune import select_units
    from edgevlp.models.pruning import AttentionGroup

    groups = [AttentionGroup("a", 4, 8, "BlipAttention"), AttentionGroup("b", 4, 8, "BlipAttention")]
    scores = {"a": torch.tensor([0.0, 0.1, 0.2, 0.3]), "b": torch.tensor([5.0, 6.0, 7.0, 0.05])}
    keep = select_units(groups, scores, 0.5, "global")
    assert keep == {"a": [3], "b": [0, 1, 2]}  # 4 removed, the weakest, but "a" keeps one head
    assert select_units(groups, scores, 0.5, "per_layer") == {"a": [2, 3], "b": [1, 2]}


def test_taylor_scores_see_the_task(photos_bgr) -> None:
    """A head whose output projection is zeroed contributes nothing: its Fisher score is 0 and the
    others' are not."""
    from edgevlp.compress.prune import importance_scores
    from edgevlp.compress.signals import Batch

    adapter = tiny_adapter("BlipForConditionalGeneration")
    group = attention_groups(adapter.model)[0]
    with torch.no_grad():
        adapter.model.vision_model.encoder.layers[0].self_attn.projection.weight[:, :group.head_dim] = 0
    batch = Batch(_pixels(adapter, photos_bgr), [])
    scores = importance_scores(adapter, [group], "taylor", [batch])[group.path]
    assert scores[0] == 0 and bool((scores[1:] > 0).all()), scores


@pytest.mark.parametrize("arch", ["BlipForConditionalGeneration", "OwlViTForObjectDetection"])
def test_distillation_lowers_the_loss(arch) -> None:
    from edgevlp.compress.distill import DistillTraining, distill_loss, teacher_copy
    from edgevlp.compress.prune import select_units

    torch.manual_seed(0)
    student = tiny_adapter(arch)
    teacher = teacher_copy(student)
    groups = attention_groups(student.model)
    prune_heads(student.model, select_units(groups, {g.path: torch.rand(g.heads) for g in groups}, 0.5, "global"))
    cfg = DistillConfig(steps=10, lr=3e-3, batch_size=4, hidden_weight=0.5,
                        task_weight=1.0 if arch.startswith("Blip") else 0.0)
    job = DistillTraining(student, teacher, cfg, "shapes:train")
    batch = job.batch(0, 4, 0)
    with torch.no_grad():
        first, terms = distill_loss(job, batch)
    assert terms["kd"] > 0 and terms["hidden"] > 0
    opt = torch.optim.AdamW(student.model.parameters(), lr=cfg.lr)
    for _ in range(cfg.steps):
        loss, _ = distill_loss(job, batch)
        opt.zero_grad()
        loss.backward()
        opt.step()
    with torch.no_grad():
        last, _ = distill_loss(job, batch)
    assert float(last) < 0.7 * float(first), (float(first), float(last))


def test_distillation_checkpoints_and_resumes(tmp_path, monkeypatch) -> None:
    """A run interrupted after step 3 leaves OUTPUT.train/ with the step-2 checkpoint and no output;
    --resume continues from step 2 (2 more steps), and success removes the checkpoints."""
    from edgevlp.compress import distill
    from edgevlp.compress.pipeline import compress_model
    from edgevlp.errors import InputError

    recipe = Recipe(name="kd", stages=(PruneConfig(ratio=0.3, calibration_size=2),
                                       DistillConfig(steps=4, batch_size=2, checkpoint_every=2)))
    out = tmp_path / "o"
    calls = []
    real = distill.DistillTraining.loss

    def failing(self, adapter, batch):
        calls.append(1)
        if len(calls) == 3:
            raise KeyboardInterrupt
        return real(self, adapter, batch)

    monkeypatch.setattr(distill.DistillTraining, "loss", failing)
    with pytest.raises(KeyboardInterrupt):
        compress_model(tiny_adapter("BlipForConditionalGeneration"), recipe, out, progress=False)
    ckpt = tmp_path / "o.train" / ".train"
    assert not out.exists() and json.loads((ckpt / "state.json").read_text())["step"] == 2
    with pytest.raises(InputError, match="--resume"):
        compress_model(tiny_adapter("BlipForConditionalGeneration"), recipe, out, progress=False)
    monkeypatch.setattr(distill.DistillTraining, "loss", real)
    calls.clear()
    monkeypatch.setattr(distill.DistillTraining, "loss", lambda s, a, b: (calls.append(1), real(s, a, b))[1])
    report = compress_model(tiny_adapter("BlipForConditionalGeneration"), recipe, out, progress=False, resume=True)
    assert len(calls) == 2 and report["stages"][1]["steps"] == 4
    assert not (tmp_path / "o.train").exists() and (out / "model" / "config.json").is_file()


def test_qat_writes_qdq_graphs_onnxruntime_runs(tmp_path, photos_bgr) -> None:
    from edgevlp.compress.pipeline import compress_model
    from edgevlp.export import export_model
    from edgevlp.runtime import load

    cfg = QuantConfig(method="qat", calibration=CalibrationConfig(size=4),
                      fallback=FallbackConfig(min_cosine=0.99, max_rel_diff=0.1, max_layers=64),
                      train=DistillConfig(steps=3, batch_size=2, lr=1e-4))
    adapter = tiny_adapter("BlipForConditionalGeneration")
    report = compress_model(adapter, Recipe(name="qat", stages=(cfg,)), tmp_path / "o", progress=False)
    stage = report["stages"][0]
    assert stage["method"] == "qat" and stage["qat"]["training"]["steps"] == 3
    assert stage["qat"]["fake_quant_layers"] > 0
    for role, g in stage["graphs"].items():
        ops = {n.op_type for n in onnx.load(str(tmp_path / "o" / g["file"])).graph.node}
        assert {"QuantizeLinear", "DequantizeLinear"} <= ops, role
        assert g["min_cosine"] > 0.9, (role, g["min_cosine"])
    # no fake quantisation is left in the saved model
    assert not any("parametrizations" in k for k in adapter.model.state_dict())
    # INT8 closeness is asserted above (cosine on held-out frames + photos); the exporter's elementwise
    # INT8 parity is PTQ's test, a 3-step QAT of a random model is not meant to pass it
    export_model(tmp_path / "o", tmp_path / "b", target="cpu", precision="int8", skip_parity=True, progress=False)
    captioner = load(tmp_path / "b")
    assert captioner.manifest.precision == "int8"
    assert captioner.caption(photos_bgr["astronaut"]).text


KD_RECIPE = """name = "tiny-prune-kd-int8"
version = 1

[[stages]]
[stages.prune]
ratio = 0.3
calibration_size = 4

[[stages]]
[stages.distill]
steps = 2
batch_size = 2
checkpoint_every = 1

[[stages]]
[stages.quant]
method = "ptq_dynamic"

[stages.quant.calibration]
size = 2
"""


def test_cli_flagship_shape_recipe_reuses_cached_training(tiny_model_dir, tmp_path, capsys) -> None:
    """prune + distill + INT8 through the CLI; a second run on the same model reuses the trained stages
    from the stage cache (same weights) and only quantises again; --no-cache retrains."""
    from safetensors.torch import load_file

    from edgevlp.cli import main

    model = str(tiny_model_dir("BlipForConditionalGeneration"))
    recipe = tmp_path / "r.toml"
    recipe.write_text(KD_RECIPE)
    args = ["compress", model, "--recipe", str(recipe), "--json"]
    assert main([*args, "--eval-n", "4", "-o", str(tmp_path / "a")]) == 0
    first = json.loads(capsys.readouterr().out)
    assert [s["stage"] for s in first["stages"]] == ["prune", "distill", "quant"]
    assert first["stage_cache"]["reused"] is None and first["stage_cache"]["key"]
    assert set(first["metric"]["before"]) == {"cider", "bleu4"} and first["metric"]["after"]
    assert first["parameters"]["after"]["total"] < first["parameters"]["before"]["total"]
    assert main([*args, "--eval-n", "0", "-o", str(tmp_path / "b")]) == 0
    second = json.loads(capsys.readouterr().out)
    assert second["stage_cache"]["key"] == first["stage_cache"]["key"] and second["stage_cache"]["reused"]
    assert all("cached" in s for s in second["stages"][:2]) and "cached" not in second["stages"][2]
    a = load_file(str(tmp_path / "a" / "model" / "model.safetensors"))
    b = load_file(str(tmp_path / "b" / "model" / "model.safetensors"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert main([*args, "--eval-n", "0", "--no-cache", "-o", str(tmp_path / "c")]) == 0
    assert json.loads(capsys.readouterr().out)["stage_cache"] is None
