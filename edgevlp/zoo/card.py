"""Model cards for the demo zoo: ``metrics.json`` (the facts) and ``README.md`` rendered from it.

Example:
    >>> record_eval("edgevlp/zoo/demo-blip", evaluate("demo-blip", "shapes:val"))   # doctest: +SKIP
"""

from __future__ import annotations

import json
import os
import platform
from pathlib import Path
from typing import Any

from edgevlp._machine import cpu_name
from edgevlp.tasks import get_task

__all__ = ["environment", "write_card", "record_eval", "read_card_data"]

_TEXT = {
    "demo-blip": dict(
        what="a small BLIP captioner (`BlipForConditionalGeneration`: ViT encoder + BERT-style decoder "
             "with cross-attention) trained from scratch with the caption language-model loss and a "
             "training-only per-patch shape probe on the vision encoder (not in the saved model)",
        limits="It describes coloured geometric shapes (7 shapes x 8 colours x 3 sizes, 1-4 per image) "
               "in the templated sentences it was trained on, with counts and simple spatial relations. "
               "It knows nothing else: on a real photo it will still name coloured shapes. Its "
               "vocabulary is the 46 words of the shape captions. Colours and the sentence templates are its "
               "strong part; shapes are right for about two objects in three (see shape_accuracy), less on "
               "the held-out pairs, and spatial relations are unreliable.",
    ),
    "demo-owlvit": dict(
        what="a small OWL-ViT open-vocabulary detector (`OwlViTForObjectDetection`: ViT image encoder, "
             "CLIP-style text encoder, class and box heads) trained from scratch with a DETR-style set "
             "loss (Hungarian matching on 2 focal + 5 L1 + 2 (1 - GIoU); sigmoid focal loss of every "
             "patch against every text query; the queries of a batch are all 50 training phrases plus "
             "the 15 one-word colour and shape queries)",
        limits="It finds coloured geometric shapes prompted as \"<colour> <shape>\" (or one colour / "
               "shape word). Its tokenizer knows only the colour, shape and size words (plus \"a\", "
               "\"an\", \"shape\", \"object\"); any other word becomes <unk>, so \"person\" or \"cup\" "
               "cannot be detected. The six held-out colour-shape pairs were never prompted in training; "
               "detecting them is composition of words it has seen. It does not know the world.",
    ),
    "demo-smolvlm": dict(
        what="a small Idefics3 / SmolVLM-architecture assistant (`Idefics3ForConditionalGeneration`: "
             "SigLIP-style vision encoder on one 128 px tile, pixel-shuffle connector to 16 image tokens, "
             "3-layer Llama decoder with grouped-query attention) trained from scratch on generated "
             "questions about shape scenes and their answers (the answer tokens' cross-entropy, plus a "
             "training-only per-patch shape probe on the vision encoder, not in the saved model)",
        limits="It answers five kinds of question about coloured geometric shapes, phrased as in "
               "training: what colour is the <shape>?, what shape is the <colour> object?, how many "
               "<shape>s / shapes are there?, is there a <colour> <shape>?, where is the <colour> <shape>? "
               "(3x3 grid), and describes the scene for the default prompt \"Describe this image briefly.\" "
               "in the caption templates. Other wording is out of distribution; it knows nothing of the "
               "world, and a frame is squeezed into one 128 px square (no image splitting).",
    ),
}


def environment() -> dict[str, Any]:
    """Versions and machine, for reproducibility notes."""
    import numpy
    import torch
    import transformers

    from edgevlp import __version__
    from edgevlp.data.vocab import GENERATOR_VERSION

    return {"edgevlp": __version__, "torch": torch.__version__, "transformers": transformers.__version__,
            "numpy": numpy.__version__, "python": platform.python_version(),
            "shape_generator_version": GENERATOR_VERSION,
            "machine": f"{platform.system()} {platform.machine()}, {cpu_name()}, {os.cpu_count()} cores",
            "torch_threads": torch.get_num_threads()}


def read_card_data(model_dir: str | os.PathLike[str]) -> dict[str, Any]:
    path = Path(model_dir) / "metrics.json"
    return json.loads(path.read_text()) if path.is_file() else {}


#: what a card keeps of an eval result beside the task's metrics (``metric_labels``)
_CARD_EXTRA = frozenset({"bleu2", "bleu3", "heldout_pairs", "n_images", "seconds"})


def record_eval(model_dir: str | os.PathLike[str], result: dict[str, Any]) -> None:
    """Store an :func:`edgevlp.eval.evaluate` result under ``metrics[data]`` and re-render the card."""
    data = read_card_data(model_dir)
    task = get_task(result["task"])
    keep = {k: v for k, v in result.items() if k in {key for key, _ in task.metric_labels} | _CARD_EXTRA}
    data.setdefault("metrics", {})[result["data"]] = keep
    write_card(model_dir, data)


def _fmt(v: Any) -> str:
    return f"{v:.3f}" if isinstance(v, float) else str(v)


def write_card(model_dir: str | os.PathLike[str], data: dict[str, Any]) -> Path:
    """Write ``metrics.json`` and ``README.md`` for the model in ``model_dir``."""
    model_dir = Path(model_dir)
    (model_dir / "metrics.json").write_text(json.dumps(data, indent=1) + "\n")
    name, task = data["name"], data["task"]
    tr, env = data.get("training", {}), data.get("environment", {})
    text = _TEXT.get(name, {"what": name, "limits": "see the training code"})
    lines = [
        f"# {name}", "",
        f"**What**: {text['what']}. {data.get('parameters', 0):,} parameters, "
        f"{data.get('image_size')} px input, weights stored as float16 (loaded as float32).", "",
        "**Intended use**: the demo (`make demo`), tests, benchmarks and the compression/export examples "
        "of edgevlp. It is a stand-in for a real checkpoint that needs no download, not a useful "
        "vision-language model.", "",
        "**Data**: procedurally generated shape scenes (`edgevlp.data`, generator version "
        f"{env.get('shape_generator_version')}), drawn on the fly from the `train` split "
        f"({tr.get('images_seen', 0):,} images seen, none repeated): flat/gradient/blob/photo "
        "backgrounds, 1-4 objects, rotation, occlusion, blur/noise/JPEG/lighting. Evaluated on the "
        "disjoint `val` split and on `heldout` (scenes that each contain one colour-shape pair never "
        "drawn in training: green triangle, purple star, yellow hexagon, red cross, blue circle, "
        "orange square).", "",
        "## Metrics", "",
    ]
    metrics = data.get("metrics", {})
    keys = get_task(task).card_metrics
    if metrics:
        lines += ["| data | images | " + " | ".join(keys) + " |", "|---|---|" + "---|" * len(keys)]
        for where, m in sorted(metrics.items()):
            lines.append(f"| {where} | {m.get('n_images', '')} | " + " | ".join(_fmt(m.get(k, '')) for k in keys) + " |")
            if "heldout_pairs" in m:
                h = m["heldout_pairs"]
                lines.append(f"| {where}, held-out pairs only | {m.get('n_images', '')} | "
                             + " | ".join(_fmt(h.get(k, '')) for k in keys) + " |")
        lines.append("")
    lines.append(get_task(task).metric_note)
    targets = data.get("targets")
    if targets:
        lines += ["", f"Targets: {targets}."]
    lines += ["", "Reproduce a metric: `edgevlp eval " + name + " --data shapes:val` "
              "(add `--json out.json` for the numbers).", "", "## Limits", "", text["limits"], "",
              "## How it was made", "",
              "```", tr.get("command", ""), "```", "",
              f"- seed {tr.get('seed')}, {tr.get('steps')} steps of batch {tr.get('batch_size')}, "
              f"AdamW lr {tr.get('lr')} (warm-up {tr.get('warmup')} steps, cosine to 5 %), "
              f"weight decay {tr.get('weight_decay')}, gradient clip 1.0, no dropout"
              + (", forward pass autocast to bfloat16" if tr.get("bf16") else ""),
              f"- wall time {tr.get('wall_time_min', '?')} min on {env.get('machine')}, "
              f"{env.get('torch_threads')} torch threads (shared with other jobs: throughput varied)",
              f"- torch {env.get('torch')}, transformers {env.get('transformers')}, numpy {env.get('numpy')}, "
              f"python {env.get('python')}, edgevlp {env.get('edgevlp')}",
              "- the command writes the model to `--out` plus `--out/.train/` (fp32 checkpoint, optimizer state, "
              "log); `--resume` continues an interrupted run exactly (data are a function of seed and step)",
              ""]
    notes = data.get("notes")
    if notes:
        lines += ["## Notes", "", notes, ""]
    path = model_dir / "README.md"
    path.write_text("\n".join(lines))
    return path
