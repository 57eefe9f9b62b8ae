"""`make demo`, foundation stage: the furthest real part of the pipeline that exists today.

The demo models (issue #7), exporter (#4), lean runtime (#5) and camera app (#9) have not landed, so
this does not compress, export or run a camera. It does, for real:
  1. build a tiny *random* BLIP captioner and save it as a model directory,
  2. describe it with `edgevlp info`,
  3. preprocess three real photos with the C++ extension (cv2 resize + `edgevlp._preprocess`) and
     measure the difference to Hugging Face's BlipImageProcessor,
  4. caption them greedily with the PyTorch model.
Random weights caption nonsense by design: the point is that every stage runs, not the words.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import cv2
import numpy as np

OUT = Path("demo-out")

_CV2_INTERP = {"nearest": cv2.INTER_NEAREST, "bilinear": cv2.INTER_LINEAR, "bicubic": cv2.INTER_CUBIC,
               "area": cv2.INTER_AREA, "lanczos": cv2.INTER_LANCZOS4}


def main() -> int:
    import torch
    from skimage import data
    from transformers import BlipImageProcessor

    from edgevlp.cli import main as cli
    from edgevlp.models import load_model, tiny_adapter
    from edgevlp.runtime.preprocess import backend_name, normalize

    print("edgevlp demo (foundation stage): demo models, exporter, runtime and camera app are not "
          "built yet;\nrunning: tiny random BLIP -> save -> `edgevlp info` -> C++ preprocessing -> "
          "PyTorch greedy captions.\n")
    model_dir = OUT / "tiny-blip"
    tiny_adapter("BlipForConditionalGeneration", seed=0).save_pretrained(model_dir)
    print(f"$ edgevlp info {model_dir}")
    cli(["info", str(model_dir)])
    adapter = load_model(model_dir)
    spec = adapter.preprocess_spec()
    hf = BlipImageProcessor.from_pretrained(model_dir)

    photos = {"astronaut": data.astronaut(), "coffee": data.coffee(), "chelsea": data.chelsea()}
    batch, diffs, ext_s = [], [], 0.0
    for name, rgb in photos.items():
        bgr = np.ascontiguousarray(rgb[..., ::-1])  # what a camera hands us
        t0 = time.perf_counter()
        small = cv2.resize(bgr, (spec.width, spec.height), interpolation=_CV2_INTERP[spec.interpolation])
        tensor = normalize(small, spec.mean, spec.std, spec.rescale, swap_rb=True)
        ext_s += time.perf_counter() - t0
        ref = hf(images=rgb, return_tensors="np")["pixel_values"]
        diffs.append(float(np.abs(tensor - ref).max()))
        batch.append(tensor)
    print(f"\npreprocessing: {len(photos)} photos in {ext_s * 1e3:.2f} ms (cv2 resize + {backend_name()} normalise);"
          f" max |ours - BlipImageProcessor| = {max(diffs):.3f} (PIL vs cv2 {spec.interpolation} resize)")
    pixels = torch.from_numpy(np.concatenate(batch))
    ids = adapter.generate(pixels, max_new_tokens=8)
    texts = adapter.tokenizer.batch_decode(ids, skip_special_tokens=True)
    print("\ngreedy captions from the RANDOM tiny model (meaningless words, real pipeline):")
    for name, row, text in zip(photos, ids.tolist(), texts):
        print(f"  {name:<10} ids={row}  '{text}'")
    print(f"\nmodel directory written to {model_dir.resolve()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
