"""The lean runtime against the torch + transformers path, measured in one run on this machine.

1. Cold start: a fresh process imports and loads the model (runtime: ``edgevlp.runtime.load(bundle)``;
   reference: ``import torch, transformers`` + ``from_pretrained`` + image processor). Wall time and peak
   RSS, median of ``--cold-runs`` processes each.
2. Caption end to end on a 1080p BGR frame, same model, greedy, ``--max-new-tokens``: runtime
   ``Captioner.caption(frame)`` (C++ preprocessing + onnxruntime) against HF image processor +
   ``model.generate``. Median of ``--repeat`` calls; ms per generated token too, in case eos stops the two
   at different lengths (their preprocessing differs: cv2 vs PIL resize).

Targets (runtime issue): caption >= 2x faster than transformers; import + load <= 1/5 the time and
<= 1/3 the RSS. Run: ``.venv/bin/python benchmarks/runtime.py [--model demo-blip]``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import cv2
import numpy as np

RUNTIME_COLD = """
import sys, time
t = time.perf_counter()
import edgevlp.runtime as rt
model = rt.load(sys.argv[1])
hwm = [l for l in open("/proc/self/status") if l.startswith("VmHWM")][0].split()[1]
print(time.perf_counter() - t, hwm)
"""
TORCH_COLD = """
import sys, time
t = time.perf_counter()
import torch, transformers
from transformers import AutoImageProcessor, AutoTokenizer, BlipForConditionalGeneration
model = BlipForConditionalGeneration.from_pretrained(sys.argv[1]).eval()
processor = AutoImageProcessor.from_pretrained(sys.argv[1])
tokenizer = AutoTokenizer.from_pretrained(sys.argv[1])
hwm = [l for l in open("/proc/self/status") if l.startswith("VmHWM")][0].split()[1]
print(time.perf_counter() - t, hwm)
"""


def cold(code: str, arg: str, runs: int) -> tuple[float, float]:
    times, rss = [], []
    for _ in range(runs):
        out = subprocess.run([sys.executable, "-c", code, arg], capture_output=True, text=True, check=True,
                             env={**os.environ, "HF_HUB_OFFLINE": "1"}).stdout.split()
        times.append(float(out[0]))
        rss.append(float(out[1]) / 1024)  # VmHWM (peak RSS of this process, reset by exec), KiB
    return statistics.median(times), statistics.median(rss)


def median_ms(fn, repeat: int) -> float:  # type: ignore[no-untyped-def]
    fn()
    samples = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        samples.append((time.perf_counter() - t0) * 1e3)
    return statistics.median(samples)


def prepare(model: str, work: Path) -> tuple[Path, Path]:
    from edgevlp.export import export_model
    from edgevlp.models import ZOO_DIR, tiny_adapter

    if model == "tiny":
        model_dir = work / "tiny-blip"
        tiny_adapter("BlipForConditionalGeneration").save_pretrained(model_dir)
    else:
        model_dir = Path(model) if Path(model).is_dir() else ZOO_DIR / model
    bundle = work / "bundle"
    export_model(model_dir, bundle, target="cpu", progress=False)
    return model_dir, bundle


def main() -> int:
    from edgevlp.models import ZOO_DIR

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    default = "demo-blip" if (ZOO_DIR / "demo-blip").is_dir() else "tiny"
    parser.add_argument("--model", default=default, help="BLIP model dir, zoo name, or 'tiny' (random)")
    parser.add_argument("--repeat", type=int, default=10)
    parser.add_argument("--cold-runs", type=int, default=3)
    parser.add_argument("--max-new-tokens", type=int, default=20)
    parser.add_argument("--json", help="also write the figures here")
    args = parser.parse_args()

    import torch
    from skimage import data
    from transformers import AutoImageProcessor, BlipForConditionalGeneration

    import edgevlp.runtime as rt

    torch.set_num_threads(os.cpu_count() or 1)
    with tempfile.TemporaryDirectory() as tmp:
        model_dir, bundle = prepare(args.model, Path(tmp))
        rt_cold = cold(RUNTIME_COLD, str(bundle), args.cold_runs)
        hf_cold = cold(TORCH_COLD, str(model_dir), args.cold_runs)

        frame = cv2.resize(np.ascontiguousarray(data.astronaut()[..., ::-1]), (1920, 1080))
        captioner = rt.load(bundle)
        model = BlipForConditionalGeneration.from_pretrained(model_dir).eval()
        processor = AutoImageProcessor.from_pretrained(model_dir)
        n = args.max_new_tokens

        def hf_caption() -> list[int]:
            rgb = frame[..., ::-1]
            with torch.no_grad():
                pixels = processor(images=rgb, return_tensors="pt")["pixel_values"]
                return model.generate(pixel_values=pixels, max_new_tokens=n, do_sample=False)[0, 1:].tolist()

        rt_tokens = captioner.caption(frame, max_new_tokens=n).token_ids
        hf_tokens = hf_caption()
        rt_ms = median_ms(lambda: captioner.caption(frame, max_new_tokens=n), args.repeat)
        hf_ms = median_ms(hf_caption, args.repeat)

    rows = {
        "cold start time (s)": (rt_cold[0], hf_cold[0]),
        "cold start peak RSS (MiB)": (rt_cold[1], hf_cold[1]),
        "caption end-to-end (ms)": (rt_ms, hf_ms),
        "caption per token (ms)": (rt_ms / max(len(rt_tokens), 1), hf_ms / max(len(hf_tokens), 1)),
    }
    print(f"machine: {platform.machine()} {os.cpu_count()} cpus, {platform.processor() or platform.platform()}")
    print(f"model: {args.model} (BLIP), bundle target cpu fp32, {n} new tokens max; "
          f"tokens generated: runtime {len(rt_tokens)}, transformers {len(hf_tokens)}")
    print(f"{'measure':<28}{'edgevlp runtime':>17}{'torch+transformers':>20}{'ratio':>10}")
    for name, (ours, theirs) in rows.items():
        print(f"{name:<28}{ours:>17.2f}{theirs:>20.2f}{theirs / ours:>9.2f}x")
    print("targets: caption >= 2x, cold-start time >= 5x, RSS >= 3x (ratio = theirs / ours)")
    if args.json:
        Path(args.json).write_text(json.dumps({k: {"edgevlp": a, "transformers": b, "ratio": b / a}
                                               for k, (a, b) in rows.items()}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
