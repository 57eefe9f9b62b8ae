"""Frame -> tensor preprocessing speed: the C++ extension against Hugging Face, cv2 + numpy and memcpy.

One 1080p BGR frame (skimage's astronaut scaled to 1920x1080 with cv2) becomes BLIP's (1, 3, 384, 384)
input. Every figure is the median of ``--repeat`` calls measured in this one run; ratios compare
rows of the same run only. Run: ``edgevlp bench --preprocess`` or ``.venv/bin/python benchmarks/preprocess.py``.

Targets from the runtime issue: extension >= 30x faster than ``BlipImageProcessor``, >= 2x faster than
the cv2 + numpy pipeline, within 3x of copying the output-sized tensor.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import time
from typing import Callable

import cv2
import numpy as np
import skimage.data

from edgevlp.runtime import preprocess as pp
from edgevlp.spec import PreprocessSpec

MEAN = (0.48145466, 0.4578275, 0.40821073)
STD = (0.26862954, 0.26130258, 0.27577711)
SIZE = 384


def median_seconds(fn: Callable[[], object], repeat: int, warmup: int = 3) -> float:
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def main(argv: list[str] | None = None) -> None:
    """Print the preprocessing comparison table (``edgevlp bench --preprocess``)."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=200, help="timed calls per row (median reported)")
    parser.add_argument("--hf-repeat", type=int, default=20, help="timed calls for the slow HF processor")
    args = parser.parse_args(argv)

    frame = cv2.resize(skimage.data.astronaut()[..., ::-1], (1920, 1080), interpolation=cv2.INTER_CUBIC)
    frame = np.ascontiguousarray(frame)  # BGR, as a camera gives it
    rgb = np.ascontiguousarray(frame[..., ::-1])
    out = np.empty((1, 3, SIZE, SIZE), np.float32)
    mean_a, std_a = np.array(MEAN, np.float32), np.array(STD, np.float32)

    def ext(interp: str, threads: int = 0) -> Callable[[], object]:
        spec = PreprocessSpec(height=SIZE, width=SIZE, interpolation=interp, mean=MEAN, std=STD)
        return lambda: pp.preprocess_extension(frame, spec, out=out, threads=threads)

    def cv2_numpy() -> np.ndarray:
        small = cv2.resize(frame, (SIZE, SIZE), interpolation=cv2.INTER_CUBIC)
        x = cv2.cvtColor(small, cv2.COLOR_BGR2RGB).astype(np.float32) / 255.0
        return np.ascontiguousarray(((x - mean_a) / std_a).transpose(2, 0, 1)[None])

    src = np.random.default_rng(0).standard_normal(out.shape).astype(np.float32)
    dst = np.empty_like(src)

    rows: list[tuple[str, float]] = [
        ("extension stretch bicubic (auto threads)", median_seconds(ext("bicubic"), args.repeat)),
        ("extension stretch bicubic (1 thread)", median_seconds(ext("bicubic", 1), args.repeat)),
        ("extension stretch area (auto threads)", median_seconds(ext("area"), args.repeat)),
        ("extension stretch bilinear (auto threads)", median_seconds(ext("bilinear"), args.repeat)),
        ("cv2 + numpy (resize, cvtColor, astype, normalise, transpose)", median_seconds(cv2_numpy, args.repeat)),
        ("memcpy of the output (np.copyto)", median_seconds(lambda: np.copyto(dst, src), args.repeat)),
    ]
    try:
        from transformers import BlipImageProcessor  # benchmarks may import it; the runtime never does
    except ImportError:
        hf = None
    else:
        proc = BlipImageProcessor()  # size 384, bicubic (PIL), CLIP mean/std: BLIP's defaults
        hf = median_seconds(lambda: proc(images=rgb, return_tensors="np"), args.hf_repeat, warmup=2)
        rows.append(("HF BlipImageProcessor (PIL bicubic)", hf))

    print(f"# preprocess 1920x1080 BGR uint8 -> (1, 3, {SIZE}, {SIZE}) float32, median of {args.repeat} calls")
    print(f"# {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, cv2 {cv2.__version__} "
          f"({cv2.getNumThreads()} threads), backend={pp.backend_name()}")
    width = max(len(name) for name, _ in rows)
    for name, sec in rows:
        print(f"{name:<{width}}  {sec * 1e3:9.3f} ms")
    times = dict(rows)
    best = times["extension stretch bicubic (auto threads)"]
    print()
    print("ratios (extension stretch bicubic, auto threads):")
    if hf is not None:
        print(f"  HF / extension          {hf / best:8.1f}x   (target >= 30x)")
    print(f"  cv2+numpy / extension   {times[rows[4][0]] / best:8.2f}x   (target >= 2x)")
    print(f"  extension / memcpy      {best / times[rows[5][0]]:8.2f}x   (target <= 3x)")
    area = times["extension stretch area (auto threads)"]
    print(f"  area: cv2+numpy / ext {times[rows[4][0]] / area:.2f}x, ext / memcpy {area / times[rows[5][0]]:.2f}x")


if __name__ == "__main__":
    main()
