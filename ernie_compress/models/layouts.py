"""Checkpoint layouts a stage can write (``--layout``), and reading any supported layout back.

``ours``           this package's files: PaddleNLP-style names for ERNIE 3.0, the Paddle release's
                   fused names for ERNIE 4.5, per-layer head/FFN counts once pruned
``paddlenlp``      ERNIE 3.0 as PaddleNLP's ``from_pretrained`` loads it (``ernie3_layout.py``)
``paddleformers``  ERNIE 4.5 as PaddleFormers' default ``save_pretrained`` writes it: the Hugging
                   Face layout (``ernie4_5_layout.py``; MoE: ``ernie4_5_moe_layout.py``), which
                   FastDeploy-style servers read
``hf``             ERNIE 4.5 for transformers' ``Ernie4_5ForCausalLM`` (the same tensors)

A layout the model's family or structure cannot take is refused with the reason before anything
is written.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from ..errors import UserError
from .families import family_of
from .stored_codes import expand_codes

LAYOUTS = ("ours", "paddlenlp", "paddleformers", "hf")
LAYOUT_HELP = ("Checkpoint layout to write: ours (default), paddlenlp (ERNIE 3.0: loads in PaddleNLP), "
               "paddleformers or hf (ERNIE 4.5: loads in PaddleFormers / transformers and the servers that "
               "read them). A model the layout cannot express (e.g. pruned heads for paddlenlp) is refused.")
# config.json keys that describe one saver's files, not the model: dropped when a checkpoint is loaded,
# so they are never written back under another layout
SAVER_KEYS = ("source", "paddleformers_version", "transformers_version", "torch_dtype", "dtype",
              "auto_map")


def check_layout_name(layout: str) -> str:
    if layout not in LAYOUTS:
        raise UserError(f"unknown --layout '{layout}' (use one of {', '.join(LAYOUTS)})")
    return layout


def check_layout(config, layout: str, structure: bool = True) -> None:
    """Refuse a layout the model's family (or, with ``structure``, its pruned shape or head) cannot take."""
    check_layout_name(layout)
    family = family_of(config)
    if layout not in family.layouts:
        raise UserError(f"--layout {layout} is not a layout for {family.title} models "
                        f"(use one of {', '.join(family.layouts)})")
    if structure and layout != "ours":
        family.writers[layout].check(config)


def layout_files(config, state: dict[str, np.ndarray], layout: str
                 ) -> tuple[dict[str, Any], dict[str, np.ndarray], dict[str, str] | None]:
    """(config.json keys, weights by name, safetensors metadata) of ``layout``."""
    check_layout(config, layout)
    if layout == "ours":
        return config.to_dict(), state, {"format": "np"}
    writer = family_of(config).writers[layout]
    keys, state = writer.write(config, state)
    return keys, state, writer.metadata


def normalize_loaded(config, state: dict[str, np.ndarray], raw_config: dict[str, Any], ours: bool):
    """A loaded checkpoint's config and weights in this package's layout, whatever layout it was in (a
    weight-only checkpoint's stored codes expanded to its float weights: ``stored_codes.py``)."""
    if ours:
        state = expand_codes(state, config.extra.get("quantization"))
    config, state = family_of(config).normalize(config, state, raw_config, ours)
    extra = {k: v for k, v in config.extra.items() if k not in SAVER_KEYS}
    return config.replace(extra=extra), state
