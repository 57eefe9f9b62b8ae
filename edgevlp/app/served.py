"""``edgevlp run --server URL --source A --source B ...``: the camera app as a Triton client.

One pipeline per source (its own capture thread, overlay, outputs in ``OUTPUT/<n>-<source name>/``),
all sending through one :class:`~edgevlp.serve.Client` whose bounded in-flight window is the shared
inference queue; the server's dynamic batcher batches the sources' frames together. The models are
the captioner (or, when it holds none, the VLM) and/or detector the server holds, found in its
repository index.
"""

from __future__ import annotations

import dataclasses
import re
import sys
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from edgevlp.app.config import AppConfig
from edgevlp.errors import EdgeVLPError, InputError

__all__ = ["run_served", "source_dir_name"]


def source_dir_name(index: int, source: str) -> str:
    """``OUTPUT`` sub-directory of source ``index``.

    Example:
        >>> source_dir_name(1, "rtsp://10.0.0.5/cam 2")
        '1-cam_2'
    """
    stem = Path(str(source).rstrip("/")).name or str(source)
    return f"{index}-{re.sub(r'[^A-Za-z0-9._-]+', '_', Path(stem).stem)[:40] or 'source'}"


def run_served(config: AppConfig, server: str, sources: Sequence[str], *, prog: str = "edgevlp run",
               max_in_flight: int = 64) -> int:
    """Run one pipeline per source against ``server``; prints each source's summary. Raises the first
    pipeline's error after every pipeline has stopped and closed its outputs."""
    from edgevlp.app.pipeline import format_summary, run_app
    from edgevlp.serve import Client

    if len(sources) > 1 and not config.headless:
        raise InputError(f"{len(sources)} sources need --headless (one window per camera is not offered); add "
                         "--output DIR to keep each source's video and log")
    client = Client(server, max_in_flight=max_in_flight)
    served = client.models()
    if not {"caption", "detect", "vqa"} & set(served):
        raise InputError(f"the server at {server} serves no captioner, VLM or detector (it serves: "
                         f"{', '.join(served) or 'nothing edgevlp wrote'})")
    stop = threading.Event()
    results: list[dict[str, Any] | None] = [None] * len(sources)
    errors: list[BaseException | None] = [None] * len(sources)

    def event(i: int, message: str) -> None:
        print(f"{prog}: [{sources[i]}] {message}", file=sys.stderr, flush=True)

    def one(i: int) -> None:
        output = config.output and str(Path(config.output) / source_dir_name(i, sources[i]))
        cfg = dataclasses.replace(config, source=sources[i], output=output)
        try:
            results[i] = run_app(cfg, captioner=client.captioner() if "caption" in served else None,
                                 assistant=client.assistant() if "vqa" in served and "caption" not in served
                                 else None,
                                 detector=client.detector() if "detect" in served else None,
                                 on_event=lambda m: event(i, m), stop=stop)
        except BaseException as err:  # noqa: BLE001 - reported after every pipeline stopped
            errors[i] = err
            stop.set() if not isinstance(err, EdgeVLPError) else None

    threads = [threading.Thread(target=one, args=(i,), name=f"source-{i}", daemon=True) for i in range(len(sources))]
    for t in threads:
        t.start()
    try:
        for t in threads:
            while t.is_alive():
                t.join(0.2)
    except KeyboardInterrupt:
        stop.set()
        for t in threads:
            t.join(30)
        raise
    finally:
        client.close()
    for i, summary in enumerate(results):
        if summary is not None and summary["frames"]:
            print(f"[{sources[i]}] " + format_summary(summary), flush=True)
    if len(sources) > 1:
        done = [s for s in results if s and s.get("fps")]
        print(f"{len(done)} of {len(sources)} sources ran; {sum(s['fps'] for s in done):.1f} FPS in all "
              f"through {server}", flush=True)
    first = next((e for e in errors if e is not None), None)
    if first is not None:
        raise first
    return 0
