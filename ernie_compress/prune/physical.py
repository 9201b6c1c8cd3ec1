"""Remove heads and FFN neurons from the weights themselves, so the model really shrinks.

Paddle Linear weights are [in, out]. Head ``h`` of a layer owns columns ``h*d:(h+1)*d`` of the
q/k/v projections (and those bias entries) and rows ``h*d:(h+1)*d`` of the output projection; FFN
neuron ``j`` owns column ``j`` of the FFN's input Linear (and its bias entry) and row ``j`` of its
output Linear (the family's ``names`` say which those are).
Slicing them out computes exactly what the unpruned model computes with those heads masked to
zero (a masked head contributes a zero block to the output projection's input). A layer left with
no heads loses its attention block entirely (its residual and LayerNorm stay); the config records
the per-layer head counts and FFN widths.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from ..models.architecture import ParameterNames
from ..models.config import ErnieConfig
from ..models.families import family_of


def _keep_columns(w: np.ndarray, keep: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(w[:, keep])


def _keep_heads(out: dict, state: dict, names: ParameterNames, i: int, keep_heads: list[int], d: int) -> None:
    """Slice layer i's attention to ``keep_heads``; none kept removes the attention block."""
    if not keep_heads:
        attention = names.layer(i) + names.attention + "."
        for name in [k for k in out if k.startswith(attention)]:
            del out[name]
        return
    cols = np.concatenate([np.arange(h * d, (h + 1) * d) for h in keep_heads])
    for proj in names.attention_in:
        weight, bias = names.in_layer(i, proj), names.in_layer(i, proj, "bias")
        out[weight] = _keep_columns(state[weight], cols)
        out[bias] = np.ascontiguousarray(state[bias][cols])
    weight = names.in_layer(i, names.attention_out)
    out[weight] = np.ascontiguousarray(state[weight][cols, :])


def _keep_neurons(out: dict, state: dict, names: ParameterNames, i: int, keep: np.ndarray) -> None:
    """Slice layer i's FFN to the neurons ``keep``; none kept removes it."""
    (ffn_in,), ffn_out = names.ffn_in, names.ffn_out
    if not keep.size:
        for module in (ffn_in, ffn_out):
            for parameter in ("weight", "bias"):
                out.pop(names.in_layer(i, module, parameter), None)
        return
    w1, b1, w2 = names.in_layer(i, ffn_in), names.in_layer(i, ffn_in, "bias"), names.in_layer(i, ffn_out)
    out[w1] = _keep_columns(state[w1], keep)
    out[b1] = np.ascontiguousarray(state[b1][keep])
    out[w2] = np.ascontiguousarray(state[w2][keep, :])


def prune_state(state: dict[str, np.ndarray], config: ErnieConfig,
                heads_to_keep: Sequence[Sequence[int]],
                neurons_to_keep: Sequence[Sequence[int]] | None = None
                ) -> tuple[dict[str, np.ndarray], ErnieConfig]:
    """A new state dict and config keeping the listed heads/neurons of each layer (sorted order)."""
    d = config.head_dim
    names = family_of(config).names
    out = dict(state)
    heads_per_layer, ffn_per_layer = [], []
    for i in range(config.num_hidden_layers):
        keep_heads = sorted(int(h) for h in heads_to_keep[i])
        if config.heads_in_layer(i) > 0:
            _keep_heads(out, state, names, i, keep_heads, d)
        heads_per_layer.append(len(keep_heads))
        width = config.ffn_in_layer(i)
        if neurons_to_keep is None or width == 0:
            ffn_per_layer.append(width)
            continue
        keep = np.array(sorted(int(j) for j in neurons_to_keep[i]), dtype=np.int64)
        _keep_neurons(out, state, names, i, keep)
        ffn_per_layer.append(int(keep.size))
    new_config = config.replace(num_attention_heads_per_layer=heads_per_layer,
                                intermediate_size_per_layer=ffn_per_layer,
                                extra=dict(config.extra))
    return out, new_config
