"""edgevlp bench on tiny bundles: the markdown table, bench.json and the Pareto plot, content checked."""

from __future__ import annotations

import json

import numpy as np
import pytest

from edgevlp.bench import run_bench
from edgevlp.bench.report import markdown_table, pareto_front
from edgevlp.bench.runner import BenchRow
from edgevlp.errors import InputError


def test_bench_writes_table_json_and_plot(exported, tmp_path) -> None:
    bundles = [str(exported("BlipForConditionalGeneration")), str(exported("OwlViTForObjectDetection"))]
    rows = run_bench(bundles, data="shapes:val", n=4, frames=3, max_new_tokens=5, output=tmp_path,
                     progress=False)
    engines = [(r.task, r.engine) for r in rows]
    assert engines == [("caption", "onnxruntime"), ("caption", "pytorch"), ("detect", "onnxruntime"),
                       ("detect", "pytorch")]
    report = json.loads((tmp_path / "bench.json").read_text())
    assert len(report["rows"]) == 4 and report["data"] == "shapes:val"
    for row in report["rows"]:
        total = row["latency_ms"]["total"]
        assert 0 < total["p50"] <= total["p90"]
        assert row["throughput_fps"] > 0 and row["metric_name"] in ("cider", "map50")
        assert row["metric"] is not None and row["metric"] >= 0
    ours = [r for r in report["rows"] if r["engine"] == "onnxruntime"]
    assert all(r["cold_start_s"] > 0 and r["peak_rss_mib"] > 10 and r["size_mb"] > 0 for r in ours)
    assert set(ours[0]["latency_ms"]) >= {"preprocess", "encode", "decode", "postprocess", "total"}
    table = (tmp_path / "bench.md").read_text()
    lines = [line for line in table.splitlines() if line.startswith("|")]
    assert len(lines) == 2 + 4 and all(line.count("|") == lines[0].count("|") for line in lines)
    assert "optimum" in table  # says why optimum's ORTModel is not in the table for BLIP / OWL-ViT
    png = (tmp_path / "pareto.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 10_000
    import cv2

    image = cv2.imdecode(np.frombuffer(png, np.uint8), cv2.IMREAD_COLOR)
    assert image.shape[1] > image.shape[0] > 200 and image.std() > 5  # two panels, not blank


def test_bench_vqa_bundle_beside_transformers(exported, tmp_path) -> None:
    """A VLM bundle's row (VQA accuracy, time to first token, decode per token) beside the transformers
    reference it was exported from, on the same frames and the same number of new tokens."""
    bundle = str(exported("SmolVLMForConditionalGeneration"))
    rows = run_bench([bundle], data="shapes:val", n=2, frames=2, max_new_tokens=4, output=tmp_path, progress=False)
    assert [(r.task, r.engine) for r in rows] == [("vqa", "onnxruntime"), ("vqa", "pytorch")]
    ours, ref = rows
    assert ours.model == ref.model and ours.metric_name == ref.metric_name == "vqa_accuracy"
    for row in rows:
        assert row.metric is not None and 0 <= row.metric <= 1 and row.tokens == 4
        assert 0 < row.latency_ms["total"]["p50"] and row.decode_ms_per_token and row.decode_ms_per_token > 0
    assert "transformers" in ref.name and "transformers" in (tmp_path / "bench.md").read_text()


def test_pareto_front() -> None:
    def row(metric: float, p50: float) -> BenchRow:
        return BenchRow("m", "caption", "e", "fp32", "cider", metric, {"total": {"p50": p50, "p90": p50}})

    a, b, c, d = row(1.0, 10), row(0.9, 5), row(0.8, 8), row(1.0, 20)
    assert pareto_front([a, b, c, d]) == [a, b]  # c is beaten by b, d by a
    assert "| m | e | fp32 | cider 1.000 |" in markdown_table([a])


def test_bench_needs_targets() -> None:
    with pytest.raises(InputError):
        run_bench([])
    with pytest.raises(InputError, match="backend"):
        run_bench(["demo-blip"], backends=("tensorflow",))


def test_bench_measures_optimum_ortmodel_for_vision_encoder_decoder(exported, tmp_path) -> None:
    """Where optimum exports the model (VisionEncoderDecoder), its ORTModel is measured in the same run
    on the same images and token budget, and every row gets a speed-up against it."""
    rows = run_bench([str(exported("VisionEncoderDecoderModel"))], data="shapes:val", n=4, frames=3,
                     max_new_tokens=5, output=tmp_path, progress=False)
    assert [r.engine for r in rows] == ["onnxruntime", "pytorch", "optimum-onnxruntime"]
    optimum = rows[2]
    assert optimum.metric is not None and optimum.p50 > 0 and optimum.name == "optimum ORTModel"
    table = (tmp_path / "bench.md").read_text()
    ours = next(line for line in table.splitlines() if "| onnxruntime |" in line)
    cells = [c.strip() for c in ours.split("|")]
    header = [c.strip() for c in next(line for line in table.splitlines() if line.startswith("| model")).split("|")]
    ratio = float(cells[header.index("vs optimum")].rstrip("x"))
    assert abs(ratio - optimum.p50 / rows[0].p50) < 0.01


def test_bench_random_weights_preset_is_latency_only(monkeypatch, tmp_path) -> None:
    """An arch: preset (here shrunk, with BLIP's real tokenizer and processor): no metric (n/a, evaluate
    never runs), real photos, exactly max_new_tokens per caption on both sides, decode ms per token, encode
    ms and peak RSS for the runtime and for transformers, and the speed-up against the same model's row."""
    from _presets import tiny_preset
    import importlib

    evaluate_module = importlib.import_module("edgevlp.eval.evaluate")
    from edgevlp.models import presets

    monkeypatch.setenv("EDGEVLP_CACHE", str(tmp_path / "cache"))
    preset = tiny_preset("blip-base")
    monkeypatch.setitem(presets.PRESETS, preset.name, preset)

    def no_metric(*args, **kwargs):
        raise AssertionError("evaluate must not run on random weights")

    monkeypatch.setattr(evaluate_module, "evaluate", no_metric)
    rows = run_bench([f"arch:{preset.name}"], backends=("onnxruntime",), precisions=("fp32",), frames=2,
                     max_new_tokens=4, output=tmp_path / "out", progress=False)
    assert [r.engine for r in rows] == ["onnxruntime", "pytorch"]
    for r in rows:
        assert r.random_weights and r.metric is None and r.model == f"arch:{preset.name}"
        assert "random weights: latency only" in r.note
        assert r.tokens == 4 and r.decode_ms_per_token is not None  # a value, not a timing assert
        assert r.latency_ms["encode"]["p50"] > 0 and r.peak_rss_mib > 10 and r.size_mb > 0
    table = (tmp_path / "out" / "bench.md").read_text()
    assert "| n/a |" in table and "decode ms/token" in table and "(t_k - t_1) / (k - 1)" in table
    header = [c.strip() for c in table.splitlines()[table.splitlines().index(
        next(line for line in table.splitlines() if line.startswith("| model")))].split("|")]
    ours = [c.strip() for c in next(line for line in table.splitlines() if "| onnxruntime |" in line).split("|")]
    assert ours[header.index("model")] == f"arch:{preset.name}"
    assert abs(float(ours[header.index("speed-up")].rstrip("x")) - rows[1].p50 / rows[0].p50) < 0.01
    per_token = rows[1].decode_ms_per_token / rows[0].decode_ms_per_token
    assert abs(float(ours[header.index("decode speed-up")].rstrip("x")) - per_token) < 0.01
    rss = rows[0].peak_rss_mib * 2**20 / (rows[0].size_mb * 1e6)
    assert abs(float(ours[header.index("RSS / size")]) - rss) < 0.01


def test_photo_frames_are_real_photos() -> None:
    from edgevlp.bench.runner import photo_frames

    frames = photo_frames(10)
    assert len(frames) == 10 and all(f.dtype == np.uint8 and f.ndim == 3 and f.shape[2] == 3 for f in frames)
    assert frames[0].shape == (512, 512, 3) and frames[0].std() > 20 and frames[8] is frames[0]


def test_bundles_of_a_preset_bench_against_the_preset(monkeypatch, tmp_path) -> None:
    """A bundle exported from an arch: preset (directly or from an `edgevlp compress` output of it) is
    grouped with the preset and its reference rows run the preset; a compressed dir's base model is used
    when the source is a compressed dir of a real model."""
    import edgevlp.models as models
    from edgevlp.bench.runner import _preset_name, _reference_source

    seen = []
    monkeypatch.setattr(models, "resolve_model_dir", lambda name: seen.append(name) or tmp_path / "preset")
    for preset in ("arch:blip-base", "blip-base"):
        assert _preset_name({"preset": preset}) == "arch:blip-base"
        assert _reference_source({"model": "/somewhere/compressed", "preset": preset}) == tmp_path / "preset"
    assert seen == ["arch:blip-base", "arch:blip-base"]
    compressed = tmp_path / "c"
    (compressed / "model").mkdir(parents=True)
    (compressed / "model" / "config.json").write_text("{}")
    (compressed / "compression.json").write_text('{"base_model": "model"}')
    assert _reference_source({"model": str(compressed)}) == compressed / "model"
    assert _reference_source({"model": str(tmp_path / "missing")}) is None
