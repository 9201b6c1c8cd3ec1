"""Which heads and neurons to remove, from importance scores and a target.

``--heads R``: remove the ``round(R * all heads)`` least important heads, ranked globally on the
per-layer-normalised scores (so layers may end with different head counts) but keeping at least one
head per layer. ``--ffn R``: in every layer remove the fraction R of its FFN neurons with the lowest
scores. ``--params P``: remove the same fraction r of heads and of FFN neurons, with r the smallest
value whose removal takes away at least P of the encoder's (non-embedding) parameters.

Attention holds about a third of an encoder layer's parameters (4·H² of 4·H² + 2·H·FFN with
FFN = 4·H), so ``--heads 0.15`` removes only ~5% of them; ``--params 0.15`` is the way to ask for
15% fewer parameters. The report prints what was achieved.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from ..errors import UserError
from ..models.config import ErnieConfig


def heads_to_keep_by_fraction(scores: Sequence[np.ndarray], fraction: float,
                              uniform: bool = False) -> list[list[int]]:
    """Heads to keep per layer; ``uniform`` removes the same number from every layer (each layer's least
    important), so all layers keep one head count (a standard model in every checkpoint layout)."""
    if uniform:
        counts = {len(s) for s in scores}
        if len(counts) > 1:
            raise UserError(f"--uniform needs the same head count in every layer, got {[len(s) for s in scores]}")
        n = counts.pop() if counts else 0
        n_remove = int(round(fraction * n))
        if n_remove >= n:
            raise UserError(f"removing {fraction:.0%} of each layer's {n} heads would leave none; at most "
                            f"{n - 1} per layer can go")
        return [sorted(np.argsort(-s, kind="stable")[:n - n_remove].tolist()) for s in scores]
    total = sum(len(s) for s in scores)
    n_remove = int(round(fraction * total))
    removable = total - sum(1 for s in scores if len(s))  # one head stays in every layer
    if n_remove > removable:
        raise UserError(f"removing {fraction:.0%} of the heads ({n_remove} of {total}) would leave a "
                        f"layer with no heads; at most {removable} can go (--heads "
                        f"{removable / total:.2f})")
    ranked = sorted((float(s[h]), layer, h) for layer, s in enumerate(scores) for h in range(len(s)))
    keep = [set(range(len(s))) for s in scores]
    removed = 0
    for _, layer, h in ranked:
        if removed == n_remove:
            break
        if len(keep[layer]) > 1:
            keep[layer].discard(h)
            removed += 1
    return [sorted(k) for k in keep]


def neurons_to_keep_by_fraction(scores: Sequence[np.ndarray], fraction: float) -> list[list[int]]:
    keep = []
    for s in scores:
        n_keep = max(1, len(s) - int(round(fraction * len(s)))) if len(s) else 0
        keep.append(sorted(np.argsort(-s, kind="stable")[:n_keep].tolist()))
    return keep


def encoder_parameters(config: ErnieConfig) -> int:
    """Parameters of the encoder layers (what head/FFN pruning can remove)."""
    h, d = config.hidden_size, config.head_dim
    total = 0
    for i in range(config.num_hidden_layers):
        heads, ffn = config.heads_in_layer(i), config.ffn_in_layer(i)
        if heads:
            total += 3 * (h * heads * d + heads * d) + heads * d * h + h
        if ffn:
            total += h * ffn + ffn + ffn * h + h
        total += 4 * h  # two LayerNorms
    return total


def removed_fraction(config: ErnieConfig, heads: Sequence[Sequence[int]],
                     neurons: Sequence[Sequence[int]] | None, non_embedding_total: int) -> float:
    pruned = config.replace(num_attention_heads_per_layer=[len(k) for k in heads],
                            intermediate_size_per_layer=[len(k) for k in neurons] if neurons is not None
                            else config.ffn_per_layer)
    return (encoder_parameters(config) - encoder_parameters(pruned)) / non_embedding_total


def select_for_parameter_target(head_scores, ffn_scores, config: ErnieConfig, target: float,
                                non_embedding_total: int, uniform: bool = False):
    """(heads_to_keep, neurons_to_keep, r) removing >= ``target`` of non-embedding parameters."""
    lo, hi = 0.0, 1.0
    best = None
    for _ in range(30):
        r = (lo + hi) / 2
        try:
            heads = heads_to_keep_by_fraction(head_scores, r, uniform)
        except UserError:
            hi = r
            continue
        neurons = neurons_to_keep_by_fraction(ffn_scores, r)
        if removed_fraction(config, heads, neurons, non_embedding_total) >= target:
            best, hi = (heads, neurons, r), r
        else:
            lo = r
    if best is None:
        raise UserError(f"--params {target} cannot be reached by removing heads and FFN neurons "
                        f"(every layer keeps at least one of each)")
    return best
