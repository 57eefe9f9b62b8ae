"""Recipes are data: every shipped recipe loads and round-trips; bad values name the field."""

from __future__ import annotations

import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

from edgevlp.compress import (DistillConfig, PruneConfig, QuantConfig, Recipe, load_recipe)
from edgevlp.compress.recipe import to_toml
from edgevlp.errors import NotAvailableYet, RecipeError

ROOT = Path(__file__).resolve().parent.parent
RECIPES = sorted((ROOT / "recipes").glob("*.toml")) + sorted((ROOT / "benchmarks" / "recipes").glob("*.toml"))


def test_shipped_recipes_exist() -> None:
    assert {p.stem for p in RECIPES} >= {"int8-ptq", "int8-qat", "prune30-kd", "prune30-kd-int8",
                                         "weight-only-int8"}


@pytest.mark.parametrize("path", RECIPES, ids=lambda p: p.stem)
def test_shipped_recipe_loads_and_round_trips(path: Path) -> None:
    recipe = load_recipe(path)
    assert recipe.name == path.stem and recipe.version == 1
    assert Recipe.from_dict(recipe.to_dict()) == recipe
    assert Recipe.from_dict(tomllib.loads(to_toml(recipe))) == recipe


def test_structure_recipe_is_its_recipe_without_distillation() -> None:
    """benchmarks/recipes/smolvlm-prune-int4-structure.toml times smolvlm-prune-kd-int4's model at real
    size: the same stages, settings and all, but the distillation."""
    full = load_recipe(ROOT / "recipes" / "smolvlm-prune-kd-int4.toml")
    structure = load_recipe(ROOT / "benchmarks" / "recipes" / "smolvlm-prune-int4-structure.toml")
    assert [s for s in full.stages if not isinstance(s, DistillConfig)] == list(structure.stages)
    assert any(isinstance(s, DistillConfig) for s in full.stages)


def test_flagship_order() -> None:
    r = load_recipe(next(p for p in RECIPES if p.stem == "prune30-kd-int8"))
    assert r.stage_names() == ["prune", "distill", "quant"]
    assert r.stages[0].ratio == 0.3 and r.quant is not None and r.quant.fallback.min_cosine == 0.9995


def _write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "r.toml"
    path.write_text('name = "t"\nversion = 1\n' + text)
    return path


@pytest.mark.parametrize("body, field", [
    ("[[stages]]\n[stages.prune]\nratio = 1.5\n", "stages[0].prune.ratio"),
    ("[[stages]]\n[stages.quant]\nmethod = \"int3\"\n", "stages[0].quant.method"),
    ("[[stages]]\n[stages.distill]\ntemperature = -1.0\n", "stages[0].distill.temperature"),
    ("[[stages]]\n[stages.quant]\nmethd = \"ptq_static\"\n", "stages[0].quant.methd"),
    ("[[stages]]\n[stages.prune]\nratio = \"high\"\n", "stages[0].prune.ratio"),
    ("[[stages]]\n[stages.quant]\n[stages.quant.calibration]\nsize = 0\n", "stages[0].quant.calibration.size"),
    ("[[stages]]\n[stages.quant]\n[stages.quant.calibration]\nmethod = \"kl\"\n",
     "stages[0].quant.calibration.method"),
    ("[[stages]]\n[stages.quant]\n[stages.quant.weights]\nsymmetric = 1\n", "stages[0].quant.weights.symmetric"),
    ("[[stages]]\n[stages.quant]\nbackend = \"openvino\"\nmethod = \"ptq_dynamic\"\n", "stages[0].quant.method"),
    ("[[stages]]\n[stages.quant]\nmethod = \"qat\"\n", "stages[0].quant.train"),
    ("[[stages]]\n[stages.quant]\nmethod = \"weight_only\"\n", "stages[0].quant.weights.per_channel"),
    ("[[stages]]\n[stages.quant]\n[stages.quant.fallback]\nmin_cosine = 1.5\n", "fallback.min_cosine"),
    ("[[stages]]\n[stages.smash]\nratio = 0.1\n", "stages[0].smash"),
    ("[[stages]]\n[stages.quant]\n\n[[stages]]\n[stages.prune]\n", "stages"),
    ("extra = 1\n[[stages]]\n[stages.quant]\n", "extra"),
    ("[[stages]]\n[stages.quant]\nschemes = [\"ptq_dynamic\"]\n", "stages[0].quant.schemes"),
    ("[[stages]]\n[stages.quant]\nmethod = \"auto\"\nschemes = [\"int4\"]\n", "stages[0].quant.schemes"),
    ("[[stages]]\n[stages.quant]\nmethod = \"auto\"\nbackend = \"openvino\"\nschemes = [\"ptq_dynamic\"]\n",
     "stages[0].quant.schemes"),
    ("[[stages]]\n[stages.quant]\nop_types = [\"matmul\"]\n", "stages[0].quant.op_types"),
    ("[[stages]]\n[stages.quant]\n[stages.quant.calibration]\nmax_samples = 0\n",
     "stages[0].quant.calibration.max_samples"),
])
def test_bad_recipe_names_the_field(tmp_path: Path, body: str, field: str) -> None:
    with pytest.raises(RecipeError) as err:
        load_recipe(_write(tmp_path, body))
    assert field in str(err.value) and str(tmp_path) in str(err.value)
    assert isinstance(err.value, ValueError)


def test_direct_construction_is_validated() -> None:
    with pytest.raises(RecipeError, match=r"ratio = 1.5: expected a number with 0 <= ratio < 1"):
        PruneConfig(ratio=1.5)
    with pytest.raises(RecipeError, match="temperature"):
        DistillConfig(temperature=-0.5)
    with pytest.raises(RecipeError, match="unknown|one of"):
        QuantConfig(method="fp4")
    with pytest.raises(RecipeError, match="targets"):
        PruneConfig(targets=("layers",))
    with pytest.raises(RecipeError, match="version"):
        Recipe(name="x", version=2, stages=(QuantConfig(),))
    with pytest.raises(RecipeError, match="name"):
        Recipe(name="bad name!", stages=(QuantConfig(),))
    cfg = QuantConfig(exclude=["Softmax"])  # lists become tuples: frozen and hashable
    assert cfg.exclude == ("Softmax",) and hash(cfg)


def test_missing_recipe_lists_shipped(tmp_path: Path) -> None:
    with pytest.raises(RecipeError, match="int8-ptq.toml"):
        load_recipe(tmp_path / "nope.toml")
    (tmp_path / "bad.toml").write_text("name = ")
    with pytest.raises(RecipeError, match="not valid TOML"):
        load_recipe(tmp_path / "bad.toml")


def test_every_stage_type_has_a_handler() -> None:
    from edgevlp.compress.recipe import STAGE_KEYS
    from edgevlp.compress.stages import HANDLERS, apply_stage

    assert set(HANDLERS) == set(STAGE_KEYS.values())
    with pytest.raises(NotAvailableYet, match="no handler"):
        apply_stage(object(), object())  # type: ignore[arg-type]


def test_recipe_import_is_torch_free() -> None:
    code = ("import sys\nfrom edgevlp.compress import load_recipe\nload_recipe('recipes/int8-ptq.toml')\n"
            "print(sorted(m for m in ('torch', 'transformers', 'onnx', 'onnxruntime') if m in sys.modules))")
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         cwd=Path(__file__).resolve().parent.parent)
    assert res.returncode == 0, res.stderr
    assert res.stdout.strip() == "[]"
