"""Read ERNIE 4.5 weights in the published Paddle layout, whichever way they were saved.

The Paddle release (PaddleFormers) names parameters ``ernie.embed_tokens.weight``,
``ernie.layers.{i}.self_attn.qkv_proj.weight`` (fused), ``...o_proj``,
``ernie.layers.{i}.mlp.up_gate_proj.weight`` (fused: gate then up), ``...down_proj``,
``ernie.layers.{i}.input_layernorm.weight``, ``...post_attention_layernorm.weight``,
``ernie.norm.weight`` and ``lm_head.weight``; Linear weights are [in, out]. Some exports keep
``q_proj``/``k_proj``/``v_proj`` and ``gate_proj``/``up_proj`` apart: they are fused here.

The PyTorch release (``model.`` prefix, [out, in] weights) also orders each head's q/k rows for
its own rotary implementation; loading it as if it were the Paddle layout would silently compute
wrong attention, so it is recognised and refused with an explanation.
"""

from __future__ import annotations

import re

import numpy as np

from ..errors import UserError
from .ernie4_5_config import Ernie45Config

PYTORCH_RELEASE = (
    "these weights are in the PyTorch layout of the ERNIE 4.5 release ('model.' names, [out, in] "
    "matrices, q/k rows ordered for the PyTorch rotary implementation); ernie-compress loads the "
    "Paddle release (e.g. ERNIE-4.5-0.3B-Paddle: 'ernie.' names, [in, out] matrices, interleaved "
    "rotary pairs). Use the Paddle release of the same model")


def _fuse(state: dict[str, np.ndarray], prefix: str, parts: tuple[str, ...], fused: str) -> None:
    names = [f"{prefix}{p}" for p in parts]
    if all(n + ".weight" in state for n in names):
        for suffix in (".weight", ".bias"):
            if all(n + suffix in state for n in names):
                state[prefix + fused + suffix] = np.concatenate([state.pop(n + suffix) for n in names], axis=-1)


def normalize_ernie45_state(state: dict[str, np.ndarray], config: Ernie45Config) -> dict[str, np.ndarray]:
    """The state in the fused Paddle layout this package's model uses (a new dict)."""
    if any(k.startswith("model.") for k in state):
        raise UserError(PYTORCH_RELEASE)
    state = dict(state)
    layer_prefixes = {m.group(0) for k in state if (m := re.match(r"ernie\.layers\.\d+\.", k))}
    for prefix in layer_prefixes:
        _fuse(state, prefix + "self_attn.", ("q_proj", "k_proj", "v_proj"), "qkv_proj")
        _fuse(state, prefix + "mlp.", ("gate_proj", "up_proj"), "up_gate_proj")
    qkv = state.get("ernie.layers.0.self_attn.qkv_proj.weight")
    expected = [config.hidden_size, (config.num_attention_heads + 2 * config.num_key_value_heads) * config.head_dim]
    if qkv is not None and list(qkv.shape) == expected[::-1] and expected[0] != expected[1]:
        raise UserError(PYTORCH_RELEASE)
    if config.tie_word_embeddings:
        state.pop("lm_head.weight", None)  # the same matrix as embed_tokens in a tied model
    return state
