"""`make demo`: compress -> export -> camera app (headless) on a generated clip, with the demo models.

1. compress demo-blip and demo-owlvit with the flagship recipe (prune30-kd-int8: 30 % structured pruning,
   distillation, static INT8 with FP32 fallback). Its training stages come from the stage cache the demo
   zoo ships (made by the same recipe on the same models), the INT8 stage runs; results are cached in
   demo-out/ (keyed by the recipe file's hash) so a second `make demo` skips this step;
2. export both for `--target cpu`;
3. write a clip from the shape-scenes generator (val split) and a few real photos (scikit-image);
4. run the camera app headless on it (captioner + detector together), prompted with the phrases of the
   objects the clip draws, and print where the annotated MP4 and the JSONL log are, the measured FPS,
   three sample captions and how often the app is right on the shape frames: the top detection on a
   drawn object (IoU >= 0.5) with its phrase, and the caption naming every object's colour and shape
   (as shown on the frame, and on the frame it was made from; the clip plays at its own 15 fps);
5. export demo-smolvlm (FP32) and run the app again with it beside the detector, asking "how many shapes
   are there?" about every frame: print sample answers and how often the answer is right on the shape
   frames.
Without the shipped demo models (edgevlp/zoo/), tiny random models are used and the demo says so.
"""

from __future__ import annotations

import hashlib
import json
import sys
import time
from pathlib import Path

import cv2
import numpy as np

OUT = Path("demo-out")
RECIPES = Path("recipes")
FLAGSHIP = RECIPES / "prune30-kd-int8.toml"
#: each scene is held one second of a 15 fps clip, played at that rate (``--fps-limit``) as a live camera
#: delivers it: a caption lags its frame by the time it takes, which a clip read as fast as the app can
#: (40+ FPS, 5 frames a scene) turned into the previous scene's caption on most frames
SCENE_SIZE, CLIP_SIZE, CLIP_FPS, HOLD = 224, (640, 480), 15, 15


def say(text: str) -> None:
    print(f"\n== {text}", flush=True)


def models() -> dict[str, str]:
    from edgevlp.models import ZOO_DIR, tiny_adapter

    names = {"caption": "demo-blip", "detect": "demo-owlvit", "vqa": "demo-smolvlm"}
    if all((ZOO_DIR / n).is_dir() for n in names.values()):
        return names
    say("the demo models are not in edgevlp/zoo/: using tiny RANDOM models (meaningless captions)")
    out = {}
    for task, arch in (("caption", "BlipForConditionalGeneration"), ("detect", "OwlViTForObjectDetection"),
                       ("vqa", "Idefics3ForConditionalGeneration")):
        path = OUT / f"tiny-{task}"
        if not (path / "config.json").is_file():
            tiny_adapter(arch).save_pretrained(path)
        out[task] = str(path)
    return out


def compress(cli, model: str) -> tuple[str, str]:  # type: ignore[no-untyped-def]
    """Compressed model dir (cached in demo-out/, keyed by the recipe's hash) and the recipe used.

    The flagship's training stages (prune + distill, ~8 min per model here) come from the stage cache
    when this model was compressed with the same stages before - the demo zoo ships that result for
    demo-blip and demo-owlvit - so a fresh clone only runs the INT8 stage (the report says which)."""
    recipe = FLAGSHIP
    key = hashlib.sha256(recipe.read_bytes()).hexdigest()[:10]
    out = OUT / "compressed" / f"{Path(model).name}-{recipe.stem}-{key}"
    if (out / "compression.json").is_file():
        print(f"reusing {out} (cached result of {recipe.name})")
        return str(out), recipe.name
    from edgevlp.compress import compress_model

    t0 = time.perf_counter()
    report = compress_model(model, recipe, out, force=True)
    reused = (report.get("stage_cache") or {}).get("reused")
    how = f"prune + distill reused from the stage cache ({reused}), INT8 run now" if reused else "all stages run now"
    print(f"compressed {model} with {recipe.name} in {time.perf_counter() - t0:.0f}s ({how}) -> {out}")
    return str(out), recipe.name


def export(cli, model: str, name: str, precision: str = "int8") -> Path:  # type: ignore[no-untyped-def]
    out = OUT / "bundles" / name
    code = cli(["export", model, "-o", str(out), "--target", "cpu", "--precision", precision, "--force"])
    if code != 0:
        raise SystemExit(code)
    return out


def clip_scenes(n: int = 24) -> list:  # type: ignore[type-arg]
    """The shape scenes (val split) the clip shows first, in order."""
    from edgevlp.data import dataset

    return list(dataset("val", n, size=SCENE_SIZE))


def make_clip(path: Path, scenes: list, size: tuple[int, int] = CLIP_SIZE, hold: int = HOLD) -> int:  # type: ignore[type-arg]
    """``scenes`` and three real photos, each held for ``hold`` frames, as an MP4."""
    from skimage import data as photos

    frames = [np.ascontiguousarray(s.image[..., ::-1]) for s in scenes]
    frames += [np.ascontiguousarray(getattr(photos, n)()[..., ::-1]) for n in ("astronaut", "coffee", "chelsea")]
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), CLIP_FPS, size)
    count = 0
    for frame in frames:
        resized = cv2.resize(frame, size, interpolation=cv2.INTER_AREA)
        for _ in range(hold):
            writer.write(resized)
            count += 1
    writer.release()
    return count


def right_on_scenes(lines: list[dict], scenes: list, hold: int = HOLD) -> dict[str, float]:  # type: ignore[type-arg]
    """On the logged shape-scene frames: the fraction whose top detection is right (IoU >= 0.5 with a
    drawn object, its phrase), whose caption as shown names every object's colour-shape pair (no other),
    the same for the caption judged on the frame it was made from, and the captions' mean lag in frames."""
    from edgevlp.data import parse_caption
    from edgevlp.eval.metrics import top_detection_right

    sx, sy = CLIP_SIZE[0] / SCENE_SIZE, CLIP_SIZE[1] / SCENE_SIZE
    boxes = shown = made = lag = frames = 0
    for line in lines:
        index = line["source_frame"] // hold
        if index >= len(scenes):
            continue  # the photos: nothing drawn to check against
        objects = [([o.box_xyxy[0] * sx, o.box_xyxy[1] * sy, o.box_xyxy[2] * sx, o.box_xyxy[3] * sy], o.phrase)
                   for o in scenes[index].objects]
        frames += 1
        boxes += top_detection_right(line.get("detections") or [], objects)
        said = {(m.colour, m.shape) for m in parse_caption(line.get("caption") or "").mentions}
        shown += said == _pairs(scenes, index)
        source = line.get("caption_frame", line["source_frame"])
        made += said == _pairs(scenes, source // hold)
        lag += line["source_frame"] - source
    n = max(frames, 1)
    return {"frames": frames, "boxes": boxes / n, "captions": shown / n, "captions_made": made / n,
            "lag": lag / n}


def _pairs(scenes: list, index: int) -> set[tuple[str, str]]:  # type: ignore[type-arg]
    return {(o.colour, o.shape) for o in scenes[index].objects} if index < len(scenes) else set()


QUESTION = "how many shapes are there?"


def answers_right(lines: list[dict], scenes: list, hold: int = HOLD) -> tuple[float, float, int]:  # type: ignore[type-arg]
    """Fractions of the logged shape-scene frames whose answer to :data:`QUESTION` is the object count
    of the frame shown, and of the frame the answer was made from."""
    from edgevlp.data.questions import NUMBER_WORDS, normalize_answer

    shown = made = frames = 0
    for line in lines:
        index = line["source_frame"] // hold
        if index >= len(scenes) or not line.get("caption"):
            continue
        frames += 1
        answer = normalize_answer(line["caption"])
        source = line.get("caption_frame", line["source_frame"]) // hold
        shown += answer == NUMBER_WORDS[len(scenes[index].objects)]
        made += source < len(scenes) and answer == NUMBER_WORDS[len(scenes[source].objects)]
    return shown / max(frames, 1), made / max(frames, 1), frames


def ask_demo(cli, assistant: Path, detector: Path, clip: Path, prompts: list[str], scenes: list) -> int:  # type: ignore[no-untyped-def,type-arg]
    say(f"camera app, headless: assistant + detector on the clip, asking {QUESTION!r} about every frame")
    run_dir = OUT / "run-ask"
    code = cli(["run", str(assistant), str(detector), "--source", str(clip), "--headless", "--output",
                str(run_dir), "--prompts", ", ".join(prompts), "--ask", QUESTION, "--ask-every", "0",
                "--fps-limit", str(CLIP_FPS), "--force"])
    if code != 0:
        return code
    summary = json.loads((run_dir / "summary.json").read_text())
    lines = [json.loads(line) for line in (run_dir / "log.jsonl").read_text().splitlines()]
    print(f"measured: {summary.get('fps', 0):.1f} FPS over {summary.get('frames')} frames; per-frame log: "
          f"{(run_dir / 'log.jsonl').resolve()}")
    shown = set()
    for line in lines:
        index = line["source_frame"] // HOLD
        if index < len(scenes) and line.get("caption") and index not in shown and len(shown) < 3:
            shown.add(index)
            print(f"  frame {line['source_frame']}: {', '.join(o.phrase for o in scenes[index].objects)} "
                  f"-> {QUESTION!r} {line['caption']!r}")
    shown, made, frames = answers_right(lines, scenes)
    print(f"answer right on {shown:.0%} of the {frames} shape-scene frames as shown (the number of drawn "
          f"objects), {made:.0%} on the frame it was made from")
    return 0


def main() -> int:
    from edgevlp.cli import main as cli

    t_start = time.perf_counter()
    OUT.mkdir(exist_ok=True)
    names = models()
    bundles = {}
    for task, model in names.items():
        if task == "vqa":
            continue  # exported as is, below
        say(f"compress {model}")
        compressed, recipe = compress(cli, model)
        say(f"export {compressed} -> cpu bundle (recipe {recipe})")
        bundles[task] = export(cli, compressed, f"{Path(model).name}-cpu-int8")
    say("make a clip: shape scenes (val split) + 3 real photos")
    clip = OUT / "clip.mp4"
    scenes = clip_scenes()
    n = make_clip(clip, scenes)
    print(f"{clip}: {n} frames, {CLIP_SIZE[0]}x{CLIP_SIZE[1]}")
    prompts = sorted({o.phrase for s in scenes for o in s.objects})
    say(f"camera app, headless: captioner + detector on the clip, prompted with the {len(prompts)} phrases "
        "of the objects it draws")
    run_dir = OUT / "run"
    code = cli(["run", str(bundles["caption"]), str(bundles["detect"]), "--source", str(clip), "--headless",
                "--output", str(run_dir), "--prompts", ", ".join(prompts), "--caption-every", "0",
                "--fps-limit", str(CLIP_FPS), "--force"])
    if code != 0:
        return code
    summary = json.loads((run_dir / "summary.json").read_text())
    lines = [json.loads(line) for line in (run_dir / "log.jsonl").read_text().splitlines()]
    captions = []
    for line in lines:
        if line.get("caption") and line["caption"] not in captions:
            captions.append(line["caption"])
    say("result")
    print(f"annotated video: {(run_dir / 'annotated.mp4').resolve()}")
    print(f"per-frame log:   {(run_dir / 'log.jsonl').resolve()}  ({len(lines)} lines)")
    print(f"measured: {summary.get('fps', 0):.1f} FPS over {summary.get('frames')} frames")
    print("sample captions:")
    for text in captions[:: max(1, len(captions) // 3)][:3]:
        print(f"  - {text}")
    right = right_on_scenes(lines, scenes)
    print(f"right on the {right['frames']} shape-scene frames: top detection {right['boxes']:.0%} (on a drawn "
          f"object, IoU >= 0.5, its phrase); caption as shown {right['captions']:.0%} (every object's colour "
          f"and shape, no other), {right['captions_made']:.0%} on the frame it was made from (it lags "
          f"{right['lag']:.1f} frames on average)")
    say(f"export {names['vqa']} -> cpu bundle (FP32)")
    assistant = export(cli, names["vqa"], f"{Path(names['vqa']).name}-cpu-fp32", precision="fp32")
    code = ask_demo(cli, assistant, bundles["detect"], clip, prompts, scenes)
    if code != 0:
        return code
    print(f"\ndemo finished in {time.perf_counter() - t_start:.0f}s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
