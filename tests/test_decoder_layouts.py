"""The KV-cache decoder design on every structural variant of the real captioners.

Each layout of the real checkpoints has a tiny random stand-in: BLIP with the vision encoder as wide as
the text decoder (blip-base) and wider (blip-large: cross-attention maps 1024 -> 768), and
VisionEncoderDecoder with different widths (an ``enc_to_dec_proj``, TrOCR-like) and equal widths (none:
vit-gpt2). For each, exported for onnxruntime (``--target cpu``) and OpenVINO (``--target openvino``):

- the cross-attention keys/values come from the ``cross_kv`` graph once per image, and the decoder step
  graph holds none of the weights that compute them (so it does only per-token work);
- greedy, beam 3, repetition penalty, batch 2 and ``min_new_tokens`` give the ids of transformers
  ``generate``, token for token.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import onnx
import pytest
import torch
from onnx import numpy_helper

LAYOUTS = [("BlipForConditionalGeneration", "base"), ("BlipForConditionalGeneration", "large"),
           ("VisionEncoderDecoderModel", "projected"), ("VisionEncoderDecoderModel", "equal")]
TARGETS = {"cpu": "onnxruntime", "openvino": "openvino"}


@pytest.fixture(scope="module", autouse=True)
def one_torch_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def layout_bundles(tmp_path_factory: pytest.TempPathFactory):
    """Factory: (arch, layout, target) -> (adapter, bundle dir), exported once per module."""
    from edgevlp.export import export_model
    from edgevlp.models import tiny_adapter

    cache: dict[tuple[str, str, str], tuple[Any, Path]] = {}
    adapters: dict[tuple[str, str], Any] = {}

    def make(arch: str, layout: str, target: str) -> tuple[Any, Path]:
        if (arch, layout, target) not in cache:
            adapter = adapters.setdefault((arch, layout), tiny_adapter(arch, layout=layout))
            out = tmp_path_factory.mktemp("layouts") / f"{arch}-{layout}-{target}"
            export_model(adapter, out, target=target, progress=False)
            cache[arch, layout, target] = (adapter, out)
        return cache[arch, layout, target]

    return make


def _pixels(model: Any) -> np.ndarray:
    from edgevlp.export.parity import parity_photos, parity_pixels
    from edgevlp.spec import PreprocessSpec

    photos = parity_pixels(PreprocessSpec.from_dict(model.manifest.preprocess), parity_photos())
    noise = np.random.default_rng(3).normal(size=(1, *photos.shape[1:])).astype(np.float32)
    return np.concatenate([photos, noise])


def test_layouts_are_the_real_variants() -> None:
    from edgevlp.models import tiny_adapter

    ved_projected = tiny_adapter("VisionEncoderDecoderModel", layout="projected").model
    ved_equal = tiny_adapter("VisionEncoderDecoderModel", layout="equal").model
    assert getattr(ved_projected, "enc_to_dec_proj", None) is not None
    assert getattr(ved_equal, "enc_to_dec_proj", None) is None  # transformers does not create it
    large = tiny_adapter("BlipForConditionalGeneration", layout="large").model.config
    assert large.vision_config.hidden_size != large.text_config.hidden_size
    assert large.text_config.encoder_hidden_size == large.vision_config.hidden_size


@pytest.mark.parametrize("arch,layout", LAYOUTS)
def test_decoder_step_holds_no_cross_attention_projection(layout_bundles, arch, layout) -> None:
    """The weights that turn image states into cross-attention keys/values are in ``cross_kv`` and
    nowhere in the step graph (compared by value, so names given by the exporter do not matter)."""
    adapter, bundle = layout_bundles(arch, layout, "cpu")
    enc = torch.randn(1, 5, adapter.model.config.vision_config.hidden_size if arch.startswith("Blip")
                      else adapter.model.config.encoder.hidden_size)
    projections = _cross_projection_weights(adapter)
    assert projections, "no cross-attention projection found: the check would be vacuous"

    def holds(path: Path, weight: np.ndarray) -> bool:
        for init in onnx.load(str(path)).graph.initializer:
            value = numpy_helper.to_array(init)
            if value.size == weight.size and (value.shape == weight.shape or value.shape == weight.T.shape):
                if np.array_equal(value.reshape(weight.shape), weight) or np.array_equal(value, weight.T):
                    return True
        return False

    for weight in projections:
        assert holds(bundle / "cross_kv.onnx", weight), "cross_kv lacks a cross-attention projection"
        assert not holds(bundle / "text_decoder.onnx", weight), "the step graph recomputes cross K/V"
    step_inputs = [i.name for i in onnx.load(str(bundle / "text_decoder.onnx")).graph.input]
    assert "encoder_hidden_states" not in step_inputs
    made = {o.name for o in onnx.load(str(bundle / "cross_kv.onnx")).graph.output}
    assert sum(n.startswith("cross_attention.") for n in made) == 2 * adapter.kv_layout()[0]
    # every per-image input of the step comes from cross_kv (its keys/values, or what the step did to
    # them, moved there by edgevlp.export.hoist)
    context = [n for n in step_inputs if n != "input_ids" and not n.startswith("past_")]
    assert context and set(context) <= made, sorted(set(context) - made)
    # ... and the cross_kv graph gives what the decoder itself computes from the encoder states
    with torch.no_grad():
        kv = adapter.cross_attention_kv(enc)
    assert kv is not None and len(kv) == adapter.kv_layout()[0]


def _cross_projection_weights(adapter: Any) -> list[np.ndarray]:
    """The key/value projection matrices of every decoder cross-attention (plus enc_to_dec_proj)."""
    model = adapter.model
    out: list[np.ndarray] = []
    if adapter.family == "blip":
        for layer in model.text_decoder.bert.encoder.layer:
            att = layer.crossattention.self
            out += [att.key.weight.detach().numpy(), att.value.weight.detach().numpy()]
    else:
        for block in model.decoder.transformer.h:
            out.append(block.crossattention.c_attn.weight.detach().numpy())
        if getattr(model, "enc_to_dec_proj", None) is not None:
            out.append(model.enc_to_dec_proj.weight.detach().numpy())
    return out


CASES = [dict(num_beams=1), dict(num_beams=3), dict(num_beams=1, repetition_penalty=1.3),
         dict(num_beams=3, repetition_penalty=1.3), dict(num_beams=1, min_new_tokens=12)]


@pytest.mark.parametrize("target", list(TARGETS))
@pytest.mark.parametrize("arch,layout", LAYOUTS)
def test_tokens_identical_to_transformers(layout_bundles, arch, layout, target) -> None:
    from edgevlp.runtime import load

    adapter, bundle = layout_bundles(arch, layout, target)
    model = load(bundle)
    assert model.cross_kv is not None and type(model.decoder).__module__.endswith(TARGETS[target])
    pixels = _pixels(model)
    with torch.no_grad():
        first = adapter.generate(torch.from_numpy(pixels), max_new_tokens=12).numpy()
    assert not (first[0] == first[1]).all(), "both photos gave the same tokens: the test would be vacuous"
    for kw in CASES:
        for rows in ([0], [0, 1], [0, 1, 2]):
            with torch.no_grad():
                ref = adapter.generate(torch.from_numpy(pixels[rows]), max_new_tokens=12, **kw).numpy()
            got = model.generate(pixels[rows], max_new_tokens=12, **kw)
            assert got.shape == ref.shape and (got == ref).all(), f"{kw} rows {rows}:\n{ref}\n{got}"


def test_decoder_without_known_cross_layout_recomputes_and_stays_exact(tmp_path, monkeypatch) -> None:
    """A decoder whose cross-attention layout the adapter does not know (``cross_attention_kv`` is
    None: TrOCR, BERT decoders) is exported as one step graph that takes the encoder states: slower,
    never wrong, and the runtime drives it the same way."""
    from edgevlp.export import export_model
    from edgevlp.models import tiny_adapter
    from edgevlp.runtime import load

    adapter = tiny_adapter("VisionEncoderDecoderModel")
    monkeypatch.setattr(adapter, "cross_attention_kv", lambda states: None)
    export_model(adapter, tmp_path / "b", target="cpu", progress=False)
    model = load(tmp_path / "b")
    assert model.cross_kv is None and set(model.manifest.graphs) == {"vision_encoder", "text_decoder"}
    assert "encoder_hidden_states" in model.decoder.input_names
    pixels = _pixels(model)
    for kw in (dict(num_beams=1), dict(num_beams=3, repetition_penalty=1.3)):
        with torch.no_grad():
            ref = adapter.generate(torch.from_numpy(pixels), max_new_tokens=10, **kw).numpy()
        assert (model.generate(pixels, max_new_tokens=10, **kw) == ref).all(), kw
