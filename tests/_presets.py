"""Tiny ``arch:`` presets for tests: the real tokenizer layouts and processors, tiny transformer widths.

Registered with ``monkeypatch.setitem(presets.PRESETS, name, preset)`` so a test builds one in a second.
"""

from __future__ import annotations

import copy
from typing import Any

from edgevlp.models.presets import PRESETS, Preset

__all__ = ["tiny_preset"]

_SMALL = {"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2, "num_attention_heads": 4}


def tiny_preset(base: str, name: str | None = None) -> Preset:
    """``base``'s preset with every tower shrunk to 2 layers of width 32 and 32-pixel images (vocabulary,
    special ids and processor kind unchanged)."""
    real = PRESETS[base]
    cfg: dict[str, Any] = copy.deepcopy(dict(real.config))
    proc: dict[str, Any] = copy.deepcopy(dict(real.processor))
    if cfg["model_type"] == "smolvlm":  # 32 px tiles of 8 px patches, 2 image tokens a side (scale 2)
        cfg["vision_config"].update(_SMALL, image_size=32, patch_size=8)
        cfg["text_config"].update(_SMALL, num_key_value_heads=2, head_dim=8, max_position_embeddings=512)
        cfg["scale_factor"] = 2
        proc.update(size={"longest_edge": 64}, max_image_size={"longest_edge": 32})
        return Preset(name or f"tiny-{base}", real.source, real.architecture, cfg, proc, real.tokenizer,
                      real.vocab_size, cited="tests/_presets.py", generation=real.generation)
    if cfg["model_type"] == "vision-encoder-decoder":
        cfg["encoder"].update(_SMALL, image_size=32, patch_size=8)
        cfg["decoder"].update(n_embd=32, n_layer=2, n_head=4, n_positions=64, n_ctx=64)
    else:
        cfg["vision_config"].update(_SMALL, image_size=32, patch_size=8)
        cfg["text_config"].update(_SMALL)
        cfg["projection_dim"] = 32
        if "encoder_hidden_size" in cfg["text_config"]:
            cfg["text_config"].update(encoder_hidden_size=32, max_position_embeddings=64)
    proc["size"] = {"height": 32, "width": 32}
    if "crop_size" in proc:
        proc["crop_size"] = {"height": 32, "width": 32}
    return Preset(name or f"tiny-{base}", real.source, real.architecture, cfg, proc, real.tokenizer,
                  real.vocab_size, cited="tests/_presets.py")
