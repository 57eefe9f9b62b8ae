"""The vqa family (SmolVLM, Idefics3) on tiny random models: the adapter's loop-free vision path equals
transformers', the three exported graphs carry HF's SmolVLM ONNX names, parity (greedy answers identical
to ``generate`` on real photos, split into 2 x 2 tiles + the global image and unsplit) holds on
onnxruntime and OpenVINO, and the torch-free ``Assistant`` streams, samples (seeded) and rejects bad input.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from edgevlp.errors import InputError
from edgevlp.models.smolvlm import Idefics3Adapter, SmolVLMAdapter

FAMILIES = {"SmolVLMForConditionalGeneration": SmolVLMAdapter, "Idefics3ForConditionalGeneration": Idefics3Adapter}


@pytest.fixture(scope="module")
def bundles(tmp_path_factory):
    """(architecture, target) -> bundle of the tiny model (exported once per module)."""
    from edgevlp.export import export_model

    cache = {}

    def make(arch: str, target: str = "cpu"):
        if (arch, target) not in cache:
            out = tmp_path_factory.mktemp(f"{arch}-{target}") / "b"
            export_model(FAMILIES[arch].tiny(), out, target=target, progress=False)
            cache[arch, target] = out
        return cache[arch, target]

    return make


@pytest.mark.parametrize("arch", FAMILIES)
def test_vision_path_is_transformers_own(arch, photos_rgb) -> None:
    adapter = FAMILIES[arch].tiny()
    feats = []
    for name in ("astronaut", "coffee"):
        inputs = adapter.reference_inputs(photos_rgb[name], "what is it?")
        px, mask = inputs["pixel_values"], inputs["pixel_attention_mask"]
        assert px.shape[1] == 5  # 2 x 2 tiles + the global image
        partial = mask.clone()
        partial[:, -1, :, 20:] = 0  # a padded image: fewer real patches, other position buckets
        for m in (mask, partial):
            with torch.no_grad():
                ref = adapter.model.model.get_image_features(px, m)
                got = adapter.image_features(px, m)
            torch.testing.assert_close(got, ref, rtol=0, atol=0)
        feats.append(got)
    assert (feats[0] - feats[1]).abs().max() > 0.1, "image features barely depend on the image"
    a = adapter.answer_ids(photos_rgb["astronaut"], "what is it?", 8)
    b = adapter.answer_ids(photos_rgb["coffee"], "what is it?", 8)
    assert not torch.equal(a, b), "the answers ignore the image"


@pytest.mark.parametrize("arch, target", [
    ("SmolVLMForConditionalGeneration", "cpu"), ("SmolVLMForConditionalGeneration", "openvino"),
    ("SmolVLMForConditionalGeneration", "jetson"), ("Idefics3ForConditionalGeneration", "cpu")])
def test_bundle_parity_and_names(bundles, arch, target) -> None:
    import json

    import jsonschema

    from edgevlp.bundle import manifest_schema, read_manifest

    path = bundles(arch, target)
    jsonschema.validate(json.loads((path / "manifest.json").read_text()), manifest_schema())
    m = read_manifest(path)
    assert m.task == "vqa" and m.verified and m.parity["passed"]
    assert list(m.graphs) == ["vision_encoder", "embed_tokens", "decoder"]
    assert [t.name for t in m.graphs["vision_encoder"].inputs] == ["pixel_values", "pixel_attention_mask"]
    assert [t.name for t in m.graphs["decoder"].inputs][:4] == [
        "inputs_embeds", "attention_mask", "position_ids", "past_key_values.0.key"]
    assert m.graphs["decoder"].outputs[1].name == "present.0.key"
    assert m.graphs["decoder"].inputs[3].shape[1] == 2  # grouped-query: 2 kv heads for 4 query heads
    p = m.parity
    assert p["greedy_tokens_identical"] is True and p["prompt_ids_identical"] is True
    assert p["outputs"]["image_features"]["ok"] and p["outputs"]["image_features"]["max_abs_source"] > 0.1
    cases = p["cases"]
    assert sorted({c["images"] for c in cases}) == [1, 5]  # unsplit, and 2 x 2 tiles + global
    assert all(len(c["source_token_ids"]) >= 2 and c["source_token_ids"] == c["exported_token_ids"] for c in cases)
    assert cases[0]["source_token_ids"] != cases[2]["source_token_ids"], "both photos gave the same answer"
    if target == "jetson":  # TensorRT-ready: the profile's VLM ranges reach the trtexec command lines
        import subprocess

        script = (path / "build_engines.sh").read_text()
        assert "--maxShapes=pixel_values:1x17x3x32x32" in script and "inputs_embeds:1x1280x32" in script
        assert subprocess.run(["bash", "-n", str(path / "build_engines.sh")]).returncode == 0


@pytest.mark.parametrize("target", ["cpu", "openvino"])
def test_a_batch_of_questions_answers_as_batched_generate(bundles, photos_bgr, photos_rgb, target) -> None:
    """``ask_many``: two questions of different lengths about one frame, one left-padded prefill and one
    decode loop: each row's greedy tokens are transformers' batched ``generate``'s (up to its eos) and the
    same as asking alone; the answers differ, so the rows are not mixed up."""
    from edgevlp.runtime import load

    arch = "SmolVLMForConditionalGeneration"
    adapter, vlm = FAMILIES[arch].tiny(), load(bundles(arch, target))
    questions = ["is there a cat?", "what colour is the big square on the left of the picture?"]
    eos = int(adapter.generation_settings()["eos_token_id"])
    for photo in ("chelsea", "astronaut"):
        answers = vlm.ask_many(photos_bgr[photo], questions, max_new_tokens=8)
        ref = adapter.answer_ids(photos_rgb[photo], questions, max_new_tokens=8).tolist()
        for answer, row in zip(answers, ref):
            expect = row[:row.index(eos) + 1] if eos in row else row
            assert answer.token_ids == expect, (photo, answer.token_ids, row)
        assert answers[0].token_ids != answers[1].token_ids
        assert [vlm.ask(photos_bgr[photo], q, max_new_tokens=8).token_ids for q in questions] == \
            [a.token_ids for a in answers]
        assert answers[0].prompt_tokens < answers[1].prompt_tokens and answers[0].timings["batch"] == 2
    frames = [photos_bgr["chelsea"], photos_bgr["astronaut"], photos_bgr["chelsea"]]  # one frame twice
    batch = vlm.ask_batch(frames, [questions[1], questions[0], None], max_new_tokens=8)
    alone = [vlm.ask(f, q, max_new_tokens=8) for f, q in zip(frames, [questions[1], questions[0], None])]
    assert [a.token_ids for a in batch] == [a.token_ids for a in alone]
    assert len({tuple(a.token_ids) for a in batch}) == 3 and batch[0].timings["batch"] == 3
    with pytest.raises(InputError, match="one frame per question"):
        vlm.ask_batch(frames[:2], questions[:1])
    with pytest.raises(InputError, match="non-empty list"):
        vlm.ask_many(photos_bgr["chelsea"], "is there a cat?")
    with pytest.raises(InputError, match="stream"):
        vlm.ask_many(photos_bgr["chelsea"], questions, stream=print)


def test_ask_streams_samples_and_times(bundles, photos_bgr) -> None:
    from edgevlp.runtime import Answer, Assistant, load

    vlm = load(bundles("SmolVLMForConditionalGeneration"))
    assert isinstance(vlm, Assistant)
    frame = photos_bgr["chelsea"]
    pieces: list[str] = []
    greedy = vlm.ask(frame, "is there a cat?", max_new_tokens=12, stream=pieces.append)
    assert isinstance(greedy, Answer) and len(greedy.token_ids) == 12 and greedy.images == 5
    assert "".join(pieces) == greedy.text
    assert {"preprocess", "encode", "prefill", "decode", "decode_per_token"} <= set(greedy.timings)
    assert vlm.ask(frame, "is there a cat?", max_new_tokens=12).token_ids == greedy.token_ids
    assert vlm.ask(frame, "is there a dog?", max_new_tokens=12).token_ids != greedy.token_ids
    one = vlm.ask(frame, "is there a cat?", max_new_tokens=4, image_splitting=False)
    assert one.images == 1 and one.prompt_tokens < greedy.prompt_tokens
    s1 = vlm.ask(frame, "is there a cat?", max_new_tokens=12, do_sample=True, temperature=1.5, seed=1)
    s1b = vlm.ask(frame, "is there a cat?", max_new_tokens=12, do_sample=True, temperature=1.5, seed=1)
    s2 = vlm.ask(frame, "is there a cat?", max_new_tokens=12, do_sample=True, temperature=1.5, seed=2)
    assert s1.token_ids == s1b.token_ids and s1.token_ids != s2.token_ids
    top1 = vlm.ask(frame, "is there a cat?", max_new_tokens=12, do_sample=True, top_k=1, seed=3)
    assert top1.token_ids == greedy.token_ids  # top-k 1 is greedy
    assert vlm.caption(frame, max_new_tokens=3).token_ids == vlm.ask(frame, None, max_new_tokens=3).token_ids


@pytest.mark.parametrize("kwargs, needle", [
    ({"max_new_tokens": 0}, "max_new_tokens must be an int >= 1"),
    ({"temperature": 0.0, "do_sample": True}, "temperature must be > 0"),
    ({"top_p": 1.5}, r"top_p must be in \(0, 1\]"),
    ({"top_k": -1}, "top_k must be an int >= 0"),
])
def test_bad_generation_arguments_are_clear(bundles, photos_bgr, kwargs, needle) -> None:
    from edgevlp.runtime import load

    vlm = load(bundles("SmolVLMForConditionalGeneration"))
    with pytest.raises(InputError, match=needle):
        vlm.ask(photos_bgr["coffee"], "what?", **kwargs)


def test_bad_frame_and_question(bundles) -> None:
    from edgevlp.runtime import load

    vlm = load(bundles("SmolVLMForConditionalGeneration"))
    with pytest.raises(InputError, match="cv2.imread returns None"):
        vlm.ask(None, "what?")
    with pytest.raises(InputError, match="non-empty question"):
        vlm.ask(np.zeros((40, 40, 3), np.uint8), "  ")


def test_eval_asks_generated_questions_same_answers_from_model_and_bundle(bundles, tmp_path) -> None:
    """`edgevlp eval` on a vqa model: the greedy answers of the bundle are transformers' own, question
    by question, and they depend on the image; the accuracy of each kind is reported; non-shape data
    are refused (the questions come from the scene's objects)."""
    from edgevlp.data import dataset, to_coco
    from edgevlp.eval import evaluate
    from edgevlp.eval.evaluate import answer_questions, load_samples
    from edgevlp.runtime import load

    arch = "Idefics3ForConditionalGeneration"
    adapter, bundle = FAMILIES[arch].tiny(), bundles(arch)
    samples, _ = load_samples("shapes:val:6", None, adapter.tile_size)
    asked = [(i, "what colour is the star?") for i in range(6)]
    torch_answers = answer_questions(adapter, samples, asked, bundle=False, max_new_tokens=5, progress=False)
    bundle_answers = answer_questions(load(bundle), samples, asked, bundle=True, max_new_tokens=5, progress=False)
    assert torch_answers == bundle_answers and len(set(torch_answers)) > 1
    result = evaluate(bundle, "shapes:val:4", max_new_tokens=5, progress=False)
    assert result["task"] == "vqa" and result["n_questions"] >= 12
    assert 0.0 <= result["vqa_accuracy"] <= 1.0 and {"vqa_colour", "vqa_exists", "vqa_count"} <= set(result)
    assert result == {**evaluate(adapter, "shapes:val:4", max_new_tokens=5, progress=False),
                      "model": result["model"], "kind": "bundle", "seconds": result["seconds"]}
    to_coco(dataset("val", 2, size=64), tmp_path / "coco")
    with pytest.raises(InputError, match="shape scenes"):
        evaluate(bundle, f"coco:{tmp_path / 'coco'}", progress=False)


PRUNE_KD = """
name = "gqa-prune-kd"
version = 1
[[stages]]
[stages.prune]
targets = ["heads", "neurons"]
parts = ["vision", "text"]
ratio = 0.5
scope = "global"
importance = "taylor"
calibration_size = 8
calibration_source = "shapes:train"
[[stages]]
[stages.distill]
steps = 6
lr = 1e-3
batch_size = 4
data = "shapes:train"
"""


def test_grouped_query_pruning_and_distillation_keep_the_kv_cache_and_export(tmp_path, photos_bgr) -> None:
    """Pruning a Llama decoder removes query heads evenly from every key/value group (the KV cache keeps
    its layout), gated-MLP neurons from gate, up and down together; the pruned model loads again,
    distils on generated questions and exports with greedy answers identical to transformers'."""
    import json

    from edgevlp.compress import compress_model
    from edgevlp.models import load_model
    from edgevlp.models.pruning import attention_groups, prune_heads
    from edgevlp.runtime import load

    adapter = Idefics3Adapter.tiny()
    (tmp_path / "recipe.toml").write_text(PRUNE_KD)
    adapter.save_pretrained(tmp_path / "model")
    report = compress_model(tmp_path / "model", tmp_path / "recipe.toml", tmp_path / "out", progress=False)
    prune, distill = report["stages"][0], report["stages"][1]
    assert prune["parts"]["text"]["heads"]["before"] == 8 and prune["parts"]["text"]["heads"]["after"] == 4
    assert prune["parameters"]["after"] < prune["parameters"]["before"]
    assert distill["steps"] == 6 and distill["loss_first_batch"]["task"] > 0
    pruned = load_model(tmp_path / "out" / "model")
    layers = pruned.model.model.text_model.layers
    for layer in layers:
        attn, mlp = layer.self_attn, layer.mlp
        assert attn.k_proj.weight.shape == attn.v_proj.weight.shape == (16, 32)  # 2 kv heads of 8, untouched
        assert attn.q_proj.weight.shape == (16, 32) and attn.num_key_value_groups == 1
        assert mlp.gate_proj.weight.shape == mlp.up_proj.weight.shape == mlp.down_proj.weight.T.shape
    assert sum(layer.mlp.gate_proj.weight.shape[0] for layer in layers) == 64
    out = tmp_path / "bundle"
    from edgevlp.export import export_model

    export_model(tmp_path / "out", out, target="cpu", progress=False)
    parity = json.loads((out / "manifest.json").read_text())["parity"]
    assert parity["passed"] and parity["greedy_tokens_identical"] is True
    answer = load(out).ask(photos_bgr["coffee"], "what is this?", max_new_tokens=4)
    assert answer.token_ids and answer.prompt_tokens > 0
    group = next(g for g in attention_groups(adapter.model) if g.kv_heads)
    with pytest.raises(ValueError, match="same number of query heads per key/value head"):
        prune_heads(adapter.model, {group.path: [0, 1]})  # both from the first group


def test_query_slots_keep_the_best_heads_of_every_group() -> None:
    from edgevlp.compress.prune import _select, heads_of_slots
    from edgevlp.models.pruning import AttentionGroup

    g = AttentionGroup("attn", heads=6, head_dim=4, layout="LlamaAttention", kv_heads=2)  # 3 per group
    scores = {"attn": torch.tensor([0.1, 0.9, 0.5, 0.7, 0.2, 0.3])}
    assert heads_of_slots(g, 2, scores["attn"]) == [1, 2, 3, 5]
    assert _select([g], scores, 1 / 3, "per_layer") == {"attn": [1, 2, 3, 5]}
    assert _select([g], scores, 0.9, "global") == {"attn": [1, 3]}  # one slot always stays

def test_camera_app_answers_the_question(exported, tmp_path, capsys) -> None:
    """`edgevlp run VLM DETECTOR --ask Q --ask-every 4f`: the answer is the caption line of the log, the
    first one made on frame 0 (it equals ask() on that decoded frame) and the summary names the question."""
    import cv2

    from edgevlp.cli import main
    from edgevlp.runtime import load
    from tests.test_app import make_clip, read_jsonl

    clip = make_clip(tmp_path, frames=10)
    vlm, owl = exported("SmolVLMForConditionalGeneration"), exported("OwlViTForObjectDetection")
    out = tmp_path / "run"
    question = "what shape is on the left?"
    rc = main(["run", str(vlm), str(owl), "--source", str(clip), "--prompts", "red circle", "--ask", question,
               "--ask-every", "4f", "--max-new-tokens", "5", "--headless", "--output", str(out)])
    assert rc == 0, capsys.readouterr().err
    lines = read_jsonl(out / "log.jsonl")
    assert len(lines) == 10 and all(isinstance(r["caption"], str) for r in lines)
    ok, first = cv2.VideoCapture(str(clip)).read()
    assert ok
    assert lines[0]["caption"] == load(vlm).ask(first, question, max_new_tokens=5).text
    summary = (out / "summary.json").read_text()
    assert question in summary and '"captions": ' in summary
    rc = main(["run", str(owl), "--source", str(clip), "--prompts", "cup", "--ask", question, "--headless"])
    assert rc == 1 and "--ask needs a VLM bundle" in capsys.readouterr().err


def test_int4_decoder_recipe_compresses_exports_and_runs(tmp_path, photos_bgr) -> None:
    """recipes/smolvlm-int4.toml: the decoder's MatMuls become 4-bit MatMulNBits (blocks of 32, int8
    compute) and the vision graph static INT8 QDQ (the recipe's graphs.decoder table); the export takes precision int4 from compression.json,
    checks parity against the recorded tolerance, and the runtime's answers follow FP32's."""
    import json

    import onnx

    from edgevlp.bundle import read_manifest
    from edgevlp.compress import compress_model
    from edgevlp.errors import InputError
    from edgevlp.export import export_model
    from edgevlp.runtime import load

    adapter = SmolVLMAdapter.tiny()
    out = tmp_path / "c"
    compress_model(adapter, "recipes/smolvlm-int4.toml", out, progress=False, cache=False)
    record = json.loads((out / "compression.json").read_text())
    assert record["precision"] == "int4"
    assert record["schemes"] == {"vision_encoder": "ptq_static", "decoder": "weight_only"}  # graphs.decoder table
    assert record["parity"]["min_cosine"] == 0.95  # the loosest of the two graphs' tolerances
    nbits = [n for n in onnx.load(str(out / record["graphs"]["decoder"])).graph.node if n.op_type == "MatMulNBits"]
    assert nbits and all({a.name: a.i for a in n.attribute}["bits"] == 4 for n in nbits)
    assert {a.name: a.i for a in nbits[0].attribute}["accuracy_level"] == 4
    bundle = tmp_path / "b"
    manifest = export_model(out, bundle, target="cpu", progress=False)
    assert manifest.precision == "int4" and manifest.parity["passed"]
    assert manifest.parity["outputs"]["image_features"]["cosine"] >= 0.98  # the INT8 vision graph
    vlm = load(bundle)
    a = vlm.ask(photos_bgr["astronaut"], "what is it?", max_new_tokens=6).token_ids
    b = vlm.ask(photos_bgr["coffee"], "what is it?", max_new_tokens=6).token_ids
    assert a and b and a != b, "the INT4 bundle's answers ignore the image"
    with pytest.raises(InputError, match="does not convert"):
        export_model(out, tmp_path / "ov", target="openvino", progress=False)


def test_four_bits_only_for_weight_only_on_onnxruntime() -> None:
    from edgevlp.compress.recipe import QuantConfig, QuantScheme
    from edgevlp.errors import RecipeError

    QuantConfig(method="weight_only", weights=QuantScheme(bits=4, block_size=64))
    with pytest.raises(RecipeError, match="weights.bits"):
        QuantConfig(method="ptq_static", weights=QuantScheme(bits=4, per_channel=True))
    QuantConfig(method="weight_only", backend="openvino", weights=QuantScheme(bits=4))  # NNCF INT4
    with pytest.raises(RecipeError, match="block_size"):
        QuantScheme(bits=4, block_size=48)
    with pytest.raises(RecipeError, match="bits"):
        QuantScheme(bits=3)


def test_int4_decoder_on_openvino(tmp_path, photos_bgr) -> None:
    """recipes/smolvlm-int4-openvino.toml: NNCF INT4 weight compression of the decoder, exported as IR
    with --target openvino; the runtime answers on OpenVINO."""
    import json

    from edgevlp.compress import compress_model
    from edgevlp.export import export_model
    from edgevlp.runtime import load

    out = tmp_path / "c"
    compress_model(SmolVLMAdapter.tiny(), "recipes/smolvlm-int4-openvino.toml", out, progress=False, cache=False)
    record = json.loads((out / "compression.json").read_text())
    assert record["precision"] == "int4" and list(record["openvino_graphs"]) == ["decoder"]
    manifest = export_model(out, tmp_path / "b", target="openvino", progress=False)
    assert manifest.precision == "int4" and manifest.graphs["decoder"].format == "openvino"
    answer = load(tmp_path / "b").ask(photos_bgr["coffee"], "what is it?", max_new_tokens=4)
    assert len(answer.token_ids) >= 1


def test_extreme_frames_and_long_questions(bundles) -> None:
    """A 1x1 and a 10000x10 frame are answered (tiled as the processor tiles them); a question past the
    context, bytes and a non-frame are clear errors."""
    from edgevlp.runtime import load

    vlm = load(bundles("SmolVLMForConditionalGeneration"))
    for shape in ((1, 1, 3), (10000, 10, 3)):
        answer = vlm.ask(np.full(shape, 128, np.uint8), "what?", max_new_tokens=2)
        assert answer.images >= 1 and len(answer.token_ids) >= 1
    with pytest.raises(InputError, match="context of 512"):
        vlm.ask(np.zeros((40, 40, 3), np.uint8), "cat " * 600, max_new_tokens=2)
    with pytest.raises(InputError, match="question string"):
        vlm.ask(np.zeros((40, 40, 3), np.uint8), b"\xff\xfe what")
    with pytest.raises(InputError, match="uint8 HxWx3 BGR"):
        vlm.ask(np.zeros((40, 40), np.float32), "what?")


def test_question_file_changes_the_question_while_running(exported, tmp_path) -> None:
    from edgevlp.app import AppConfig
    from edgevlp.app.config import Cadence
    from edgevlp.app.pipeline import run_app
    from edgevlp.runtime import load
    from tests.test_app import FakeDetector, make_clip

    clip = make_clip(tmp_path, frames=8)
    ask = tmp_path / "question.txt"
    ask.write_text("what colour is the circle?\n")
    vlm = load(exported("SmolVLMForConditionalGeneration"))
    seen = []

    def edit(frame: int) -> None:
        if frame == 3:
            ask.write_text("is there a square?")
        if frame == 6:
            ask.write_text("   ")  # emptied: the question stays, the app says why
        seen.append(frame)

    events: list[str] = []
    config = AppConfig(source=str(clip), prompts=("red circle",), ask_file=str(ask), prompts_poll_s=0.0,
                       caption_every=Cadence(1, "frames"),
                       max_new_tokens=3, headless=True)
    summary = run_app(config, assistant=vlm, detector=FakeDetector(on_detect=edit), on_event=events.append)
    assert summary["frames"] == 8 and summary["question"] == "is there a square?"
    assert summary["question_changes"] == 1
    assert any("question now: is there a square?" in e for e in events)
    assert any("question unchanged" in e and "empty" in e for e in events)


def test_weight_only_fallback_judged_on_answers(tmp_path) -> None:
    """``min_answer_match``: the decoder's weight-only candidates are judged on whole greedy answers (the
    candidate on its own KV cache), not one step's logits. One MLP channel carries a 1000x weight (its
    up-projection scaled down as much, so FP32 is unchanged): the blocks around it lose every other
    weight, the answers change, and the fallback keeps that MLP in FP32 first, then what else it takes
    for every answer to be FP32's, the rest staying 4-bit. On demo-smolvlm: a random tiny model's
    near-flat logits flip under 4-bit noise in every layer."""
    import json

    from edgevlp.compress.pipeline import compress_model
    from edgevlp.compress.recipe import CalibrationConfig, FallbackConfig, QuantConfig, QuantScheme, Recipe

    from edgevlp.models import load_model

    adapter = load_model("demo-smolvlm")
    mlp = adapter.model.model.text_model.layers[0].mlp
    with torch.no_grad():
        for j in (3, 40):
            mlp.up_proj.weight[j] *= 1e-3
            mlp.down_proj.weight[:, j] *= 1e3
    weights = QuantScheme(bits=4, block_size=32, per_channel=False)
    quant = QuantConfig(method="weight_only", weights=weights, include=("decoder",),
                        calibration=CalibrationConfig(size=8), fallback=FallbackConfig(min_answer_match=1.0))
    report = compress_model(adapter, Recipe(name="t", stages=(quant,)), tmp_path / "o", progress=False, cache=False)
    graph = report["stages"][0]["graphs"]["decoder"]
    fb = graph["fallback"]
    assert fb["metric"].startswith("greedy answers equal to FP32's") and fb["tolerance"] == 1.0
    assert fb["score_all_int8"] < 1.0, fb  # the broken block changes answers
    assert fb["met"] and fb["score_final"] == 1.0
    broken = "model.model.text_model.layers.0.mlp"
    assert fb["sensitivity"][0]["group"] == broken, fb["sensitivity"]  # the most noise: tried first
    kept = [k["group"] for k in fb["kept_fp32"]]
    print(fb)
    assert broken in kept and len(kept) < len(fb["sensitivity"]), kept
    assert graph["quantized"] and "MatMulNBits" in graph["integer_ops"]
    assert "answer_match_search" in graph["schemes"]["weight_only"]
    record = json.loads((tmp_path / "o" / "compression.json").read_text())
    assert record["schemes"] == {"decoder": "weight_only"}
    # judged on answers is a decoder's table only: a vision graph has no answers
    bad = QuantConfig(method="ptq_static", include=("vision_encoder",), calibration=CalibrationConfig(size=4),
                      fallback=FallbackConfig(min_answer_match=1.0))
    with pytest.raises(InputError, match="min_answer_match judges greedy answers.*'decoder'"):
        compress_model(SmolVLMAdapter.tiny(), Recipe(name="t", stages=(bad,)), tmp_path / "v", progress=False,
                       cache=False)
