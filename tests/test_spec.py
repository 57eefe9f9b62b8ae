"""PreprocessSpec: derived from each family's processor config, validated, JSON round-trip."""

from __future__ import annotations

import pytest

from edgevlp.errors import InputError, ModelLoadError
from edgevlp.spec import PreprocessSpec, PreprocessSpecError

CLIP_MEAN = [0.48145466, 0.4578275, 0.40821073]
CLIP_STD = [0.26862954, 0.26130258, 0.27577711]


def test_hf_defaults_of_each_family() -> None:
    from transformers import (BlipImageProcessor, OwlViTImageProcessor, Owlv2ImageProcessor,
                              ViTImageProcessor)

    blip = PreprocessSpec.from_processor_config(BlipImageProcessor().to_dict())
    assert (blip.height, blip.width, blip.interpolation, blip.resize_mode) == (384, 384, "bicubic",
                                                                               "stretch")
    assert list(blip.mean) == pytest.approx(CLIP_MEAN) and list(blip.std) == pytest.approx(CLIP_STD)
    vit = PreprocessSpec.from_processor_config(ViTImageProcessor().to_dict())
    assert (vit.height, vit.interpolation, vit.mean) == (224, "bilinear", (0.5, 0.5, 0.5))
    owl = PreprocessSpec.from_processor_config(OwlViTImageProcessor().to_dict())
    assert (owl.height, owl.crop, owl.interpolation) == (768, None, "bicubic")
    owl2 = PreprocessSpec.from_processor_config(Owlv2ImageProcessor().to_dict())
    assert (owl2.height, owl2.resize_mode, owl2.pad_value) == (960, "pad_square", 0.5)


def test_shortest_edge_and_crop() -> None:
    spec = PreprocessSpec.from_processor_config({
        "size": {"shortest_edge": 256}, "do_center_crop": True, "crop_size": {"height": 224, "width": 224},
        "resample": 3, "image_mean": [0.5] * 3, "image_std": [0.5] * 3})
    assert spec.resize_mode == "shortest_edge" and spec.crop == (224, 224)
    assert spec.input_shape == (1, 3, 224, 224)


@pytest.mark.parametrize("kw, field", [
    ({"height": 0}, "height"), ({"std": (1.0, 0.0, 1.0)}, "std"), ({"resize_mode": "zoom"}, "resize_mode"),
    ({"interpolation": "magic"}, "interpolation"), ({"rescale": -1.0}, "rescale"),
])
def test_invalid_specs_name_the_field(kw, field) -> None:
    base = dict(height=32, width=32)
    with pytest.raises(ModelLoadError, match=field):
        PreprocessSpec(**{**base, **kw})


def test_from_dict_refuses_unknown_keys() -> None:
    d = PreprocessSpec(height=8, width=8).to_dict()
    d["warp"] = 1
    with pytest.raises(ModelLoadError, match="warp"):
        PreprocessSpec.from_dict(d)


def test_to_dict_round_trip_keeps_tuples() -> None:
    spec = PreprocessSpec(height=256, width=256, resize_mode="shortest_edge", shortest_edge=256, crop=(224, 224),
                          mean=(0.5, 0.5, 0.5), std=(0.25, 0.5, 1.0), pad_value=0.5, source="x")
    back = PreprocessSpec.from_dict(spec.to_dict())
    assert back == spec and back.crop == (224, 224) and back.std == (0.25, 0.5, 1.0)
    assert hash(back) == hash(spec)  # the runtime caches per spec


def test_spec_errors_are_one_family_and_name_every_field() -> None:
    with pytest.raises(PreprocessSpecError) as info:
        PreprocessSpec(height=8, width=0, std=(1.0, 1.0, -1.0), crop=(8, 0), resize_mode="letterbox", shortest_edge=4)
    err = info.value
    assert isinstance(err, ModelLoadError) and isinstance(err, InputError) and isinstance(err, ValueError)
    assert not isinstance(err, TypeError)
    for field in ("width=0", "std=(1.0, 1.0, -1.0)", "crop[1] (width)=0", "shortest_edge=4 is only used"):
        assert field in str(err)
    with pytest.raises(TypeError, match=r"height='8'.*pad_value=None"):  # a wrong type is also a TypeError
        PreprocessSpec(height="8", width=8, pad_value=None)  # type: ignore[arg-type]


def test_from_dict_needs_the_size() -> None:
    d = PreprocessSpec(height=8, width=8).to_dict()
    del d["width"]
    with pytest.raises(PreprocessSpecError, match="lacks width"):
        PreprocessSpec.from_dict(d)
    d = {**PreprocessSpec(height=8, width=8).to_dict(), "mean": ["0.5", 0.5, 0.5]}
    with pytest.raises(PreprocessSpecError, match=r"mean=\('0.5', 0.5, 0.5\)"):  # refused, not parsed
        PreprocessSpec.from_dict(d)
