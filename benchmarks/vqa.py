"""A VLM bundle (task vqa: SmolVLM, Idefics3) answering about a real photo, against transformers, in one run.

Per bundle and backend, for the image unsplit (one 512 px image: issue #16's protocol) and split into
tiles (the processor's default): end to end ``Assistant.ask(frame, question)`` with exactly ``--tokens``
new tokens (``min_new_tokens``: random-weight presets would stop at once), against transformers
(``Idefics3Processor`` + ``generate``, the processor's preprocessing included). Time to first token
(TTFT) is the call with one new token; decode tokens/s is ``(n - 1) / (t_n - t_1)``, on both sides, each
time the fastest of ``--repeats`` calls; the
runtime's stages (preprocess, vision encode, prefill) are from its own timings. The reference model is
the bundles' source (``--model``, e.g. ``arch:smolvlm-256m``).

Run: ``.venv/bin/python benchmarks/vqa.py bundles/smolvlm-cpu [bundles/smolvlm-int4] --model arch:smolvlm-256m``
(``--backends onnxruntime,openvino``; ``--photo chelsea``).
"""

from __future__ import annotations

import argparse
import platform
import time

import numpy as np


def best_ms(call, repeats: int = 1) -> float:  # type: ignore[no-untyped-def]
    """The fastest of ``repeats`` calls, in ms (both sides get the same count)."""
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        call()
        best = min(best, time.perf_counter() - t0)
    return best * 1e3


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("bundles", nargs="+")
    p.add_argument("--model", required=True, help="the bundles' source model (dir, hub id in the cache, arch:NAME)")
    p.add_argument("--backends", default="onnxruntime,openvino")
    p.add_argument("--photo", default="chelsea", help="a scikit-image photo (astronaut, coffee, chelsea)")
    p.add_argument("--question", default="What colour is the animal on the left of the picture?",
                   help="default: a 10-token question")
    p.add_argument("--tokens", type=int, default=32)
    p.add_argument("--threads", type=int, default=2, help="torch threads of the reference")
    p.add_argument("--images", choices=("one", "split", "both"), default="both",
                   help="the image unsplit (one 512 px tile: the issue's protocol), split into tiles, or both")
    p.add_argument("--repeats", type=int, default=3,
                   help="each time is the fastest of this many calls, on both sides (default 3)")
    args = p.parse_args()

    import torch
    from skimage import data

    from edgevlp.bundle import read_manifest
    from edgevlp.models import load_model
    from edgevlp.runtime import load

    torch.set_num_threads(args.threads)
    rgb = getattr(data, args.photo)()
    bgr = np.ascontiguousarray(rgb[..., ::-1])
    q, n = args.question, args.tokens
    adapter = load_model(args.model)
    print(f"machine: {platform.machine()}, {__import__('os').cpu_count()} CPUs; photo {args.photo} {rgb.shape[1]}x"
          f"{rgb.shape[0]}; {n} new tokens; reference: transformers Idefics3Processor + generate, FP32, "
          f"{args.threads} torch threads; each time the fastest of {args.repeats} calls\n")
    print("| bundle | engine / precision | images | prompt tokens | ms/answer | TTFT ms | preprocess | encode | "
          "prefill | decode tok/s | speed-up | TTFT speed-up | decode speed-up |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    for split in {"one": (False,), "split": (True,), "both": (False, True)}[args.images]:
        ref = lambda k: adapter.answer_ids(rgb, q, k, splitting=split, min_new_tokens=k)  # noqa: E731
        ref(2)  # warm-up
        h_n, h_1 = best_ms(lambda: ref(n), args.repeats), best_ms(lambda: ref(1), args.repeats)
        h_rate = (n - 1) / (h_n - h_1) * 1e3 if h_n > h_1 else float("nan")  # below the noise of t_n and t_1
        rows = []
        for bundle in args.bundles:
            manifest = read_manifest(bundle, verify=False)
            for backend in args.backends.split(","):
                try:
                    vlm = load(bundle, backend=backend)
                except Exception as err:  # noqa: BLE001 - e.g. OpenVINO cannot read MatMulNBits
                    rows.append(f"| {bundle} | {backend} {manifest.precision} | - | - | {type(err).__name__} | "
                                "| | | | | | | |")
                    continue
                ask = lambda k: vlm.ask(bgr, q, max_new_tokens=k, min_new_tokens=k, image_splitting=split)  # noqa: E731
                ask(2)
                answer = None

                def run() -> None:
                    nonlocal answer
                    answer = ask(n)

                o_n, o_1 = best_ms(run, args.repeats), best_ms(lambda: ask(1), args.repeats)
                o_rate = (n - 1) / (o_n - o_1) * 1e3 if o_n > o_1 else float("nan")
                t = answer.timings  # type: ignore[union-attr]
                rows.append(f"| {bundle} | {backend} {manifest.precision} | {answer.images} | {answer.prompt_tokens} | "  # type: ignore[union-attr]
                            f"{o_n:.0f} | {o_1:.0f} | {t['preprocess']:.0f} | {t['encode']:.0f} | {t['prefill']:.0f} | "
                            f"{o_rate:.1f} | **{h_n / o_n:.2f}x** | {h_1 / o_1:.2f}x | {o_rate / h_rate:.2f}x |")
        print("\n".join(rows))
        print(f"| transformers eager | pytorch fp32 | {'split' if split else 1} | | {h_n:.0f} | {h_1:.0f} | | | | "
              f"{h_rate:.1f} | 1.00x | 1.00x | 1.00x |", flush=True)


if __name__ == "__main__":
    main()
