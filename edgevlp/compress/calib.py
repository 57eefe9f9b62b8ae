"""Calibration data: real frames through the runtime's preprocessing, turned into feeds per graph.

Sources: ``shapes:SPLIT`` (procedural scenes, with their phrases), a folder of images,
``coco:PATH`` (images and the phrases of their boxes) or ``photos`` (the real photos bundled with
scikit-image / scikit-learn, :mod:`edgevlp.compress._photos`; ``auto``, the shipped recipes' source,
is resolved to ``shapes:train`` or ``photos`` per model before loading). Every frame goes through
:func:`edgevlp.runtime.preprocess.preprocess` with the adapter's :class:`PreprocessSpec`, exactly as
at run time. The text decoder is calibrated on the inputs of every step of a real greedy decode with
the FP32 graphs (so its KV cache holds what it will hold at run time); a detector's text graph on the
phrases of the frames.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from edgevlp.errors import InputError
from edgevlp.models.base import CaptionerAdapter, ModelAdapter

__all__ = ["Frame", "load_frames", "real_photos", "Feeds", "build_feeds", "decoder_feeds", "assistant_feeds",
           "assistant_answers", "greedy_answer",
           "IMAGE_SUFFIXES"]

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff")
Feeds = list[dict[str, np.ndarray]]
_FOLDER_PHRASES = ("a photo of a person", "a photo of a cat", "a red circle", "a blue square")


@dataclass(frozen=True)
class Frame:
    """A BGR uint8 frame and the phrases that describe what is in it (detector prompts)."""

    bgr: np.ndarray
    phrases: tuple[str, ...]
    name: str


def _read(path: Path) -> np.ndarray:
    img = cv2.imread(str(path), cv2.IMREAD_COLOR)
    if img is None:
        raise InputError(f"calibration image {path} cannot be read (not an image OpenCV decodes)")
    return img


def load_frames(source: str, n: int, start: int = 0, *, size: int = 224) -> list[Frame]:
    """Frames ``start .. start+n-1`` of ``source`` (fewer if a folder / COCO file has fewer).

    Example:
        >>> [f.name for f in load_frames("shapes:train", 2, start=3, size=64)]
        ['shapes:train#3', 'shapes:train#4']
    """
    text = str(source)
    if text.startswith("shapes:"):
        from edgevlp.data import SPLITS, dataset

        split = text.split(":")[1]
        if split not in SPLITS:
            raise InputError(f"calibration source {text!r}: unknown split; use shapes:{'|'.join(SPLITS)}")
        n = max(0, min(n, len(SPLITS[split]) - start))
        return [Frame(np.ascontiguousarray(s.image[..., ::-1]), tuple(s.phrases), f"{text}#{start + i}")
                for i, s in enumerate(dataset(split, n, size=size, start=start))]
    if text == "photos":
        from edgevlp.compress._photos import bundled_photos

        return [Frame(bgr, _FOLDER_PHRASES, f"photos:{name}") for name, bgr in bundled_photos(n, start)]
    if text == "auto":
        raise InputError("calibration source 'auto' is resolved per model by `edgevlp compress`; pass "
                         "shapes:SPLIT, photos, coco:PATH or a folder of images here")
    if text.startswith("coco:"):
        from edgevlp.data import load_coco

        samples = load_coco(text[len("coco:"):])[start:start + n]
        return [Frame(_read(s.image_path), tuple(dict.fromkeys(s.phrases)) or _FOLDER_PHRASES,
                      s.image_path.name) for s in samples]
    folder = Path(text).expanduser()
    if not folder.is_dir():
        raise InputError(f"calibration source {text!r} is neither shapes:SPLIT, photos, coco:PATH nor a "
                         "folder of images")
    files = sorted(p for p in folder.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES)
    if not files:
        raise InputError(f"calibration folder {folder} holds no images ({', '.join(IMAGE_SUFFIXES)})")
    return [Frame(_read(p), _FOLDER_PHRASES, p.name) for p in files[start:start + n]]


def real_photos() -> list[Frame]:
    """Three real photos (scikit-image's astronaut, coffee, chelsea) as BGR frames."""
    from skimage import data

    return [Frame(np.ascontiguousarray(getattr(data, k)()[..., ::-1]), _FOLDER_PHRASES, k)
            for k in ("astronaut", "coffee", "chelsea")]


def _pixels(adapter: ModelAdapter, frames: list[Frame]) -> list[np.ndarray]:
    from edgevlp.runtime.preprocess import preprocess

    spec = adapter.preprocess_spec()
    return [np.ascontiguousarray(preprocess(f.bgr, spec)[0]) for f in frames]


def decoder_feeds(adapter: CaptionerAdapter, graphs: dict[str, Path], pixels: list[np.ndarray],
                   max_new_tokens: int) -> dict[str, Feeds]:
    """Inputs of the per-image graphs after the vision encoder (``cross_kv``) and of every step of a
    greedy FP32 decode (empty cache first), one image at a time."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.log_severity_level = 3

    def session(role: str) -> ort.InferenceSession:
        return ort.InferenceSession(str(graphs[role]), opts, providers=["CPUExecutionProvider"])

    enc_sess, dec_sess = session("vision_encoder"), session("text_decoder")
    cross_sess = session("cross_kv") if "cross_kv" in graphs else None
    past_names = [i.name for i in dec_sess.get_inputs() if i.name.startswith("past_")]
    head_dim = adapter.kv_layout()[2]
    heads = [h for h in adapter.kv_heads() for _ in ("key", "value")]
    settings = adapter.generation_settings()
    start, eos = int(settings["decoder_start_token_id"]), settings.get("eos_token_id")
    feeds: dict[str, Feeds] = {"text_decoder": [], **({"cross_kv": []} if cross_sess else {})}
    for px in pixels:
        enc = enc_sess.run(None, {"pixel_values": px})[0]
        context = {"encoder_hidden_states": enc}
        if cross_sess is not None:
            feeds["cross_kv"].append(context)
            names = [o.name for o in cross_sess.get_outputs()]
            context = dict(zip(names, cross_sess.run(names, context)))
        past = [np.zeros((1, h, 0, head_dim), np.float32) for h in heads]
        token = start
        for _ in range(max_new_tokens):
            feed = {"input_ids": np.array([[token]], np.int64), **context, **dict(zip(past_names, past))}
            feeds["text_decoder"].append(feed)
            logits, *present = dec_sess.run(None, feed)
            token = int(logits[0, -1].argmax())
            past = present
            if eos is not None and token == int(eos):
                break
    return feeds


def assistant_feeds(adapter: ModelAdapter, graphs: dict[str, Path], frames: list[Frame],
                    max_new_tokens: int) -> dict[str, Feeds]:
    """A VLM's feeds, with the FP32 graphs and the runtime's own prompt building, per frame: the frame
    unsplit (one image: calibration of a many-tile image costs rows x cols + 1 vision calls and adds
    no new statistics), the prompt of the model's default question, and every decoder call of a greedy
    answer: the prefill, then one per token."""
    import dataclasses

    import onnxruntime as ort

    from edgevlp.runtime.assistant import chat_prompt, merge_image_features, step_feeds
    from edgevlp.runtime.vlm_processing import ChatTemplate, ImageSplitSpec, split_image

    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    vision, embed, decoder = (ort.InferenceSession(str(graphs[r]), opts, providers=["CPUExecutionProvider"])
                              for r in ("vision_encoder", "embed_tokens", "decoder"))
    prompt = adapter.prompt_settings()  # type: ignore[attr-defined]
    spec = dataclasses.replace(ImageSplitSpec.from_processor_config(prompt["processor"]), do_image_splitting=False)
    text = chat_prompt(ChatTemplate(prompt["chat_template"]), prompt, prompt["default_prompt"], 0, 0)
    ids = adapter.tokenizer(text, add_special_tokens=False)["input_ids"]
    past_names = [i.name for i in decoder.get_inputs() if i.name.startswith("past_")]
    _, kv_heads, head_dim = adapter.kv_layout()  # type: ignore[attr-defined]
    eos = adapter.generation_settings().get("eos_token_id")  # type: ignore[attr-defined]
    feeds: dict[str, Feeds] = {"vision_encoder": [], "embed_tokens": [], "decoder": []}

    def run_embed(feed: dict[str, np.ndarray]) -> list[np.ndarray]:
        return embed.run(None, feed)

    for frame in frames:
        split = split_image(frame.bgr, spec)
        vfeed = {"pixel_values": split.pixel_values, "pixel_attention_mask": split.pixel_attention_mask}
        feeds["vision_encoder"].append(vfeed)
        efeed = {"input_ids": np.asarray([ids], np.int64)}
        feeds["embed_tokens"].append(efeed)
        embeds = merge_image_features(embed.run(None, efeed)[0], ids, vision.run(None, vfeed)[0],
                                      int(prompt["image_token_id"]))
        past = {n: np.zeros((1, kv_heads, 0, head_dim), np.float32) for n in past_names}
        greedy_answer(lambda f: decoder.run(None, f), run_embed, step_feeds(embeds, past, 0), past_names, eos,
                      max_new_tokens, feeds["decoder"].append)
    return feeds


def greedy_answer(run_decoder: Callable[[dict[str, np.ndarray]], list[np.ndarray]],
                  run_embed: Callable[[dict[str, np.ndarray]], list[np.ndarray]], prefill: dict[str, np.ndarray],
                  past_names: list[str], eos: int | None, max_new_tokens: int,
                  on_feed: Callable[[dict[str, np.ndarray]], None] | None = None) -> list[int]:
    """The greedy answer tokens of a VLM decoder from its ``prefill`` feed (the prompt's embeddings, an
    empty cache), each next token embedded by ``run_embed``; ``on_feed`` sees every decoder feed."""
    from edgevlp.runtime.assistant import step_feeds

    feed, tokens = prefill, []
    length = 0
    for _ in range(max_new_tokens):
        if on_feed is not None:
            on_feed(feed)
        logits, *present = run_decoder(feed)
        length += feed["inputs_embeds"].shape[1]
        token = int(logits[0, -1].argmax())
        tokens.append(token)
        if eos is not None and token == int(eos):
            break
        embeds = run_embed({"input_ids": np.asarray([[token]], np.int64)})[0]
        feed = step_feeds(embeds, dict(zip(past_names, present)), length)
    return tokens


def assistant_answers(adapter: ModelAdapter, graphs: dict[str, Path],
                      run_decoder: Callable[[dict[str, np.ndarray]], list[np.ndarray]], feeds: Feeds,
                      max_new_tokens: int) -> list[list[int]]:
    """The greedy answers ``run_decoder`` (a candidate decoder graph) gives from the prefill feeds among
    a VLM decoder's ``feeds`` (those with an empty cache), the FP32 ``embed_tokens`` graph embedding
    each next token: what a mixed-precision fallback judged on answers compares with FP32's."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    embed = ort.InferenceSession(str(graphs["embed_tokens"]), opts, providers=["CPUExecutionProvider"])
    past_names = [k for k in feeds[0] if k.startswith("past_")]  # in the graph's order (step_feeds)
    eos = adapter.generation_settings().get("eos_token_id")  # type: ignore[attr-defined]
    prefills = [f for f in feeds if all(f[k].shape[2] == 0 for k in past_names)]
    return [greedy_answer(run_decoder, lambda f: embed.run(None, f), p, past_names, eos, max_new_tokens)
            for p in prefills]


def build_feeds(adapter: ModelAdapter, graphs: dict[str, Path], frames: list[Frame], *,
                max_new_tokens: int = 16) -> dict[str, Feeds]:
    """Feeds (role -> list of input dicts, batch 1) for every graph of ``adapter``, from ``frames``
    (its task's, see :meth:`edgevlp.tasks.Task.calibration_feeds`)."""
    from edgevlp.tasks import get_task

    return get_task(adapter.task).calibration_feeds(adapter, graphs, frames, _pixels(adapter, frames),
                                                    max_new_tokens=max_new_tokens)
