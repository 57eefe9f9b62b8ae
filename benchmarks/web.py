"""What watching costs: the camera app headless vs served to three web viewers vs with one stalled viewer.

One run, the demo detector on a looped clip (`--fps-limit 0`: as fast as it goes), each mode for
`--seconds`:

Each mode runs `--repeats` times (default 2), interleaved (A B C C B A ...), and its fastest run counts:
the shared machine drifts.

1. headless: `edgevlp run` with no viewer (the baseline FPS);
2. three viewers: `--serve`, three WebSocket viewers in another process, each drawing nothing but
   acknowledging every frame (as the page does after drawing it); the frame age per viewer is the
   server's age at send (publish -> send) plus the time until the JPEG arrived;
3. three viewers + one stalled viewer that never acknowledges.

Targets (web viewer issue): three viewers cost <= 10 % of the headless FPS; frame age p95 <= 150 ms on
loopback; a stalled viewer changes neither the FPS nor the other viewers' frame age by more than 10 %.
Run: ``.venv/bin/python benchmarks/web.py [--seconds 15]``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing as mp
import os
import socket
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

from edgevlp._machine import cpu_name


def _viewers(url: str, n: int, stalled: bool, seconds: float, out: mp.Queue) -> None:
    import aiohttp

    async def one(session: aiohttp.ClientSession, ack: bool) -> list[float]:
        ages: list[float] = []
        ws = await session.ws_connect(url)
        end = time.monotonic() + seconds
        meta, sent_at = None, 0.0
        while time.monotonic() < end:
            try:
                msg = await asyncio.wait_for(ws.receive(), timeout=max(0.05, end - time.monotonic()))
            except asyncio.TimeoutError:
                break
            if msg.type == aiohttp.WSMsgType.TEXT:
                data = json.loads(msg.data)
                if data["type"] == "frame":
                    meta, sent_at = data, time.monotonic()
            elif msg.type == aiohttp.WSMsgType.BINARY and meta is not None:
                ages.append(meta["age_ms"] + (time.monotonic() - sent_at) * 1e3)
                if ack:
                    await ws.send_str(json.dumps({"type": "ack", "seq": meta["seq"]}))
            elif msg.type in (aiohttp.WSMsgType.CLOSED, aiohttp.WSMsgType.ERROR):
                break
        await ws.close()
        return ages

    async def main() -> list[list[float]]:
        async with aiohttp.ClientSession() as session:
            jobs = [one(session, True) for _ in range(n)] + ([one(session, False)] if stalled else [])
            return await asyncio.gather(*jobs)

    out.put(asyncio.run(main())[:n])


def write_clip(path: str, size: tuple[int, int] = (640, 480), hold: int = 10) -> None:
    """24 shape scenes of the val split, each held ``hold`` frames, as an MP4."""
    import cv2

    from edgevlp.data import dataset

    writer = cv2.VideoWriter(path, cv2.VideoWriter_fourcc(*"mp4v"), 15, size)
    for scene in dataset("val", 24, size=256):
        frame = cv2.resize(np.ascontiguousarray(scene.image[..., ::-1]), size, interpolation=cv2.INTER_AREA)
        for _ in range(hold):
            writer.write(frame)
    writer.release()


def _port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run_mode(bundle: str, clip: str, seconds: float, viewers: int, stalled: bool) -> dict:
    from edgevlp.app import AppConfig
    from edgevlp.app.pipeline import run_app
    from edgevlp.runtime import load

    detector = load(bundle)
    port = _port() if viewers else None
    config = AppConfig(source=clip, prompts=("red circle", "blue square", "green triangle"), headless=True,
                       loop=True, serve=f"127.0.0.1:{port}" if port else None)
    stop = threading.Event()
    result: dict = {}
    ages: list[list[float]] = []

    def clients() -> None:
        time.sleep(2.0)  # the app is up and warm
        ctx = mp.get_context("spawn")
        q = ctx.Queue()
        proc = ctx.Process(target=_viewers, args=(f"ws://127.0.0.1:{port}/ws", viewers,
                                                                       stalled, seconds, q))
        proc.start()
        ages.extend(q.get(timeout=seconds + 60))
        proc.join(30)
        stop.set()

    if viewers:
        threading.Thread(target=clients, daemon=True).start()
    else:
        threading.Timer(seconds + 2.0, stop.set).start()
    summary = run_app(config, detector=detector, stop=stop, on_event=lambda m: None)
    result["fps"] = summary["fps"]
    flat = [a for per in ages for a in per]
    result["age_p50"] = float(np.percentile(flat, 50)) if flat else float("nan")
    result["age_p95"] = float(np.percentile(flat, 95)) if flat else float("nan")
    result["frames_per_viewer"] = [len(a) for a in ages]
    result["web"] = summary.get("web")
    return result


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--bundle", help="detector bundle (default: demo-owlvit exported for cpu)")
    ap.add_argument("--seconds", type=float, default=15.0)
    ap.add_argument("--repeats", type=int, default=2, help="runs per mode, interleaved (default 2)")
    args = ap.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="edgevlp-web-bench-") as tmp:
        bundle = args.bundle
        if bundle is None:
            from edgevlp.export import export_model

            bundle = str(Path(tmp) / "owl")
            export_model("demo-owlvit", bundle, target="cpu", progress=False)
        clip = str(Path(tmp) / "clip.mp4")
        write_clip(clip)
        rows: dict[str, dict] = {}
        # each mode --repeats times, interleaved, the machine's drift spread over all of them; the best run counts
        modes = (("headless", 0, False), ("3 viewers", 3, False), ("3 viewers + 1 stalled", 3, True))
        order = [m for i in range(max(1, args.repeats)) for m in (modes if i % 2 == 0 else modes[::-1])]
        for name, viewers, stalled in order:
            r = run_mode(bundle, clip, args.seconds, viewers, stalled)
            print(name, r, flush=True)
            if name not in rows or r["fps"] > rows[name]["fps"]:
                rows[name] = r
    base = rows["headless"]["fps"]
    three, stall = rows["3 viewers"], rows["3 viewers + 1 stalled"]
    cpu = cpu_name()
    lines = [f"web viewer cost on {cpu} ({os.cpu_count()} CPUs), demo-owlvit on 24 shape scenes (640x480, looped, "
             f"unthrottled), {args.seconds:.0f} s per run, each mode run {args.repeats} times (ABC CBA ..., the fastest "
             "run shown), "
             "viewers in another process on loopback at the default --serve-fps 30", "",
             "| mode | FPS | vs headless | frame age p50 ms | p95 ms | frames per viewer | JPEGs encoded | sent |",
             "|---|---|---|---|---|---|---|---|"]
    for name, r in rows.items():
        web = r["web"] or {}
        lines.append(f"| {name} | {r['fps']:.1f} | {r['fps'] / base:.2f}x | {r['age_p50']:.0f} | {r['age_p95']:.0f} | "
                     f"{r['frames_per_viewer'] or '-'} | {web.get('frames_encoded', '-')} | {web.get('frames_sent', '-')} |")
    lines += ["", f"three viewers cost {100 * (1 - three['fps'] / base):.1f} % of the headless FPS (target <= 10 %); "
              f"frame age p95 {three['age_p95']:.0f} ms (target <= 150); a stalled viewer changes the FPS by "
              f"{100 * abs(stall['fps'] / three['fps'] - 1):.1f} % and the others' age p95 by "
              f"{100 * abs(stall['age_p95'] / three['age_p95'] - 1):.1f} % (targets <= 10 %)"]
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
