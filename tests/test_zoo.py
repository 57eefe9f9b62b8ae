"""The demo zoo: shipped weights load and work, training runs and resumes exactly, `edgevlp zoo`
lists the models. The shipped models are part of the repo, so these tests never skip."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from edgevlp.cli import main
from edgevlp.data import dataset, parse_caption
from edgevlp.eval.metrics import box_iou
from edgevlp.models import ZOO_DIR, load_model

REPO = Path(__file__).resolve().parent.parent

SHIPPED = ("demo-blip", "demo-owlvit", "demo-smolvlm")



@pytest.mark.parametrize("name", SHIPPED)
def test_shipped_folder_is_complete_and_small(name) -> None:
    folder = ZOO_DIR / name
    for f in ("config.json", "model.safetensors", "tokenizer.json", "preprocessor_config.json", "README.md",
              "metrics.json"):
        assert (folder / f).is_file(), f"{folder / f} is missing"
    assert not (folder / ".train").exists()
    total = sum(f.stat().st_size for d in SHIPPED for f in (ZOO_DIR / d).iterdir() if f.is_file())
    total += sum(f.stat().st_size for f in (ZOO_DIR / "stage-cache").rglob("*") if f.is_file())
    assert total <= 20e6, "the demo zoo (models + shipped stage cache) must stay within 20 MB"
    card = json.loads((folder / "metrics.json").read_text())
    assert card["metrics"], "the card must report measured metrics"


def test_demo_blip_captions_val_scenes() -> None:
    # demo-blip names colours reliably and shapes for about two objects in three (its card:
    # shape_accuracy ~0.65), so on the first five lone-object val scenes (not hand-picked) every colour
    # must be right and at least three colour+shape pairs
    adapter = load_model("demo-blip")
    assert all(p.dtype == torch.float32 for p in adapter.model.parameters())  # fp16 storage, fp32 compute
    assert not hasattr(adapter.model, "shape_probe")  # the training-only probe is not shipped
    size = adapter.preprocess_spec().height
    scenes = [s for s in dataset("val", 60, size=size) if len(s.objects) == 1][:5]
    from edgevlp.eval.evaluate import caption_samples_torch

    texts = caption_samples_torch(adapter, scenes, progress=False)
    pairs_right = 0
    for scene, text in zip(scenes, texts):
        said = parse_caption(text).mentions
        obj = scene.objects[0]
        assert [m.colour for m in said] == [obj.colour], (text, obj.phrase)
        pairs_right += (said[0].colour, said[0].shape) == (obj.colour, obj.shape)
    assert pairs_right >= 3, list(zip(texts, [s.phrases for s in scenes]))


def test_demo_smolvlm_answers_colour_questions() -> None:
    # colours are its strong part (its card: vqa_colour); on the first ten val scenes with a colour
    # question (not hand-picked) most answers must be right, and they must differ with the scene
    from edgevlp.data.questions import eval_questions, normalize_answer

    adapter = load_model("demo-smolvlm")
    assert all(p.dtype == torch.float32 for p in adapter.model.parameters())
    assert not hasattr(adapter.model, "shape_probe")
    size = adapter.tile_size
    asked = []
    for i, scene in enumerate(dataset("val", 40, size=size)):
        qa = [q for q in eval_questions(scene.phrases, [o.box_xyxy for o in scene.objects], size, i)
              if q.kind == "colour"]
        if qa:
            asked.append((scene, qa[0]))
    said = [normalize_answer(adapter.tokenizer.decode(adapter.answer_ids(s.image, q.question, 4)[0],
                                                      skip_special_tokens=True)) for s, q in asked[:10]]
    right = sum(a == q.answer for a, (_, q) in zip(said, asked))
    assert right >= 7 and len(set(said)) >= 3, list(zip(said, [q for _, q in asked]))


def test_demo_owlvit_finds_a_prompted_object() -> None:
    adapter = load_model("demo-owlvit")
    assert all(p.dtype == torch.float32 for p in adapter.model.parameters())
    from edgevlp.eval.evaluate import detect_scenes_torch

    scenes = list(dataset("val", 2, size=adapter.preprocess_spec().height))
    for scene in scenes:
        target = scene.objects[0]
        record = detect_scenes_torch(adapter, [scene], [target.phrase], progress=False)[0]
        assert box_iou(record.boxes[0], np.asarray(target.box_xyxy)) >= 0.5, (scene.seed, target.phrase)


TASKS = {"demo-blip": "caption", "demo-owlvit": "detect", "demo-smolvlm": "vqa"}


@pytest.mark.slow
@pytest.mark.parametrize("name", list(TASKS))
def test_training_smoke_loss_goes_down(name, tmp_path) -> None:
    from edgevlp.zoo.train import train

    out = train(name, steps=20, out=tmp_path / name, tiny=True, batch_size=8, lr=3e-3, warmup=3,
                eval_every=20, eval_n=4, checkpoint_every=10, progress=False)
    log = [json.loads(line) for line in (out / ".train" / "log.jsonl").read_text().splitlines()]
    losses = [r["loss"] for r in log]
    assert len(losses) == 20 and all(np.isfinite(losses))
    assert np.mean(losses[-5:]) < np.mean(losses[:5]), losses
    adapter = load_model(out)  # the saved folder is an ordinary loadable model dir
    assert adapter.task == TASKS[name]
    card = json.loads((out / "metrics.json").read_text())
    assert card["training"]["steps"] == 20 and "edgevlp zoo train" in card["training"]["command"]


def test_minutes_budget_fixes_the_steps_it_reproduces_with(tmp_path) -> None:
    from edgevlp.zoo.train import train

    kw = dict(tiny=True, batch_size=4, lr=3e-3, warmup=5, eval_every=1000, eval_n=2, checkpoint_every=1000,
              progress=False)
    out = train("demo-owlvit", steps=10_000, minutes=0.02, out=tmp_path / "a", **kw)  # ~1 s of training
    card = json.loads((out / "metrics.json").read_text())["training"]
    steps = card["steps"]
    assert 5 <= steps < 10_000 and f"--steps {steps} " in card["command"]
    log = (out / ".train" / "log.jsonl").read_text().splitlines()
    assert len(log) == steps and json.loads((out / ".train" / "state.json").read_text())["step"] == steps
    # resumed without --steps: the checkpoint's step count (nothing left to do); --minutes refuses to resume
    again = train("demo-owlvit", out=tmp_path / "a", resume=True, **kw)
    assert len((again / ".train" / "log.jsonl").read_text().splitlines()) == steps
    from edgevlp.errors import InputError

    with pytest.raises(InputError, match="--minutes budgets a new run"):
        train("demo-owlvit", minutes=1, out=tmp_path / "a", resume=True, **kw)


def test_zoo_train_cli_rejects_a_missing_gpu_and_bad_budgets(tmp_path, capsys) -> None:
    from edgevlp.cli import main

    if not torch.cuda.is_available():
        assert main(["zoo", "train", "demo-owlvit", "--device", "cuda", "--out", str(tmp_path / "g")]) == 1
        assert "sees no CUDA device" in capsys.readouterr().err
        assert not (tmp_path / "g" / ".train").exists()
    assert main(["zoo", "train", "demo-owlvit", "--minutes", "-1", "--out", str(tmp_path / "m")]) == 1
    assert "--minutes -1" in capsys.readouterr().err
    assert main(["zoo", "train", "demo-owlvit", "--device", "tpu", "--out", str(tmp_path / "t")]) == 1
    assert "--device 'tpu'" in capsys.readouterr().err


@pytest.mark.slow
def test_resume_continues_exactly(tmp_path) -> None:
    from safetensors.torch import load_file

    from edgevlp.zoo.train import train

    kw = dict(tiny=True, batch_size=4, lr=3e-3, warmup=2, eval_every=100, eval_n=2, checkpoint_every=3,
              progress=False)
    straight = train("demo-owlvit", steps=6, out=tmp_path / "a", **kw)
    train("demo-owlvit", steps=3, out=tmp_path / "b", **kw)
    resumed = train("demo-owlvit", steps=6, out=tmp_path / "b", resume=True, **kw)
    a = load_file(str(straight / ".train" / "model.safetensors"))
    b = load_file(str(resumed / ".train" / "model.safetensors"))
    assert a.keys() == b.keys()
    assert all(torch.allclose(a[k], b[k], atol=1e-6) for k in a)
    from edgevlp.errors import InputError

    with pytest.raises(InputError, match="--resume"):
        train("demo-owlvit", steps=6, out=tmp_path / "b", **kw)  # refuses to overwrite a checkpoint


def test_init_from_starts_at_the_saved_weights(tmp_path, capsys) -> None:
    """A warm restart: the run starts at the saved model's weights (tied weights and the training-only
    probe included), the card's command says so, and a model of another size is refused clearly."""
    from safetensors.torch import load_file

    from edgevlp.zoo.train import recipe_for, train

    kw = dict(tiny=True, batch_size=2, warmup=1, eval_every=100, eval_n=2, checkpoint_every=100, progress=False)
    first = train("demo-blip", steps=2, out=tmp_path / "a", **kw)
    recipe = recipe_for("demo-blip")
    adapter = recipe.build(seed=5, tiny=True)
    from edgevlp._training import _init_weights

    _init_weights(adapter.model, first, recipe.training_only)
    saved = load_file(str(first / "model.safetensors"))
    own = adapter.model.state_dict()
    assert all(torch.equal(own[k], saved[k].to(own[k].dtype)) for k in saved)
    assert torch.equal(own["text_decoder.cls.predictions.decoder.weight"],  # tied, saved once
                       own["text_decoder.bert.embeddings.word_embeddings.weight"])
    fresh = recipe.build(seed=5, tiny=True).model.state_dict()
    assert not torch.equal(fresh["vision_model.embeddings.patch_embedding.weight"],
                           own["vision_model.embeddings.patch_embedding.weight"])  # the load changed them
    again = train("demo-blip", steps=1, out=tmp_path / "b", seed=1, lr=1e-9, init_from=first, **kw)
    card = json.loads((again / "metrics.json").read_text())["training"]
    assert card["init_from"] == str(first) and f"--init-from {first}" in card["command"]
    after = load_file(str(again / "model.safetensors"))  # lr 1e-9: one step leaves the weights (fp16) as they were
    assert all(torch.equal(after[k], saved[k]) for k in saved)
    assert main(["zoo", "train", "demo-blip", "--init-from", str(ZOO_DIR / "demo-blip"), "--steps", "1",
                 "--out", str(tmp_path / "c"), "--lr", "0"]) == 1
    assert "--lr 0" in capsys.readouterr().err
    assert main(["zoo", "train", "demo-owlvit", "--init-from", str(tmp_path / "nothing"), "--steps", "1",
                 "--out", str(tmp_path / "c")]) == 1
    assert "no model.safetensors" in capsys.readouterr().err
    from edgevlp.errors import InputError

    with pytest.raises(InputError, match="not this recipe's model"):
        train("demo-owlvit", steps=1, out=tmp_path / "d", init_from=first, **kw)


def test_zoo_lists_both(capsys) -> None:
    assert main(["zoo"]) == 0
    out = capsys.readouterr().out
    for name in SHIPPED:
        assert name in out
    assert main(["zoo", "--json"]) == 0
    listed = {m["name"]: m for m in json.loads(capsys.readouterr().out)}
    assert set(SHIPPED) <= set(listed)
    assert listed["demo-blip"]["family"] == "blip" and listed["demo-owlvit"]["family"] == "owlvit"
    assert listed["demo-smolvlm"]["family"] == "idefics3"
    assert 1e6 < listed["demo-blip"]["parameters"] < 20e6


def test_zoo_train_unknown_name(capsys) -> None:
    assert main(["zoo", "train", "demo-gpt"]) == 1
    assert "demo-blip" in capsys.readouterr().err


@pytest.mark.parametrize("name,keys", [("demo-blip", ("bleu4", "cider")), ("demo-owlvit", ("map", "map50")),
                                       ("demo-smolvlm", ("vqa_accuracy", "vqa_colour"))])
def test_eval_cli_json(name, keys, tmp_path, capsys) -> None:
    path = tmp_path / "m.json"
    assert main(["eval", name, "--data", "shapes:val:6", "--json", str(path), "--no-progress"]) == 0
    result = json.loads(path.read_text())
    assert result["n_images"] == 6 and all(0.0 <= result[k] for k in keys)
    table = capsys.readouterr().out
    assert {"demo-blip": "CIDEr", "demo-owlvit": "mAP@.5", "demo-smolvlm": "VQA accuracy"}[name] in table


def test_zoo_listing_does_not_import_torch() -> None:
    import subprocess
    import sys

    code = ("import sys, contextlib, io\nfrom edgevlp.cli import main\n"
            "with contextlib.redirect_stdout(io.StringIO()):\n    rc = main(['zoo'])\n"
            "print(rc, sorted(m for m in ('torch', 'transformers') if m in sys.modules))")
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert res.returncode == 0, res.stderr
    assert res.stdout.strip() == "0 []"


@pytest.mark.parametrize("name", ["demo-blip", "demo-owlvit"])
def test_shipped_stage_cache_matches_the_flagship_recipe(name) -> None:
    """`make demo` runs recipes/prune30-kd-int8.toml: its prune + distill result for each demo model is
    shipped, so the key of (shipped model, flagship training stages) must find it, and it must be the
    pruned model (non-uniform shapes, fewer parameters) with the report of the run that made it."""
    from edgevlp.compress.cache import SHIPPED, cacheable_prefix, read_reports, stage_key
    from edgevlp.compress.recipe import load_recipe
    stages = load_recipe(REPO / "recipes" / "prune30-kd-int8.toml").stages
    prefix = cacheable_prefix(stages)
    assert prefix == 2
    entry = SHIPPED / stage_key(ZOO_DIR / name, stages[:prefix])
    assert (entry / "stages.json").is_file(), f"no shipped stage cache for {name}: refresh it (DEVELOPERS.md)"
    reports = read_reports(entry)
    assert [r["stage"] for r in reports] == ["prune", "distill"] and reports[1]["steps"] == stages[1].steps
    pruned, original = load_model(entry), load_model(name)
    assert pruned.parameter_counts()["total"] < 0.8 * original.parameter_counts()["total"]


def test_blip_shape_probe_labels_and_is_dropped(tmp_path) -> None:
    """The captioner's training-only probe: patch labels follow the drawn boxes (topmost object wins);
    the saved model is a plain BLIP (it reloads, no probe weights)."""
    from types import SimpleNamespace

    from edgevlp.data import SHAPES
    from edgevlp.zoo.blip_recipe import patch_shape_labels

    square = SimpleNamespace(shape="square", box_xyxy=(0.0, 0.0, 16.0, 16.0))
    star = SimpleNamespace(shape="star", box_xyxy=(8.0, 8.0, 24.0, 24.0))  # drawn after: on top
    labels = patch_shape_labels([SimpleNamespace(objects=[square, star])], 32, 8).view(4, 4)
    sq, st = 1 + SHAPES.index("square"), 1 + SHAPES.index("star")
    assert labels.tolist() == [[sq, sq, 0, 0], [sq, st, st, 0], [0, st, st, 0], [0, 0, 0, 0]]
    from edgevlp.zoo.train import train

    out = train("demo-blip", steps=2, out=tmp_path / "b", tiny=True, batch_size=2, eval_n=2, progress=False)
    from safetensors.torch import load_file

    assert any("shape_probe" in k for k in load_file(str(out / ".train" / "model.safetensors")))
    assert not any("shape_probe" in k for k in load_file(str(out / "model.safetensors")))
    assert not hasattr(load_model(out).model, "shape_probe")
