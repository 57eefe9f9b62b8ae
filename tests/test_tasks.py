"""The task registry, the typed compression record, the detector's manifest-driven post-processing and
distillation of every detector family (issue 14)."""

from __future__ import annotations

import dataclasses
import json
import shutil
import subprocess
import sys

import numpy as np
import pytest
import torch

from edgevlp.errors import BundleError, EdgeVLPError, InputError

BLIP, OWL, OWL2 = "BlipForConditionalGeneration", "OwlViTForObjectDetection", "Owlv2ForObjectDetection"


# ------------------------------------------------------------------------------------ registry
def test_every_adapter_task_is_registered_and_names_its_runtime_class() -> None:
    from edgevlp.models import tiny_adapter
    from edgevlp.models.registry import known_architectures
    from edgevlp.runtime import Assistant, Captioner, Detector
    from edgevlp.tasks import TASKS, Task, get_task

    assert set(TASKS) == {"caption", "detect", "vqa"}
    runtime = {"caption": Captioner, "detect": Detector, "vqa": Assistant}
    for name in TASKS:
        task = get_task(name)
        assert isinstance(task, Task) and task.name == name
        assert task.runtime_type() is runtime[name]
        assert task.metric in task.card_metrics
    for arch in known_architectures():
        adapter = tiny_adapter(arch)
        assert get_task(adapter.task).name == adapter.task
        roles = [g.role for g in get_task(adapter.task).graphs(adapter)]
        assert roles[0] == ("image_encoder" if adapter.task == "detect" else "vision_encoder"), (arch, roles)


def test_unknown_task_lists_the_known_ones() -> None:
    from edgevlp.tasks import get_task

    with pytest.raises(InputError, match=r"unknown task 'segment'; edgevlp knows caption, detect, vqa") as err:
        get_task("segment")
    assert isinstance(err.value, EdgeVLPError)


def test_task_modules_import_without_torch() -> None:
    """The runtime loader resolves its class through the registry: every task module stays lean."""
    code = ("import sys; from edgevlp.tasks import TASKS, get_task; [get_task(t).runtime_type() for t in TASKS]; "
            "bad = [m for m in ('torch', 'transformers') if m in sys.modules]; assert not bad, bad")
    subprocess.run([sys.executable, "-c", code], check=True)


# ---------------------------------------------------------------------------- compression record
def _record():
    from edgevlp.compress.record import CompressionRecord

    return CompressionRecord(precision="int8", graphs={"vision_encoder": "vision_encoder.int8.onnx"},
                             schemes={"vision_encoder": "ptq_static"},
                             parity={"min_cosine": 0.99, "max_rel_diff": 0.1, "measured": {"vision_encoder": 0.999}},
                             recipe={"name": "tiny-int8", "stages": []})


def test_compression_record_round_trip(tmp_path) -> None:
    from edgevlp.compress.record import FORMAT_VERSION, CompressionRecord, parity_tolerance, read_compression

    record = _record()
    assert CompressionRecord.from_dict(record.to_dict()) == record
    path = record.write(tmp_path)
    data = json.loads(path.read_text())
    assert data["format"] == "edgevlp-compressed" and data["format_version"] == FORMAT_VERSION
    assert "openvino_graphs" not in data
    assert read_compression(tmp_path) == record and CompressionRecord.read(tmp_path) == record
    assert parity_tolerance(record) == {"min_cosine": 0.99, "max_rel_diff": 0.1}
    with pytest.raises(dataclasses.FrozenInstanceError):
        record.precision = None  # type: ignore[misc]
    ov = dataclasses.replace(record, openvino_graphs={"text_decoder": "text_decoder.int8.xml"})
    assert CompressionRecord.from_dict(ov.to_dict()).openvino_graphs == {"text_decoder": "text_decoder.int8.xml"}


def test_compression_record_rejects_wrong_version_and_missing_keys(tmp_path) -> None:
    from edgevlp.compress.record import CompressionRecord

    data = _record().to_dict()
    for version, message in ((3, "format_version 3; this edgevlp reads 1, 2: upgrade edgevlp"),
                             (0, "format_version 0; this edgevlp reads 1, 2: re-run `edgevlp compress`"),
                             ("2", "format_version '2'")):
        with pytest.raises(InputError, match=message):
            CompressionRecord.from_dict({**data, "format_version": version})
    for key in ("precision", "graphs", "base_model", "recipe"):
        partial = {k: v for k, v in data.items() if k != key}
        (tmp_path / "compression.json").write_text(json.dumps(partial))
        with pytest.raises(InputError, match=rf"compression.json \(format_version 2\) misses '{key}'; re-run"):
            CompressionRecord.read(tmp_path)
    with pytest.raises(InputError, match="precision 'fp8' is not one of"):
        CompressionRecord.from_dict({**data, "precision": "fp8"})
    with pytest.raises(InputError, match="graphs must map graph roles to names"):
        CompressionRecord.from_dict({**data, "graphs": ["vision_encoder.int8.onnx"]})


# --------------------------------------------------------------------- detector: head and boxes
def test_detector_reads_box_format_and_class_head_from_the_manifest(exported, photos_bgr, tmp_path) -> None:
    from edgevlp.bundle import read_manifest
    from edgevlp.runtime import Detector, load

    bundle = exported(OWL2)
    detector = load(bundle)
    assert (detector.box_format, detector.class_head) == ("cxcywh_normalized", "normalized_dot_shift_scale")
    detector.set_prompts(["red circle", "cat"])
    pixels = detector.preprocess(photos_bgr["astronaut"])
    heads = detector.heads(pixels)
    reference = detector.postprocess(heads, detector._require_prompts(), lambda b: b, threshold=0.0)
    assert len(reference) > 0

    # The same heads with boxes given as xyxy: a manifest that says so decodes them to the same boxes.
    manifest = read_manifest(bundle)
    manifest = dataclasses.replace(manifest, detection={**manifest.detection, "box_format": "xyxy_normalized"})
    xyxy = Detector(manifest, {"image_encoder": detector.image, "text_encoder": detector.text}, detector.tokenizer)
    xyxy.set_prompts(["red circle", "cat"])
    cx, cy, w, h = np.moveaxis(heads["pred_boxes"], -1, 0)
    as_xyxy = {**heads, "pred_boxes": np.stack([cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2], -1)}
    got = xyxy.postprocess(as_xyxy, xyxy._require_prompts(), lambda b: b, threshold=0.0)
    np.testing.assert_allclose(got.boxes_xyxy, reference.boxes_xyxy, atol=1e-4)
    np.testing.assert_array_equal(got.labels, reference.labels)
    # ... and it does follow the manifest: the original cxcywh heads now decode to other boxes.
    other = xyxy.postprocess(heads, xyxy._require_prompts(), lambda b: b, threshold=0.0)
    assert other.boxes_xyxy.shape != reference.boxes_xyxy.shape or \
        not np.allclose(other.boxes_xyxy, reference.boxes_xyxy, atol=1e-3)

    # An unknown box format or class head is refused when the bundle opens, saying what and how to fix.
    for key, value in (("box_format", "yolo_grid"), ("class_head", "softmax")):
        copy = tmp_path / key
        shutil.copytree(bundle, copy)
        data = json.loads((copy / "manifest.json").read_text())
        data["detection"][key] = value
        (copy / "manifest.json").write_text(json.dumps(data))
        with pytest.raises(BundleError, match=rf"detection.{key} = '{value}'.*re-export the bundle"):
            load(copy, verify=False)


def test_boxes_to_xyxy_rejects_an_unknown_format() -> None:
    from edgevlp.runtime.detector import boxes_to_xyxy

    boxes = np.array([[0.1, 0.2, 0.5, 0.6]])
    np.testing.assert_allclose(boxes_to_xyxy(boxes, "xyxy_normalized", (10, 20)), [[2.0, 2.0, 10.0, 6.0]])
    with pytest.raises(InputError, match="unknown box format 'ltrb'; known: cxcywh_normalized, xyxy_normalized"):
        boxes_to_xyxy(boxes, "ltrb", (10, 20))


# ----------------------------------------------------------------------------------- distillation
def test_owlv2_distils_with_the_set_loss(tmp_path) -> None:
    """OWLv2 is distilled like OWL-ViT: on shapes: data the set loss (task_weight > 0) applies, and the
    training loop changes the weights."""
    from edgevlp import _training
    from edgevlp.compress.distill import DistillTraining, distill_loss, teacher_copy
    from edgevlp.compress.recipe import DistillConfig
    from edgevlp.models import tiny_adapter
    from edgevlp.tasks.losses import QUERIES

    torch.manual_seed(0)
    student = tiny_adapter(OWL2)
    assert student.family == "owlv2"
    teacher = teacher_copy(student)
    with torch.no_grad():  # a student that differs from its teacher
        for p in student.model.parameters():
            p.add_(0.05 * torch.randn_like(p))
    before = {k: v.clone() for k, v in student.model.state_dict().items()}
    cfg = DistillConfig(steps=4, lr=3e-3, batch_size=2, task_weight=1.0, hidden_weight=0.5)
    job = DistillTraining(student, teacher, cfg, "shapes:train")
    assert job.prompts() == list(QUERIES)
    with torch.no_grad():
        _, terms = distill_loss(job, job.batch(0, 2, 0))
    assert terms["task"] > 0 and terms["kd"] > 0 and terms["hidden"] > 0
    settings = _training.TrainSettings(name="distill-owlv2", steps=cfg.steps, batch_size=cfg.batch_size,
                                       lr=cfg.lr, warmup=1, eval_every=cfg.steps, eval_n=2,
                                       checkpoint_every=cfg.steps, threads=1)
    result = _training.run(job, settings, tmp_path, progress=False)
    assert result.steps_done == cfg.steps and all(np.isfinite(r["loss"]) and r["task"] > 0 for r in result.log)
    changed = [k for k, v in student.model.state_dict().items() if not torch.equal(v, before[k])]
    assert any(k.startswith("owlv2.vision_model.") for k in changed)
    assert any(k.startswith(("class_head.", "box_head.")) for k in changed)


def test_task_loss_without_box_labels_is_refused(tmp_path, photos_bgr) -> None:
    import cv2

    from edgevlp.compress.distill import DistillTraining, teacher_copy
    from edgevlp.compress.recipe import DistillConfig
    from edgevlp.models import tiny_adapter

    cv2.imwrite(str(tmp_path / "a.png"), photos_bgr["astronaut"])
    student = tiny_adapter(OWL2)
    with pytest.raises(InputError, match="task_weight > 0 needs labels.*detect task of owlv2.*task_weight = 0"):
        DistillTraining(student, teacher_copy(student), DistillConfig(steps=2, task_weight=1.0), str(tmp_path))
