"""The ``edgevlp`` command line: one verb per pipeline stage.

Heavy modules (torch, transformers, onnx) are imported inside the verb that needs them, so
``edgevlp --help`` stays fast. Exit codes: 0 ok, 1 :class:`~edgevlp.errors.EdgeVLPError`, 2 usage
error, 3 verb not available yet, 70 internal error, 130 interrupted. Tracebacks only with ``--debug``.
"""

from __future__ import annotations

import argparse
import json
import sys
import traceback
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from edgevlp import __version__
from edgevlp._process import EXIT_INTERNAL, EXIT_INTERRUPTED, terminate_cleanly
from edgevlp.errors import EdgeVLPError
from edgevlp.targets import PRECISIONS, REPOSITORY_TARGETS, TARGETS, host_targets

__all__ = ["main", "build_parser"]


@dataclass(frozen=True)
class Verb:
    """A subcommand: its one-line help, examples, argument builder and handler."""

    name: str
    help: str
    examples: str
    add_arguments: Callable[[argparse.ArgumentParser], None]
    run: Callable[[argparse.Namespace], int | None]


# ----------------------------------------------------------------------------------------- info
def _info_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("path", help="bundle directory (hashes verified), model directory, demo-zoo name, "
                                "hub id or arch:NAME preset (real shapes, random weights)")
    p.add_argument("--json", action="store_true", help="print machine-readable JSON")


def _run_info(args: argparse.Namespace) -> int:
    from edgevlp.bundle import is_bundle

    if is_bundle(args.path):
        return _bundle_info(args)
    from edgevlp.models import inspect_model

    inspect_model(args.path)  # fail fast (no torch import) on bad paths, configs, architectures
    from edgevlp.models import load_model
    from edgevlp.models.presets import preset_record

    adapter = load_model(args.path)
    summary = adapter.summary()
    preset = preset_record(adapter.model.config)
    if preset:
        summary["preset"] = preset
    if args.json:
        print(json.dumps(summary, indent=2))
    else:
        print(_format_model_summary(summary))
    return 0


def _format_model_summary(s: dict[str, Any]) -> str:
    pre = s["preprocessing"]
    lines = [
        f"model        {s['source']}",
        f"family       {s['family']} ({s['architecture']}), task: {s['task']}",
        f"parameters   {s['parameters']:,}",
    ]
    if s.get("preset"):
        p = s["preset"]
        lines.append(f"weights      {p['note']} ({p['name']}: the shapes of {p['source']}, seeded "
                     f"N(0, {p['init_std']}) weights)")
    width = max(len(p["name"]) for p in s["parts"])
    for part in s["parts"]:
        cache = " [KV cache]" if part["kv_cache"] else ""
        lines.append(f"  {part['name']:<{width}}  {part['parameters']:>14,}  {part['description']}{cache}")
    crop = f", crop {pre['crop'][0]}x{pre['crop'][1]}" if pre["crop"] else ""
    pad = f", pad {pre['pad_value']}" if pre["resize_mode"] in ("pad_square", "letterbox") else ""
    lines += [
        f"image        {s['image_size'][0]}x{s['image_size'][1]} {pre['channel_order']}, "
        f"resize {pre['resize_mode']} ({pre['interpolation']}){crop}{pad}",
        f"normalise    x*{pre['rescale']:.6g}, mean {_fmt3(pre['mean'])}, std {_fmt3(pre['std'])}",
    ]
    tok = s["tokenizer"]
    specials = ", ".join(f"{k}={v}" for k, v in tok["special_tokens"].items())
    lines.append(f"tokenizer    {tok['type']}, {tok['vocab_size']:,} tokens ({specials})")
    if "generation" in s:
        lines.append("generation   " + ", ".join(f"{k}={v}" for k, v in s["generation"].items()))
    if s.get("pruning"):
        lines.append("pruned       " + "; ".join(
            f"{kind}: {len(kept)} modules pruned, kept {'/'.join(str(n) for n in kept.values())}"
            for kind, kept in s["pruning"].items() if kept))
    return "\n".join(lines)


def _bundle_info(args: argparse.Namespace) -> int:
    from edgevlp.bundle import read_manifest

    manifest = read_manifest(args.path, verify=True)
    if args.json:
        print(json.dumps(manifest.to_dict(), indent=2))
        return 0
    print(_format_bundle(manifest))
    return 0


def _format_bundle(m: Any) -> str:
    total = sum(f["size"] for f in m.files.values())
    status = "verified (parity passed)" if m.verified else "UNVERIFIED (parity skipped)"
    lines = [
        f"bundle       {m.path}",
        f"model        {m.family} ({m.architecture}), task: {m.task}, from {m.source.get('model')}",
        f"target       {m.target}, precision {m.precision}, profile "
        f"{m.target_profile.get('name', '-')}; {status}",
        f"files        {len(m.files)} files, {total / 1e6:.2f} MB, all sha256 verified",
    ]
    if m.source.get("random_weights"):
        lines.insert(2, f"weights      {m.source.get('note', 'random weights')} ({m.source.get('preset')})")
    for g in m.graphs.values():
        ins = ", ".join(f"{t.name}{list(t.shape)}" for t in g.inputs[:3]) + (" ..." if len(g.inputs) > 3 else "")
        outs = ", ".join(t.name for t in g.outputs[:3]) + (" ..." if len(g.outputs) > 3 else "")
        engines = f" engines: {dict(g.engines)}" if g.engines else ""
        lines.append(f"  {g.role:<15} {g.file} ({g.format}) in: {ins} -> out: {outs}{engines}")
    pre = m.preprocess
    lines.append(f"image        {pre['height']}x{pre['width']} {pre['resize_mode']} ({pre['interpolation']})")
    parity = m.parity
    if parity.get("outputs"):
        worst = ", ".join(f"{k} {v['max_abs_diff']:.2e}" for k, v in parity["outputs"].items())
        tokens = parity.get("greedy_tokens_identical")
        lines.append(f"parity       {parity['backend']}: max |diff| {worst}"
                     + ("" if tokens is None else f"; greedy tokens identical: {tokens}"))
    if m.compression:
        lines.append(f"compression  {json.dumps(m.compression)[:100]}")
    return "\n".join(lines)


def _run_export(args: argparse.Namespace) -> int:
    from pathlib import Path

    from edgevlp.errors import BundleError

    out = Path(args.output)
    if out.is_dir() and any(out.iterdir()) and not args.force:  # fail before importing torch
        raise BundleError(f"output directory {out} is not empty; pass --force to replace it")
    from edgevlp.models import inspect_model

    if args.target in REPOSITORY_TARGETS:
        return _export_repository(args)
    if not (Path(args.model) / "compression.json").is_file():
        inspect_model(args.model)
    from edgevlp.bundle import read_manifest
    from edgevlp.export import export_model

    export_model(args.model, out, target=args.target, precision=args.precision, profile=args.profile,
                 opset=args.opset, force=args.force, skip_parity=args.skip_parity)
    print(_format_bundle(read_manifest(out)))
    return 0


def _fmt3(values: Sequence[float]) -> str:
    return "(" + ", ".join(f"{v:.4f}" for v in values) + ")"


# ------------------------------------------------------------------------------ planned verbs
def _compress_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("model", help="model dir, demo-zoo name or hub id")
    p.add_argument("--recipe", required=True, help="TOML recipe (see recipes/)")
    p.add_argument("-o", "--output", required=True, help="output directory")
    p.add_argument("--calib", help="calibration source replacing the recipe's: a folder of your images, "
                                   "photos (bundled real photos), shapes:train, coco:PATH (the shipped "
                                   "recipes' 'auto': shapes:train for demo models, photos otherwise)")
    p.add_argument("--teacher", help="teacher model for distillation (default: the input model)")
    p.add_argument("--force", action="store_true", help="replace a non-empty output directory")
    p.add_argument("--resume", action="store_true",
                   help="continue an interrupted distillation/QAT from OUTPUT.train/ (its checkpoints)")
    p.add_argument("--no-cache", action="store_true",
                   help="retrain instead of reusing a cached result of the same training stages on the same "
                        "model ($EDGEVLP_CACHE/stages, or the demo zoo's shipped entries)")
    p.add_argument("--eval-data", default="shapes:val",
                   help="data for the task metric before/after in the report (default shapes:val)")
    p.add_argument("--eval-n", type=int, default=100,
                   help="images for the metric before/after (default 100; 0 skips it)")
    p.add_argument("--json", action="store_true", help="print the report as JSON instead of the summary")


def _run_compress(args: argparse.Namespace) -> int:
    from pathlib import Path

    from edgevlp.compress import load_recipe
    from edgevlp.errors import BundleError

    load_recipe(args.recipe)  # torch-free: a bad recipe fails before the model loads
    out = Path(args.output)
    if out.is_dir() and any(out.iterdir()) and not args.force:
        raise BundleError(f"output directory {out} is not empty; pass --force to replace it")
    from edgevlp.models import inspect_model

    inspect_model(args.model)
    from edgevlp.compress.pipeline import compress_model, format_report

    report = compress_model(args.model, args.recipe, out, calib=args.calib, teacher=args.teacher,
                            force=args.force, resume=args.resume, cache=not args.no_cache,
                            eval_data=args.eval_data if args.eval_n > 0 else None, eval_n=args.eval_n)
    print(json.dumps(report, indent=2) if args.json else format_report(report))
    if not args.json:
        print(f"wrote {out} (report.json, compression.json); next: edgevlp export {out} -o BUNDLE "
              f"--target {report['export_target']} (the precision and parity tolerance come from "
              "compression.json)")
    return 0


def _export_repository(args: argparse.Namespace) -> int:
    from pathlib import Path

    from edgevlp.bundle import is_bundle
    from edgevlp.export.repository import export_repository

    if not is_bundle(args.model) and not (Path(args.model) / "compression.json").is_file():
        from edgevlp.models import inspect_model

        inspect_model(args.model)
    settings = {"max_batch_size": args.max_batch_size, "queue_delay_us": args.queue_delay_us,
                "instances": args.instances, "batching": False if args.no_batching else None}
    record = export_repository(args.model, args.output, target=args.target, leaf=args.leaf,
                               precision=args.precision, profile=args.profile, name=args.name,
                               settings=settings, force=args.force, skip_parity=args.skip_parity)
    s = record["settings"]
    entries = ", ".join(f"{e['name']} ({e['task']})" for e in record["entries"])
    print(f"{args.target} repository {args.output}: {entries}; {len(record['models'])} models "
          f"({', '.join(record['models'])}); leaves: {record['leaf']}; dynamic batching "
          + (f"up to {s['max_batch_size']} (wait {s['queue_delay_us']} us)" if s["batching"] else "off")
          + f", {s['instances']} instance(s) per model\nserve it: edgevlp serve {args.output}")
    return 0


def _export_args(p: argparse.ArgumentParser) -> None:
    from edgevlp.serve.leaves import LEAVES  # a table only: no engine, no tritonclient

    p.add_argument("model", help="model dir, demo-zoo name, hub id or `edgevlp compress` output (or, for "
                                 "--target triton, a bundle)")
    p.add_argument("-o", "--output", required=True, help="bundle (or, for --target triton, model "
                                                         "repository) directory to write")
    p.add_argument("--target", required=True, choices=[*TARGETS, *REPOSITORY_TARGETS])
    p.add_argument("--leaf", default="python", choices=list(LEAVES),
                   help="--target triton: the engine of each graph's model (default python: onnxruntime "
                        "inside Triton's Python backend, what any tritonserver can run)")
    p.add_argument("--name", help="--target triton: the entry model's name (default: the model family)")
    p.add_argument("--max-batch-size", type=int, help="--target triton: dynamic batch size (default: the "
                                                      "profile's [serve] table)")
    p.add_argument("--queue-delay-us", type=int, help="--target triton: how long a batch may wait to fill")
    p.add_argument("--instances", type=int, help="--target triton: instances per model")
    p.add_argument("--no-batching", action="store_true", help="--target triton: no dynamic batching "
                                                              "(each request alone; a load-test baseline)")
    defaults = ", ".join(f"{t.precision} for {t.name}" for t in TARGETS.values())
    p.add_argument("--precision", choices=PRECISIONS,
                   help="default: an `edgevlp compress` output's own (int8 when it holds INT8 graphs; "
                        f"another value is an error), else the profile's (the target's: {defaults})")
    p.add_argument("--profile", help="target profile TOML (export/targets/NAME.toml)")
    p.add_argument("--opset", type=int, help="ONNX opset")
    p.add_argument("--force", action="store_true", help="replace a non-empty output directory")
    p.add_argument("--skip-parity", action="store_true", help="skip the parity check (bundle unverified)")


# ----------------------------------------------------------------------------------------- serve
def _serve_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("repositories", nargs="+", metavar="REPO",
                   help="model repositories written by `edgevlp export ... --target triton`")
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1; Triton has no "
                                                      "authentication: bind others only on a trusted network)")
    p.add_argument("--port", type=int, default=8000, help="HTTP port; gRPC is PORT+1, metrics PORT+2 "
                                                          "(default 8000)")
    p.add_argument("--triton-python", help="a Python with nvidia-pytriton installed (default: "
                                           "EDGEVLP_SERVE_PYTHON, ./.serve-venv, or tritonserver on PATH)")
    p.add_argument("--no-verify", action="store_true", help="skip the sha256 check of the repositories")
    p.add_argument("--quiet", action="store_true", help="do not forward tritonserver's log")


def _run_serve(args: argparse.Namespace) -> int:
    from edgevlp.serve.repository import read_repository
    from edgevlp.serve.server import TritonServer, find_tritonserver

    records = [read_repository(r, verify=not args.no_verify) for r in args.repositories]
    install = find_tritonserver(args.triton_python)
    server = TritonServer(args.repositories, host=args.host, port=args.port, install=install,
                          on_log=None if args.quiet else lambda line: print(line, end="", file=sys.stderr))
    entries = ", ".join(f"{e['name']} ({e['task']})" for r in records for e in r["entries"])
    print(f"starting tritonserver ({install.binary}) on {entries}", flush=True)
    server.start()
    try:
        print(f"serving: HTTP {server.http_url}, gRPC {server.grpc_url}, metrics {server.metrics_url}; "
              f"Ctrl-C stops\n  e.g. edgevlp run --server {server.grpc_url} --source clip.mp4 --headless",
              flush=True)
        code = server.process.wait() if server.process is not None else 0
        from edgevlp.errors import ServerError

        raise ServerError(f"tritonserver exited on its own with code {code}; its log ends:\n{server.log_tail(20)}")
    except KeyboardInterrupt:
        print("stopping tritonserver", file=sys.stderr, flush=True)
        server.stop()
        return 0
    finally:
        server.stop()


def _run_args(p: argparse.ArgumentParser) -> None:
    from edgevlp.app.config import add_run_arguments  # argparse only: no OpenCV, no engine

    add_run_arguments(p)


def _run_run(args: argparse.Namespace) -> int:
    from edgevlp.app.main import run_command

    return run_command(args)


def _bench_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("targets", nargs="*", help="models (exported here per backend x precision; arch:NAME "
                                             "presets: real shapes, random weights, latency only) or "
                                             "bundles (measured as they are)")
    p.add_argument("--data", default="shapes:val", help="evaluation data (shapes:val, shapes:heldout, coco:PATH)")
    p.add_argument("--n", type=int, default=50, help="images for the metric (default 50)")
    p.add_argument("--frames", type=int, default=20, help="frames for the latency figures (default 20)")
    p.add_argument("--backends", default="onnxruntime,openvino",
                   help=f"comma-separated: {','.join(host_targets())}")
    p.add_argument("--precisions", default="fp32,int8", help=f"comma-separated: {','.join(PRECISIONS)}")
    p.add_argument("--max-new-tokens", type=int, default=20, help="caption token budget (all rows)")
    p.add_argument("--no-references", action="store_true",
                   help="skip the reference rows (transformers eager; optimum ORTModel for VisionEncoderDecoder)")
    p.add_argument("--output", help="directory for bench.md, bench.json and pareto.png")
    p.add_argument("--preprocess", action="store_true", help="print the preprocessing comparison "
                                                             "(C++ extension vs HF vs cv2+numpy vs memcpy)")
    load = p.add_argument_group("load test of a Triton server (edgevlp serve)")
    load.add_argument("--server", metavar="URL", help="load-test this server (grpc://HOST:8001): N simulated "
                                                      "cameras, open loop, per --streams")
    load.add_argument("--streams", default="1,2,4,8,16,32", help="camera counts (default 1,2,4,8,16,32)")
    load.add_argument("--seconds", type=float, default=10.0, help="seconds per camera count (default 10)")
    load.add_argument("--detect-fps", type=float, default=5.0, help="detections per camera a second (default 5)")
    load.add_argument("--caption-every", type=float, default=2.0, help="seconds between a camera's captions "
                                                                       "(default 2)")
    load.add_argument("--caption-streams", type=int, default=8, help="cameras that also caption (default 8)")
    load.add_argument("--metrics", metavar="URL", help="the server's metrics URL (default: gRPC port + 1)")


def _run_bench(args: argparse.Namespace) -> int:
    from edgevlp.errors import InputError

    if args.server:
        return _load_test(args)
    if not args.targets and not args.preprocess:
        raise InputError("give models or bundles to benchmark (e.g. demo-blip), --preprocess, or --server URL")
    if args.preprocess:
        from edgevlp.bench.preprocess import main as preprocess_bench

        preprocess_bench([])
    if args.targets:
        from edgevlp.bench import run_bench
        from edgevlp.bench.report import markdown_table

        rows = run_bench(args.targets, data=args.data, n=args.n, frames=args.frames,
                         backends=tuple(b for b in args.backends.split(",") if b),
                         precisions=tuple(p for p in args.precisions.split(",") if p),
                         max_new_tokens=args.max_new_tokens, output=args.output,
                         references=not args.no_references)
        from edgevlp.bench.rows import DEFINITIONS

        print(markdown_table(rows))
        print(f"\n{DEFINITIONS}")
        if args.output:
            print(f"\nwrote {args.output}/bench.md, bench.json and pareto.png")
    return 0


def _load_test(args: argparse.Namespace) -> int:
    from edgevlp.bench.serve import load_table, load_test, max_streams
    from edgevlp.errors import InputError

    if args.targets:
        raise InputError("--server load-tests the models the server holds: give no models with it")
    try:
        streams = [int(s) for s in args.streams.split(",") if s.strip()]
    except ValueError:
        raise InputError(f"--streams {args.streams!r} must be comma-separated whole numbers, e.g. 1,2,4,8") from None
    rows = load_test(args.server, streams, seconds=args.seconds, detect_fps=args.detect_fps,
                     caption_every=args.caption_every or None, caption_streams=args.caption_streams,
                     metrics_url=args.metrics,
                     on_row=lambda r: print(f"{r.streams} streams: {r.detect_fps:.1f} detections/s, p99 "
                                            f"{r.detect_p99:.0f} ms, dropped {r.dropped}", flush=True))
    print(load_table(rows))
    print(f"\nmax streams with detection p99 < {1e3 / args.detect_fps:.0f} ms and no frame dropped: "
          f"{max_streams(rows, args.detect_fps)}")
    if args.output:
        import json
        from pathlib import Path

        out = Path(args.output)
        out.mkdir(parents=True, exist_ok=True)
        (out / "load.md").write_text(load_table(rows) + "\n")
        (out / "load.json").write_text(json.dumps([r.to_dict() for r in rows], indent=1, default=str))
    return 0


# ----------------------------------------------------------------------------------------- eval
def _eval_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("target", help="model dir, demo-zoo name, hub id or bundle directory")
    p.add_argument("--data", default="shapes:val",
                   help="shapes:val | shapes:heldout | shapes:SPLIT:N[:START] | coco:PATH (default shapes:val)")
    p.add_argument("--n", type=int, help="number of images (default: all of a COCO file, 500 shape scenes)")
    p.add_argument("--json", dest="json_out", help="also write the metrics as JSON to this file")
    p.add_argument("--batch-size", type=int, default=32, help="images per batch for PyTorch models")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")


def _run_eval(args: argparse.Namespace) -> int:
    from pathlib import Path

    from edgevlp.bundle import is_bundle
    from edgevlp.data import parse_data_spec
    from edgevlp.errors import InputError

    parse_data_spec(args.data)  # fail fast (no torch import) on a bad --data
    if args.n is not None and args.n < 1:
        raise InputError(f"--n {args.n}: expected a positive number of images")
    if args.batch_size < 1:
        raise InputError(f"--batch-size {args.batch_size}: expected a positive number")
    if not is_bundle(args.target):
        from edgevlp.models import inspect_model

        inspect_model(args.target)
    from edgevlp.eval import evaluate

    result = evaluate(args.target, args.data, args.n, batch_size=args.batch_size,
                      progress=not args.no_progress)
    print(_format_eval(result))
    if args.json_out:
        path = Path(args.json_out)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(result, indent=2) + "\n")
        print(f"wrote {path}")
    return 0


def _format_eval(r: dict[str, Any]) -> str:
    from edgevlp.tasks import get_task

    labels = get_task(r["task"]).metric_labels
    rows = [(label, r[key]) for key, label in labels if key in r]
    if "heldout_pairs" in r:  # the first two metrics on the held-out colour-shape pairs only
        h = r["heldout_pairs"]
        rows += [(f"held-out pairs {label}", h[key]) for key, label in labels[:2] if key in h]
    width = max(len(name) for name, _ in rows)
    lines = [f"{r['model']} ({r['kind']}, {r['task']}) on {r['data']}: {r['n_images']} images, "
             f"{r['seconds']:.0f} s", f"  {'metric':<{width}}  value", f"  {'-' * width}  -----"]
    lines += [f"  {name:<{width}}  {value if isinstance(value, int) else f'{value:.4f}'}" for name, value in rows]
    for ex in r.get("examples", [])[:3]:
        lines.append(f"  e.g. {ex['prediction']!r}  (reference: {ex['reference']!r})")
    return "\n".join(lines)


# ------------------------------------------------------------------------------------------ zoo
def _zoo_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("action", nargs="?", default="list", choices=["list", "train"],
                   help="list the shipped models (default) or train one")
    p.add_argument("name", nargs="?", help="demo model to train: demo-blip, demo-owlvit or demo-smolvlm")
    p.add_argument("--steps", type=int, help="training steps (default: the recipe's)")
    p.add_argument("--out", help="output directory (default out/NAME); checkpoints in OUT/.train")
    p.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    p.add_argument("--batch-size", type=int, help="images per step (default: the recipe's)")
    p.add_argument("--minutes", type=float, help="time budget: the first steps are timed and --steps "
                   "becomes what fits (at most --steps); the model card gives the --steps that reproduce it")
    p.add_argument("--device", default="cpu", help="torch device: cpu (default), cuda or cuda:N")
    p.add_argument("--threads", type=int, help="torch CPU threads (default 2)")
    p.add_argument("--fp32", action="store_true", help="train in float32 (default: the recipe's; the demo "
                   "recipes autocast the forward pass to bfloat16)")
    p.add_argument("--resume", action="store_true", help="continue the checkpoint in OUT/.train (to its "
                   "step count unless --steps is given)")
    p.add_argument("--init-from", metavar="DIR", help="start from the weights of a trained model of the same "
                   "recipe (e.g. edgevlp/zoo/demo-owlvit): a warm restart with a new schedule; give a new "
                   "--seed so the batches are new")
    p.add_argument("--lr", type=float, help="peak learning rate (default: the recipe's)")
    p.add_argument("--json", action="store_true", help="list as JSON")


def _run_zoo(args: argparse.Namespace) -> int:
    from edgevlp.errors import InputError
    from edgevlp.zoo import ZOO_NAMES

    if args.action == "list":
        if args.name:
            raise InputError(f"`edgevlp zoo` takes no name; to train it: edgevlp zoo train {args.name}")
        return _zoo_list(args)
    if args.name not in ZOO_NAMES:
        raise InputError(f"edgevlp zoo train needs a demo model name: one of {', '.join(ZOO_NAMES)}"
                         + (f" (got {args.name!r})" if args.name else ""))
    for key in ("steps", "batch_size", "threads"):
        value = getattr(args, key)
        if value is not None and value < 1:
            raise InputError(f"--{key.replace('_', '-')} {value}: expected a positive number")
    if args.lr is not None and not args.lr > 0:
        raise InputError(f"--lr {args.lr}: expected a positive learning rate")
    from edgevlp.zoo.train import train

    out = train(args.name, steps=args.steps, out=args.out, seed=args.seed, resume=args.resume,
                batch_size=args.batch_size, minutes=args.minutes, device=args.device, threads=args.threads,
                bf16=False if args.fp32 else None, lr=args.lr, init_from=args.init_from)
    print(f"saved {args.name} to {out} (model card: {out / 'README.md'})")
    return 0


def _zoo_list(args: argparse.Namespace) -> int:
    from dataclasses import asdict

    from edgevlp.zoo import list_models

    models = list_models()
    if args.json:
        print(json.dumps([{**asdict(m), "path": str(m.path)} for m in models], indent=2))
        return 0
    if not models:
        print("no demo models shipped (train one: edgevlp zoo train demo-blip)")
        return 0
    lines = [f"{'name':<13} {'family':<7} {'params':>7} {'size':>8}  metrics"]
    for m in models:
        shown = []
        for where, vals in sorted(m.metrics.items()):
            keys = ("bleu4", "cider") if "cider" in vals else ("map50", "map")
            shown.append(f"{where} " + " ".join(f"{k} {vals[k]:.3f}" for k in keys if k in vals))
            if "heldout_pairs" in vals:
                shown[-1] += f" (held-out pairs map50 {vals['heldout_pairs']['map50']:.3f})"
        lines.append(f"{m.name:<13} {m.family:<7} {m.parameters / 1e6:>6.2f}M {m.size_bytes / 1e6:>6.1f}MB  "
                     + ("; ".join(shown) or "-"))
    lines.append("pass a NAME where a verb takes a model (e.g. edgevlp info demo-blip); model cards: "
                 "edgevlp/zoo/NAME/README.md")
    print("\n".join(lines))
    return 0


VERBS: tuple[Verb, ...] = (
    Verb("compress", "prune, distil and quantise a model from a TOML recipe",
         "  edgevlp compress demo-blip --recipe recipes/prune30-kd-int8.toml -o out/blip-int8\n"
         "  edgevlp compress ./my-owlvit --recipe recipes/int8-ptq.toml --calib ./frames -o out/owl",
         _compress_args, _run_compress),
    Verb("export", "export a model to a self-describing bundle (ONNX, OpenVINO IR, TensorRT-ready)",
         "  edgevlp export demo-blip -o bundles/blip-cpu --target cpu\n"
         "  edgevlp export out/blip-int8 -o bundles/blip-orin --target jetson "
         "--profile export/targets/jetson-orin-nano.toml\n"
         "  edgevlp export demo-owlvit -o triton-repo --target triton --leaf python",
         _export_args, _run_export),
    Verb("serve", "serve Triton model repositories with a real tritonserver (HTTP, gRPC, metrics)",
         "  edgevlp serve triton-repo\n"
         "  edgevlp serve repo-blip repo-owl --port 9000      # HTTP 9000, gRPC 9001, metrics 9002",
         _serve_args, _run_serve),
    Verb("run", "run the camera app on bundles (captioning or questions, and/or detection)",
         "  edgevlp run bundles/blip-cpu bundles/owl-cpu --source 0 --prompts \"person, cup\"\n"
         "  edgevlp run bundles/owl-cpu --source clip.mp4 --headless --output out/run\n"
         "  edgevlp run bundles/smolvlm-cpu --source 0 --ask \"is anyone at the door?\" --ask-every 2\n"
         "  edgevlp run bundles/owl-cpu --source 0 --prompts person --headless --serve 8080 --mqtt mqtt://127.0.0.1/cam1\n"
         "  edgevlp run --server grpc://127.0.0.1:8001 --source a.mp4 --source b.mp4 --prompts cup --headless",
         _run_args, _run_run),
    Verb("bench", "measure accuracy x latency per backend and precision",
         "  edgevlp bench demo-blip demo-owlvit --data shapes:val --output out/bench\n"
         "  edgevlp bench arch:blip-base arch:vit-gpt2 arch:owlvit-b32 --backends onnxruntime  # real size\n"
         "  edgevlp bench bundles/blip-cpu bundles/owl-orin --backends onnxruntime --n 100\n"
         "  edgevlp bench --preprocess\n"
         "  edgevlp bench --server grpc://127.0.0.1:8001 --streams 1,4,16 --seconds 5   # a Triton load test",
         _bench_args, _run_bench),
    Verb("eval", "score a model or bundle (BLEU-4/CIDEr, COCO mAP)",
         "  edgevlp eval demo-blip --data shapes:val\n"
         "  edgevlp eval bundles/owl-cpu --data shapes:heldout --json out/owl.json",
         _eval_args, _run_eval),
    Verb("info", "describe a model (family, parts, parameters, preprocessing, tokenizer) or a bundle "
         "(manifest, verified hashes)",
         "  edgevlp info ./blip-image-captioning-base\n"
         "  edgevlp info arch:blip-base        # real shapes, random weights (built once, offline)\n"
         "  edgevlp info bundles/blip-cpu --json",
         _info_args, _run_info),
    Verb("zoo", "list or train the shipped demo models",
         "  edgevlp zoo\n"
         "  edgevlp zoo train demo-blip --steps 1500 --out out/demo-blip\n"
         "  edgevlp zoo train demo-owlvit --out out/demo-owlvit --resume\n"
         "  edgevlp zoo train demo-owlvit --minutes 30 --out out/demo-owlvit    # add --device cuda on a GPU\n"
         "  edgevlp zoo train demo-owlvit --init-from edgevlp/zoo/demo-owlvit --seed 1 --steps 2000 --lr 2e-4 "
         "--out out/demo-owlvit-more",
         _zoo_args, _run_zoo),
)


def build_parser() -> argparse.ArgumentParser:
    """The full argument parser (one subparser per verb)."""
    parser = argparse.ArgumentParser(
        prog="edgevlp",
        description="Compress, export and run vision-language models on the edge.",
        epilog="examples:\n" + "\n".join(v.examples.splitlines()[0] for v in VERBS)
        + "\n\n`edgevlp VERB --help` shows each verb's options and examples.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"edgevlp {__version__}")
    parser.add_argument("--debug", action="store_true", help="show tracebacks on errors")
    sub = parser.add_subparsers(dest="verb", metavar="VERB")
    for verb in VERBS:
        p = sub.add_parser(verb.name, help=verb.help, description=verb.help,
                           epilog="examples:\n" + verb.examples,
                           formatter_class=argparse.RawDescriptionHelpFormatter)
        p.add_argument("--debug", action="store_true", default=argparse.SUPPRESS,
                       help="show tracebacks on errors")
        verb.add_arguments(p)
        p.set_defaults(run=verb.run)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``edgevlp`` command; returns the exit code."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.verb is None:
        parser.print_help(sys.stderr)
        return 2
    terminate_cleanly()
    try:
        return int(args.run(args) or 0)
    except EdgeVLPError as err:
        if args.debug:
            traceback.print_exc()
        message = " ".join(str(err).split())
        print(f"edgevlp {args.verb}: error: {message}", file=sys.stderr)
        return err.exit_code
    except KeyboardInterrupt:
        print(f"edgevlp {args.verb}: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    except Exception as err:  # noqa: BLE001 - the CLI never shows a traceback without --debug
        if args.debug:
            traceback.print_exc()
        message = " ".join(f"{type(err).__name__}: {err}".split())
        print(f"edgevlp {args.verb}: internal error: {message} (re-run with --debug for the "
              "traceback and report it)", file=sys.stderr)
        return EXIT_INTERNAL


if __name__ == "__main__":
    sys.exit(main())
