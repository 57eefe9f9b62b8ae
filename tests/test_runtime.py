"""Runtime: captioning and detection from bundles on real frames, HF post-processing parity, bad input."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch

from edgevlp.bundle import read_manifest
from edgevlp.errors import BackendUnavailableError, BundleError, InputError
from edgevlp.eval.metrics import box_iou
from edgevlp.models import load_model
from edgevlp.runtime import Caption, Captioner, Detections, Detector, load

BLIP, OWL, OWL2 = "BlipForConditionalGeneration", "OwlViTForObjectDetection", "Owlv2ForObjectDetection"


def test_caption_a_real_frame(exported, photos_bgr) -> None:
    captioner = load(exported(BLIP))
    assert isinstance(captioner, Captioner) and captioner.backend == "onnxruntime"
    frame = photos_bgr["chelsea"]
    result = captioner.caption(frame, max_new_tokens=10)
    assert isinstance(result, Caption)
    assert 1 <= len(result.token_ids) <= 10 and isinstance(result.text, str)
    assert set(result.timings) == {"preprocess", "encode", "decode", "postprocess"}
    # preprocess() is exactly what the vision graph sees: captioning its output gives the same ids.
    ids = captioner.generate(captioner.preprocess(frame), max_new_tokens=10)[0].tolist()
    assert ids[: len(result.token_ids)] == result.token_ids
    other = captioner.caption(photos_bgr["astronaut"], max_new_tokens=10)
    assert other.token_ids != result.token_ids


@pytest.mark.parametrize("arch", [OWL, OWL2])
def test_detector_matches_hf_post_processing(exported, tiny_model_dir, photos_rgb, arch) -> None:
    from transformers import AutoImageProcessor

    detector = load(exported(arch))
    assert isinstance(detector, Detector)
    model_dir = tiny_model_dir(arch)
    adapter = load_model(model_dir)
    processor = AutoImageProcessor.from_pretrained(model_dir)
    for prompts in (["red circle", "blue square"], ["cat", "a photo of a dog", "green star"]):
        detector.set_prompts(prompts)
        for name in ("astronaut", "coffee"):
            pixels = processor(images=photos_rgb[name], return_tensors="pt")["pixel_values"]
            text = adapter.encode_prompts(prompts)
            with torch.no_grad():
                outputs = adapter.model(pixel_values=pixels, **text)
            target = (500, 640)  # (height, width) the boxes are scaled to
            probs = torch.sigmoid(outputs.logits.max(-1).values)[0].numpy()
            threshold = _threshold_in_widest_gap(probs)
            ref = processor.post_process_object_detection(outputs, threshold=threshold,
                                                          target_sizes=[target])[0]
            # OWLv2 pads to a square before resizing: HF scales both axes by the longer side.
            sx, sy = (max(target), max(target)) if arch == OWL2 else (target[1], target[0])
            scale = np.array([sx / pixels.shape[3], sy / pixels.shape[2]] * 2)
            got = detector.postprocess(detector.heads(pixels.numpy()), detector._require_prompts(),
                                       lambda b: b * scale, threshold=threshold, nms_iou=1.0)
            order = np.argsort(-ref["scores"].numpy(), kind="stable")
            assert len(got) == len(order) > 0
            np.testing.assert_allclose(got.scores, ref["scores"].numpy()[order], atol=1e-4)
            np.testing.assert_array_equal(got.labels, ref["labels"].numpy()[order])
            np.testing.assert_allclose(got.boxes_xyxy, ref["boxes"].numpy()[order], atol=1e-2)


def test_detect_a_real_frame_maps_boxes_to_the_frame(exported, photos_bgr) -> None:
    detector = load(exported(OWL2))
    detector.set_prompts(["red circle", "cat"])
    frame = np.ascontiguousarray(photos_bgr["astronaut"][:300, :480])  # non-square: letterbox/pad
    result = detector.detect(frame, threshold=0.0, nms_iou=0.5)
    assert isinstance(result, Detections) and len(result) > 0
    h, w = frame.shape[:2]
    assert (result.boxes_xyxy[:, [0, 2]] <= w + 1e-3).all() and (result.boxes_xyxy[:, [1, 3]] <= h + 1e-3).all()
    assert (result.boxes_xyxy >= 0).all() and (np.diff(result.scores) <= 0).all()
    assert result.label_names == ["red circle", "cat"] and set(result.labels) <= {0, 1}
    assert set(result.timings) == {"preprocess", "encode", "postprocess"}
    for label in set(result.labels.tolist()):  # per-class NMS: no two kept boxes overlap > 0.5
        boxes = result.boxes_xyxy[result.labels == label]
        for i in range(len(boxes)):
            for j in range(i + 1, len(boxes)):
                assert box_iou(boxes[i], boxes[j]) <= 0.5 + 1e-6


def _threshold_in_widest_gap(scores: np.ndarray) -> float:
    """A threshold keeping ~25-75 % of the scores, far from any score (exported and source scores
    differ by ~1e-6, so a threshold near a score would flip it)."""
    s = np.sort(scores)
    lo, hi = len(s) // 4, 3 * len(s) // 4
    k = lo + int(np.argmax(np.diff(s[lo:hi + 1])))
    return float(s[k] + s[k + 1]) / 2


BAD_FRAMES = {
    "none": None,
    "empty": np.zeros((0, 0, 3), np.uint8),
    "grayscale": np.zeros((32, 32), np.uint8),
    "four_channels": np.zeros((32, 32, 4), np.uint8),
    "float": np.zeros((32, 32, 3), np.float32),
    "bool": np.zeros((32, 32, 3), bool),
    "five_d": np.zeros((1, 1, 32, 32, 3), np.uint8),
}


@pytest.mark.parametrize("name", BAD_FRAMES)
def test_bad_frames_raise_clear_errors(exported, name) -> None:
    captioner, detector = load(exported(BLIP)), load(exported(OWL))
    detector.set_prompts(["cat"])
    for call in (captioner.caption, detector.detect):
        with pytest.raises((InputError, TypeError, ValueError)) as info:
            call(BAD_FRAMES[name])
        assert "image" in str(info.value) or "frame" in str(info.value)


@pytest.mark.parametrize("prompts, needle", [
    ([], "empty"), (["cat", "  "], "blank"), ([b"\xff\xfe cat"], "UTF-8"), ("cat", "list"), ([3], "string"),
])
def test_bad_prompts(exported, prompts, needle) -> None:
    detector = load(exported(OWL))
    with pytest.raises(InputError, match=needle):
        detector.set_prompts(prompts)


def test_long_prompt_is_refused_not_truncated(exported) -> None:
    detector = load(exported(OWL))
    with pytest.raises(InputError, match="shorten"):
        detector.set_prompts([" ".join(["red circle"] * 40)])
    with pytest.raises(InputError, match="set_prompts"):
        detector.detect(np.zeros((32, 32, 3), np.uint8))


def test_backend_choice(exported, tmp_path) -> None:
    bundle = exported(BLIP)
    with pytest.raises(BackendUnavailableError, match="tensorrt"):
        load(bundle, backend="tensorrt")
    with pytest.raises(BackendUnavailableError, match="unknown backend"):
        load(bundle, backend="coreml")
    with pytest.raises(BackendUnavailableError, match="cannot open"):
        load(exported(BLIP, "openvino"), backend="onnxruntime")
    assert load(bundle, backend="openvino").backend == "openvino"  # OpenVINO also reads ONNX
    assert load(exported(BLIP, "jetson")).backend == "onnxruntime"  # no engines here: ORT fallback


def test_hash_verification_can_be_skipped_only_explicitly(exported, tmp_path) -> None:
    bundle = tmp_path / "b"
    shutil.copytree(exported(BLIP), bundle)
    manifest = json.loads((bundle / "manifest.json").read_text())
    manifest["files"]["vision_encoder.onnx"]["sha256"] = "0" * 64
    (bundle / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(BundleError, match="vision_encoder.onnx"):
        load(bundle)
    assert isinstance(load(bundle, verify=False), Captioner)
    assert read_manifest(bundle, verify=False).task == "caption"
