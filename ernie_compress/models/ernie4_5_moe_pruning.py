"""Removing routed experts from an ERNIE 4.5 MoE state: the family's half of expert pruning (the
parameter names stay here; ``prune/experts.py`` scores and chooses the experts).

In MoE layer ``i`` with kept experts ``keep[i]`` (``n`` of them, the same ``n`` in every layer so
the config keeps one ``moe_num_experts``), expert ``keep[i][j]`` becomes expert ``j``:

- the router ``mlp.gate.weight`` [h, E] keeps columns ``keep[i]`` -> [h, n];
- ``mlp.moe_statics.e_score_correction_bias`` [1, E] keeps entries ``keep[i]`` -> [1, n];
- ``mlp.experts.{keep[i][j]}.*`` is renamed ``mlp.experts.{j}.*``; the other experts are dropped.

The softmax over the ``n`` remaining logits equals the parent's softmax with the removed experts'
logits at -inf, so the pruned layer routes and mixes as the parent would with those experts masked
out of the choice (tests/prune/test_experts.py). Dense layers, attention and shared experts are
untouched. ``moe_k`` is kept, or clamped to ``n`` when fewer experts remain.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

from .ernie4_5_family import NAMES
from .ernie4_5_moe_config import _EXPERT_PARAMETER, Ernie45MoeConfig

ROUTER = "mlp.gate"  # relative to a layer: the router Linear, weight [h, E]
CORRECTION_BIAS = "mlp.moe_statics.e_score_correction_bias"  # relative to a layer: [1, E]


def _check_keep(config: Ernie45MoeConfig, keep: Mapping[int, Sequence[int]]) -> int:
    """The experts each MoE layer keeps; refuses (ValueError) lists that are not one count per layer,
    sorted, distinct and in range."""
    if sorted(keep) != config.moe_layers:
        raise ValueError(f"expert lists for layers {sorted(keep)}, but the MoE layers are {config.moe_layers}")
    counts = {len(kept) for kept in keep.values()}
    if len(counts) != 1 or not 1 <= min(counts) <= config.moe_num_experts:
        raise ValueError(f"every MoE layer must keep the same number (>= 1) of experts, got {sorted(counts)}")
    for kept in keep.values():
        if list(kept) != sorted(set(kept)) or not 0 <= kept[0] <= kept[-1] < config.moe_num_experts:
            raise ValueError(f"kept experts must be sorted, distinct and below {config.moe_num_experts}: {kept}")
    return counts.pop()


def remove_experts(state: dict[str, np.ndarray], config: Ernie45MoeConfig,
                   keep: Mapping[int, Sequence[int]]) -> tuple[dict[str, np.ndarray], Ernie45MoeConfig]:
    """``state`` with only the routed experts ``keep[layer]`` of each MoE layer, renumbered in that order,
    and the config that describes it (``moe_num_experts`` the count kept, ``moe_k`` clamped to it)."""
    n = _check_keep(config, keep)
    layer_of = {NAMES.layer(i) + "mlp.": i for i in keep}  # an MoE layer's MLP prefix -> its index
    out: dict[str, np.ndarray] = {}
    for name, value in state.items():
        match = _EXPERT_PARAMETER.match(name)
        if match is None or match.group(1) not in layer_of:
            out[name] = value
            continue
        kept = list(keep[layer_of[match.group(1)]])
        expert = int(match.group(2))
        if expert in kept:  # renumbered: its position among the kept experts
            out[f"{match.group(1)}experts.{kept.index(expert)}.{name[match.end():]}"] = value
    for i, kept in keep.items():
        index = np.asarray(kept)
        router = NAMES.in_layer(i, ROUTER)
        out[router] = np.ascontiguousarray(state[router][:, index])  # [h, E] -> [h, n]
        bias = f"{NAMES.layer(i)}{CORRECTION_BIAS}"
        if bias in state:
            out[bias] = np.ascontiguousarray(state[bias][:, index])  # [1, E] -> [1, n]
    return out, config.replace(moe_num_experts=n, moe_k=min(config.moe_k, n))
