"""Head and FFN pruning for grouped-query attention (the ERNIE 4.5 decoder).

In GQA (Ainslie et al. 2023) query heads come in ``num_key_value_heads`` groups of
``num_attention_heads / num_key_value_heads`` that share one key/value head. The published layout
(one ``num_attention_heads`` / ``num_key_value_heads`` / ``intermediate_size`` for the whole
model) can only describe a model whose groups are all the same size and whose layers are all the
same shape, so pruning keeps both true and the result loads anywhere the original does:

- ``queries`` mode (default): remove the same number of query heads from every group of every
  layer — which heads, per group and layer, by importance; the KV heads all stay;
- ``groups`` mode: remove whole KV groups (a KV head and all its query heads), the same number in
  every layer, choosing the least important groups per layer.

FFN neurons (SwiGLU: a gate column, an up column and a down row each) are removed in the same
number from every layer. Importance comes from ``importance.py`` (per query head) and
:func:`swiglu_importance`.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

from ..errors import UserError
from ..models.families import family_of

MODES = ("queries", "groups")


def magnitude_query_importance(state: dict[str, np.ndarray], config) -> list[np.ndarray]:
    """Per layer, the L2 norm of each query head's qkv_proj columns and o_proj rows: [heads]."""
    d = config.head_dim
    names = family_of(config).names
    (qkv_proj,) = names.attention_in  # fused: [query heads | KV keys | KV values] columns
    scores = []
    for i in range(config.num_hidden_layers):
        qkv = state[names.in_layer(i, qkv_proj)]  # [hidden, (h + 2 kv) d]
        o = state[names.in_layer(i, names.attention_out)]  # [h d, hidden]
        scores.append(np.array([np.sqrt(np.sum(qkv[:, h * d:(h + 1) * d] ** 2) + np.sum(o[h * d:(h + 1) * d] ** 2))
                                for h in range(config.num_attention_heads)]))
    return scores


def swiglu_importance(state: dict[str, np.ndarray], config) -> list[np.ndarray]:
    """Per layer, ``||gate[:, j]|| * ||up[:, j]|| * ||down[j, :]||`` for each FFN neuron j."""
    f = config.intermediate_size
    names = family_of(config).names
    (up_gate_proj,) = names.ffn_in  # fused: [gate | up] columns
    scores = []
    for i in range(config.num_hidden_layers):
        up_gate = state[names.in_layer(i, up_gate_proj)]  # [hidden, 2 f]: gate | up
        down = state[names.in_layer(i, names.ffn_out)]  # [f, hidden]
        scores.append(np.linalg.norm(up_gate[:, :f], axis=0) * np.linalg.norm(up_gate[:, f:], axis=0)
                      * np.linalg.norm(down, axis=1))
    return scores


def _unit_parameters(config, mode: str) -> tuple[int, int]:
    """Parameters one removal unit frees across all layers: (head unit, FFN neuron)."""
    hid, d, layers = config.hidden_size, config.head_dim, config.num_hidden_layers
    q_and_o = 2 * hid * d  # a query head's qkv columns and o_proj rows
    head_unit = (config.num_key_value_heads * q_and_o if mode == "queries"  # one query head per group
                 else config.queries_per_group * q_and_o + 2 * hid * d)  # one whole group incl. k, v
    return layers * head_unit, layers * 3 * hid


def decoder_parameters(config) -> int:
    hid, d = config.hidden_size, config.head_dim
    per_layer = (hid * (config.num_attention_heads + 2 * config.num_key_value_heads) * d
                 + config.num_attention_heads * d * hid + 3 * hid * config.intermediate_size + 2 * hid)
    return config.num_hidden_layers * per_layer + hid


def plan_removal(config, mode: str, heads: float | None, ffn: float | None,
                 params: float | None) -> tuple[int, int]:
    """(head units to remove per layer, FFN neurons to remove per layer) for the requested fractions.

    A head unit is one query head per group (``queries``) or one KV group (``groups``)."""
    if mode not in MODES:
        raise UserError(f"--gqa must be one of {', '.join(MODES)}, got '{mode}'")
    units = config.queries_per_group if mode == "queries" else config.num_key_value_heads
    what = "query heads per group" if mode == "queries" else "KV groups"
    f = config.intermediate_size
    if params is None:
        r = 0
        if heads:
            r = round(heads * units)
            if not 1 <= r < units:
                raise UserError(f"--heads {heads} cannot be met in {mode} mode: this model has {units} {what}, "
                                f"so heads go in steps of 1/{units} and at least one must stay")
        n = round(ffn * f) if ffn else 0
        return r, n
    head_unit, neuron = _unit_parameters(config, mode)
    target = params * decoder_parameters(config)
    best = None
    for r in range(units):
        rest = target - r * head_unit
        if rest < -head_unit / 2:
            break
        n = max(0, math.ceil(rest / neuron))
        if n > 0.9 * f:
            continue
        balance = abs(r / units - n / f)
        if best is None or balance < best[0]:
            best = (balance, r, n)
    if best is None:
        raise UserError(f"--params {params} is more than pruning heads and 90% of the FFN can remove")
    return best[1], best[2]


def keep_lists(head_scores: Sequence[np.ndarray], ffn_scores: Sequence[np.ndarray], config, mode: str,
               remove_units: int, remove_neurons: int) -> tuple[list[list[int]], list[list[int]], list[list[int]]]:
    """Per layer: query heads to keep, KV groups to keep, FFN neurons to keep (sorted)."""
    g, kv = config.queries_per_group, config.num_key_value_heads
    heads, groups, neurons = [], [], []
    for scores, ffn in zip(head_scores, ffn_scores):
        by_group = np.asarray(scores).reshape(kv, g)  # [kv, g]: query head h is in group h // g
        if mode == "queries":
            keep_groups = list(range(kv))
            keep = [grp * g + int(j) for grp in keep_groups
                    for j in np.sort(np.argsort(-by_group[grp], kind="stable")[:g - remove_units])]
        else:
            keep_groups = sorted(int(x) for x in np.argsort(-by_group.sum(1), kind="stable")[:kv - remove_units])
            keep = [grp * g + j for grp in keep_groups for j in range(g)]
        heads.append(sorted(keep))
        groups.append(keep_groups)
        kept = np.argsort(-np.asarray(ffn), kind="stable")[:config.intermediate_size - remove_neurons]
        neurons.append(sorted(int(x) for x in kept))
    return heads, groups, neurons


def prune_gqa_state(state: dict[str, np.ndarray], config, heads: Sequence[Sequence[int]],
                    groups: Sequence[Sequence[int]], neurons: Sequence[Sequence[int]]):
    """Slice the weights to the kept heads, groups and neurons; returns (state, config)."""
    h, kv, d, f = config.num_attention_heads, config.num_key_value_heads, config.head_dim, config.intermediate_size
    shapes = {(len(a), len(b), len(c)) for a, b, c in zip(heads, groups, neurons)}
    if len(shapes) != 1:
        raise ValueError("GQA pruning must keep every layer the same shape")
    new_heads, new_kv, new_ffn = shapes.pop()
    if new_heads % new_kv:
        raise ValueError("every KV group must keep the same number of query heads")

    def span(blocks, base=0):
        return np.concatenate([base + np.arange(b * d, (b + 1) * d) for b in blocks])

    names = family_of(config).names
    (qkv_proj,), (up_gate_proj,) = names.attention_in, names.ffn_in
    out = dict(state)
    for i in range(config.num_hidden_layers):
        q_cols = span(heads[i])
        cols = np.concatenate([q_cols, span(groups[i], h * d), span(groups[i], (h + kv) * d)])
        ffn_cols = np.concatenate([np.asarray(neurons[i]), f + np.asarray(neurons[i])])
        for module, axis, index in ((qkv_proj, 1, cols), (names.attention_out, 0, q_cols),
                                    (up_gate_proj, 1, ffn_cols), (names.ffn_out, 0, np.asarray(neurons[i]))):
            weight = names.in_layer(i, module)
            out[weight] = np.ascontiguousarray(np.take(state[weight], index, axis=axis))
            bias = names.in_layer(i, module, "bias")
            if bias in state and axis == 1:
                out[bias] = np.ascontiguousarray(state[bias][index])
    new_config = config.replace(num_attention_heads=new_heads, num_key_value_heads=new_kv, intermediate_size=new_ffn)
    return out, new_config
