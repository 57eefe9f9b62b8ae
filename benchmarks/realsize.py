"""Real-size speed in one run: the `arch:` presets (real shapes, random weights) as FP32 `--target cpu`
bundles and as `int8-ptq` (static QDQ) bundles, measured by one `edgevlp bench` against transformers
eager (and optimum's ORTModelForVision2Seq for ViT-GPT2), then the issue's ratios.

Steps (each printed with its wall time): ``edgevlp compress arch:X --recipe recipes/int8-ptq.toml``,
``edgevlp export`` of that output and of ``arch:X`` itself for ``--target cpu``, then
``edgevlp bench BUNDLE ... --frames N`` over all bundles (the reference rows once per preset, the
same photos for every row). Compressed outputs and bundles are kept under ``--work`` (default
``out/realsize``) and reused with ``--reuse``.

Run: ``.venv/bin/python benchmarks/realsize.py [--frames 10] [--presets blip-base,vit-gpt2,owlvit-b32]``
(about 15 minutes on a 2-core CPU, most of it the three compressions).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

EDGEVLP = [sys.executable, "-m", "edgevlp"]
#: issue #13's targets: (preset, precision, reference engine, what, at least)
TARGETS = [("blip-base", "fp32", "pytorch", "end to end", 2.0), ("blip-base", "int8", "pytorch", "end to end", 4.0),
           ("blip-base", "fp32", "pytorch", "decode", 3.0), ("blip-base", "int8", "pytorch", "decode", 3.0),
           ("vit-gpt2", "fp32", "optimum-onnxruntime", "end to end", 1.5),
           ("vit-gpt2", "fp32", "pytorch", "end to end", 2.0),
           ("owlvit-b32", "fp32", "pytorch", "end to end", 1.5), ("owlvit-b32", "int8", "pytorch", "end to end", 3.0)]


def target_lines(rows: list[dict]) -> list[str]:
    """One line per target: the runtime's row against the reference row of the same preset (p50 end
    to end, or decode ms per token)."""
    lines = []
    for preset, precision, ref_engine, what, least in TARGETS:
        mine = [r for r in rows if r["model"] == f"arch:{preset}" and r["engine"] == "onnxruntime"
                and r["precision"] == precision]
        ref = [r for r in rows if r["model"] == f"arch:{preset}" and r["engine"] == ref_engine]
        if not mine or not ref:
            lines.append(f"- {preset} {precision} {what} vs {ref_engine}: not measured")
            continue
        if what == "decode":
            ratio = ref[0]["decode_ms_per_token"] / mine[0]["decode_ms_per_token"]
        else:
            ratio = ref[0]["latency_ms"]["total"]["p50"] / mine[0]["latency_ms"]["total"]["p50"]
        verdict = "met" if ratio >= least else "missed"
        lines.append(f"- {preset} {precision} {what} vs {ref_engine}: {ratio:.2f}x (target >= {least:g}x: {verdict})")
    return lines


def _step(what: str, args: list[str], skip: bool) -> None:
    if skip:
        print(f"[realsize] {what}: reused", flush=True)
        return
    t0 = time.perf_counter()
    subprocess.run([*EDGEVLP, *args], check=True)
    print(f"[realsize] {what}: {time.perf_counter() - t0:.0f} s", flush=True)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--presets", default="blip-base,vit-gpt2,owlvit-b32")
    ap.add_argument("--frames", type=int, default=10)
    ap.add_argument("--work", default="out/realsize")
    ap.add_argument("--reuse", action="store_true", help="keep compressed outputs and bundles already there")
    args = ap.parse_args(argv)
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    bundles: list[Path] = []
    for preset in args.presets.split(","):
        comp, fp32, int8 = work / f"{preset}-ptq", work / f"{preset}-fp32", work / f"{preset}-int8"
        _step(f"compress arch:{preset} int8-ptq",
              ["compress", f"arch:{preset}", "--recipe", "recipes/int8-ptq.toml", "-o", str(comp), "--force"],
              args.reuse and (comp / "compression.json").exists())
        _step(f"export {comp.name}", ["export", str(comp), "-o", str(int8), "--target", "cpu", "--force"],
              args.reuse and (int8 / "manifest.json").exists())
        _step(f"export arch:{preset} fp32", ["export", f"arch:{preset}", "-o", str(fp32), "--target", "cpu",
                                             "--force"], args.reuse and (fp32 / "manifest.json").exists())
        bundles += [fp32, int8]
    _step("bench", ["bench", *map(str, bundles), "--frames", str(args.frames), "--output", str(work / "bench")],
          False)
    print((work / "bench" / "bench.md").read_text())
    print("\nissue #13 targets (this run):")
    for line in target_lines(json.loads((work / "bench" / "bench.json").read_text())["rows"]):
        print(line)
    return 0


if __name__ == "__main__":
    sys.exit(main())
