"""Many cameras through one Triton server: the load test with dynamic batching on and off, in one run.

1. Exports the demo detector and captioner (or takes the bundles given) and writes two Triton
   repositories of each: dynamic batching on (the profile's [serve] table) and off (`--no-batching`).
2. Per mode: starts a real tritonserver (`make serve-env`), checks that its answers equal the in-process
   runtime's on two photos (greedy tokens; boxes, scores, labels), then runs the open-loop load test
   (`edgevlp.bench.serve.load_test`): N cameras detecting at 5 fps, the first 8 also captioning every
   2 s, for each N of --streams.
3. Prints both tables, the largest N whose detection p99 stays under the 200 ms frame interval with no
   frame dropped, the batching gain (max streams on / off), and the peak detections/s of each mode.

Targets (Triton issue, 2-core CPU, demo bundles, --leaf python): >= 16 detection streams with p99 <
200 ms; batching >= 1.5x the streams of batching off; 8 caption streams every 2 s with p99 < 2 s.
Run: ``.venv/bin/python benchmarks/serve.py [--streams 1,2,4,8,16,24,32] [--seconds 10]``.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from pathlib import Path

import numpy as np

from edgevlp._machine import cpu_name


def parity(client, bundles: dict[str, Path]) -> dict[str, bool]:
    """Served answers vs the in-process runtime on two photos."""
    import cv2
    from skimage import data

    from edgevlp.runtime import load

    frames = [cv2.cvtColor(data.astronaut(), cv2.COLOR_RGB2BGR), cv2.cvtColor(data.coffee(), cv2.COLOR_RGB2BGR)]
    captioner, detector = load(bundles["caption"]), load(bundles["detect"])
    prompts = ["a red circle", "a blue square", "a person"]
    detector.set_prompts(prompts)
    tokens = all(client.caption(f).token_ids == captioner.caption(f).token_ids for f in frames)
    boxes = True
    for f in frames:
        a, b = detector.detect(f, threshold=0.05), client.detect(f, prompts, threshold=0.05)
        boxes &= bool(np.array_equal(a.boxes_xyxy, b.boxes_xyxy) and np.array_equal(a.scores, b.scores)
                      and np.array_equal(a.labels, b.labels))
    return {"greedy_tokens_identical": tokens, "detections_identical": boxes}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--detector", default="demo-owlvit", help="detector model or bundle (default demo-owlvit)")
    ap.add_argument("--captioner", default="demo-blip", help="captioner model or bundle (default demo-blip)")
    ap.add_argument("--streams", default="1,2,4,8,16,24,32", help="camera counts (default 1,2,4,8,16,24,32)")
    ap.add_argument("--seconds", type=float, default=10.0, help="seconds per camera count (default 10)")
    ap.add_argument("--caption-streams", type=int, default=8, help="cameras that also caption (default 8)")
    ap.add_argument("--port", type=int, default=18700, help="HTTP port of the servers (gRPC +1, metrics +2)")
    ap.add_argument("--output", help="write serve.md and serve.json here")
    args = ap.parse_args(argv)

    from edgevlp.bench.serve import load_table, load_test, max_streams
    from edgevlp.bundle import is_bundle
    from edgevlp.serve import Client, TritonServer, find_tritonserver, write_repository
    from edgevlp.serve.repository import ServeSettings

    install = find_tritonserver()
    streams = [int(s) for s in args.streams.split(",") if s]
    results: dict[str, list] = {}
    with tempfile.TemporaryDirectory(prefix="edgevlp-serve-bench-") as tmp:
        root = Path(tmp)
        bundles = {}
        for task, model in (("detect", args.detector), ("caption", args.captioner)):
            if is_bundle(model):
                bundles[task] = Path(model)
            else:
                from edgevlp.export import export_model

                print(f"exporting {model} (cpu) ...", flush=True)
                export_model(model, root / task, target="cpu", progress=False)
                bundles[task] = root / task
        parities = {}
        for mode in ("batching on", "batching off"):
            repos = []
            for task, bundle in bundles.items():
                out = root / f"{task}-{mode.split()[1]}"
                base = ServeSettings.from_profile(json.loads((bundle / "manifest.json").read_text())
                                                  ["target_profile"].get("serve", {}))
                settings = ServeSettings(**{**base.__dict__, "batching": mode == "batching on"})
                write_repository(bundle, out, leaf="python", settings=settings)
                repos.append(out)
            with TritonServer(repos, port=args.port, install=install) as server:
                client = Client(server.grpc_url)
                parities[mode] = parity(client, bundles)
                client.close()
                print(f"{mode}: parity {parities[mode]}", flush=True)
                results[mode] = load_test(server.grpc_url, streams, seconds=args.seconds,
                                          caption_streams=args.caption_streams,
                                          on_row=lambda r, m=mode: print(
                                              f"  {m} {r.streams:>3} streams: {r.detect_fps:.1f} det/s p99 "
                                              f"{r.detect_p99:.0f} ms, dropped {r.dropped}, caption p99 "
                                              f"{r.caption_p99:.0f} ms, batch {r.batch:.2f}", flush=True))
    on, off = max_streams(results["batching on"]), max_streams(results["batching off"])
    lines = [f"Triton load test on {cpu_name()} ({os.cpu_count()} CPUs), tritonserver from nvidia-pytriton, "
             f"--leaf python; detector {args.detector}, captioner {args.captioner}; 640x480 frames; detection at "
             f"5 fps per camera, the first {args.caption_streams} cameras also caption every 2 s; "
             f"{args.seconds:.0f} s per row.", ""]
    for mode, rows in results.items():
        lines += [load_table(rows, title=mode), ""]
    gain = f"{on / off:.2f}x" if off else ("n/a (no camera count met the frame interval in either mode)"
                                           if not on else f"on serves {on}, off none")
    peak = {mode: max(r.detect_fps for r in rows) for mode, rows in results.items()}
    lines += [f"max streams (detection p99 < 200 ms, none dropped): batching on {on}, off {off}; batching gain {gain}",
              f"peak detections/s: batching on {peak['batching on']:.1f}, off {peak['batching off']:.1f} "
              f"({peak['batching on'] / peak['batching off']:.2f}x)",
              f"parity with the in-process runtime: {parities}"]
    text = "\n".join(lines)
    print("\n" + text)
    if args.output:
        out = Path(args.output)
        out.mkdir(parents=True, exist_ok=True)
        (out / "serve.md").write_text(text + "\n")
        (out / "serve.json").write_text(json.dumps({m: [r.to_dict() for r in rows] for m, rows in results.items()},
                                                   indent=1, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
