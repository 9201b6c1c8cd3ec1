"""Remove heads and FFN neurons from the weights themselves, so the model really shrinks.

Paddle Linear weights are [in, out]. Head ``h`` of a layer owns columns ``h*d:(h+1)*d`` of the
q/k/v projections (and those bias entries) and rows ``h*d:(h+1)*d`` of the output projection; FFN
neuron ``j`` owns column ``j`` of ``linear1`` (and its bias entry) and row ``j`` of ``linear2``.
Slicing them out computes exactly what the unpruned model computes with those heads masked to
zero (a masked head contributes a zero block to the output projection's input). A layer left with
no heads loses its attention block entirely (its residual and LayerNorm stay); the config records
the per-layer head counts and FFN widths.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from ..models.config import ErnieConfig


def _keep_columns(w: np.ndarray, keep: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(w[:, keep])


def prune_state(state: dict[str, np.ndarray], config: ErnieConfig,
                heads_to_keep: Sequence[Sequence[int]],
                neurons_to_keep: Sequence[Sequence[int]] | None = None
                ) -> tuple[dict[str, np.ndarray], ErnieConfig]:
    """A new state dict and config keeping the listed heads/neurons of each layer (sorted order)."""
    d = config.head_dim
    out = dict(state)
    heads_per_layer, ffn_per_layer = [], []
    for i in range(config.num_hidden_layers):
        prefix = f"ernie.encoder.layers.{i}."
        keep_heads = sorted(int(h) for h in heads_to_keep[i])
        attn = prefix + "self_attn."
        if config.heads_in_layer(i) > 0:
            if keep_heads:
                cols = np.concatenate([np.arange(h * d, (h + 1) * d) for h in keep_heads])
                for proj in ("q_proj", "k_proj", "v_proj"):
                    out[attn + proj + ".weight"] = _keep_columns(state[attn + proj + ".weight"], cols)
                    out[attn + proj + ".bias"] = np.ascontiguousarray(state[attn + proj + ".bias"][cols])
                out[attn + "out_proj.weight"] = np.ascontiguousarray(state[attn + "out_proj.weight"][cols, :])
            else:
                for name in [k for k in out if k.startswith(attn)]:
                    del out[name]
        heads_per_layer.append(len(keep_heads))

        width = config.ffn_in_layer(i)
        if neurons_to_keep is None or width == 0:
            ffn_per_layer.append(width)
            continue
        keep = np.array(sorted(int(j) for j in neurons_to_keep[i]), dtype=np.int64)
        if keep.size:
            out[prefix + "linear1.weight"] = _keep_columns(state[prefix + "linear1.weight"], keep)
            out[prefix + "linear1.bias"] = np.ascontiguousarray(state[prefix + "linear1.bias"][keep])
            out[prefix + "linear2.weight"] = np.ascontiguousarray(state[prefix + "linear2.weight"][keep, :])
        else:
            for suffix in ("linear1.weight", "linear1.bias", "linear2.weight", "linear2.bias"):
                out.pop(prefix + suffix, None)
        ffn_per_layer.append(int(keep.size))
    new_config = config.replace(num_attention_heads_per_layer=heads_per_layer,
                                intermediate_size_per_layer=ffn_per_layer,
                                extra=dict(config.extra))
    return out, new_config
