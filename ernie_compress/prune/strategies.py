"""Pruning strategies, one per head layout (``models/architecture.HeadLayout``).

A family says how its heads sit in its weights; the prune stage asks :func:`pruning_strategy` for
the strategy registered against that layout's type (as torchao registers a handler against a
config type) and runs it, without knowing the family:

- :class:`SeparateHeads` (the ERNIE 3.0 encoder): heads ranked globally, layers may end with
  different head counts (``selection.py``), weights sliced by ``physical.py``;
- :class:`GroupedQueryHeads` (the ERNIE 4.5 decoder): the same number of query heads per KV group
  or of whole KV groups removed from every layer (``gqa.py``);
- :class:`GroupedQueryHeadsAndExperts` (ERNIE 4.5 mixture of experts): the same number of routed
  experts removed from every MoE layer (``experts.py``; heads and FFN neurons not yet).

Head importance is Michel et al. 2019 (``importance.py``); expert importance REAP (Lasby et al.
2025) or routing frequency (``experts.py``). Each strategy's ``check`` refuses, before any scoring,
what it cannot remove.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np

from ..data.batching import EncodedSplit
from ..errors import UserError
from ..models.architecture import GroupedQueryHeads, GroupedQueryHeadsAndExperts, HeadLayout, SeparateHeads
from ..models.families import family_of
from . import experts, gqa
from .importance import ffn_importance, head_importance
from .physical import prune_state
from .selection import heads_to_keep_by_fraction, neurons_to_keep_by_fraction, select_for_parameter_target


@dataclass(frozen=True)
class PruneRequest:
    """What to remove (fractions as the prune stage's options) and how to score it."""

    heads: float | None  # fraction of heads
    ffn: float | None  # fraction of FFN neurons
    params: float | None  # fraction of non-embedding parameters (chooses heads and neurons)
    importance: str  # "gradient" or "magnitude"
    importance_samples: int
    gqa: str = "queries"  # grouped-query layouts: "queries" or "groups"
    uniform: bool = False  # separate-head layouts: the same removal in every layer
    experts: float | None = None  # mixture of experts: fraction of each MoE layer's routed experts


@dataclass(frozen=True)
class PruneOutcome:
    state: dict[str, np.ndarray]
    config: Any
    heads: list[list[int]]  # query heads kept, per layer
    head_scores: list[np.ndarray]  # per layer
    ratio: float | None  # the fraction --params used, where one was chosen
    details: dict[str, Any] | None  # what is particular to a GQA strategy (reported as "gqa")
    experts: dict[str, Any] | None = None  # expert pruning: what it removed and kept (reported as is)


class PruningStrategy(Protocol):
    def check(self, request: PruneRequest, config) -> None: ...

    def prune(self, request: PruneRequest, model, state: dict[str, np.ndarray], config,
              train: EncodedSplit | None, non_embedding: int) -> PruneOutcome: ...


_STRATEGIES: dict[type, PruningStrategy] = {}


def register_strategy(layout: type[HeadLayout]) -> Callable[[type], type]:
    def wrap(cls: type) -> type:
        _STRATEGIES[layout] = cls()
        return cls
    return wrap


def pruning_strategy(config) -> PruningStrategy:
    """The strategy for the head layout ``config``'s family declares."""
    family = family_of(config)
    for layout in type(family.head_layout).__mro__:
        if layout in _STRATEGIES:
            return _STRATEGIES[layout]
    raise UserError(f"{family.title} models cannot be pruned here: no strategy for "
                    f"{type(family.head_layout).__name__}")


class _DenseMLPs:
    """A strategy for a layout without experts: refuses ``--experts``."""

    def check(self, request: PruneRequest, config) -> None:
        if request.experts is not None:
            raise UserError(f"--experts removes routed experts of a mixture-of-experts model; this "
                            f"{family_of(config).title} model has none (prune its --heads, --ffn or --params)")


@register_strategy(SeparateHeads)
class SeparateHeadPruning(_DenseMLPs):
    """Heads and FFN neurons per layer, sizes free to differ between layers (``selection.py``)."""

    def prune(self, request, model, state, config, train, non_embedding) -> PruneOutcome:
        head_scores = head_importance(request.importance, model, state, train, request.importance_samples)
        neuron_scores = ffn_importance(state, config)
        heads, neurons, ratio = self._select(request, head_scores, neuron_scores, config, non_embedding)
        pruned, new_config = prune_state(state, config, heads, neurons)
        return PruneOutcome(pruned, new_config, heads, head_scores, ratio, None)

    @staticmethod
    def _select(request: PruneRequest, head_scores, neuron_scores, config, non_embedding: int):
        """Heads and FFN neurons to keep per layer, and the ratio ``--params`` chose."""
        if request.params is not None:
            return select_for_parameter_target(head_scores, neuron_scores, config, request.params, non_embedding,
                                               request.uniform)
        heads = heads_to_keep_by_fraction(head_scores, request.heads, request.uniform) if request.heads else \
            [list(range(len(s))) for s in head_scores]
        neurons = neurons_to_keep_by_fraction(neuron_scores, request.ffn) if request.ffn else None
        return heads, neurons, None


@register_strategy(GroupedQueryHeads)
class GroupedQueryPruning(_DenseMLPs):
    """Query heads per KV group, or whole KV groups, and SwiGLU neurons: the same number from every
    layer (``gqa.py``)."""

    def prune(self, request, model, state, config, train, non_embedding) -> PruneOutcome:
        removal = gqa.plan_removal(config, request.gqa, request.heads, request.ffn, request.params)
        head_scores = (gqa.magnitude_query_importance(state, config) if request.importance == "magnitude"
                       else head_importance(request.importance, model, state, train, request.importance_samples))
        neuron_scores = gqa.swiglu_importance(state, config)
        heads, groups, neurons = gqa.keep_lists(head_scores, neuron_scores, config, request.gqa, *removal)
        pruned, new_config = gqa.prune_gqa_state(state, config, heads, groups, neurons)
        details = {"mode": request.gqa, "kv_heads": [config.num_key_value_heads, new_config.num_key_value_heads],
                   "queries_per_group": [config.queries_per_group, new_config.queries_per_group],
                   "kv_groups_kept_per_layer": groups}
        return PruneOutcome(pruned, new_config, heads, head_scores, request.params, details)


@register_strategy(GroupedQueryHeadsAndExperts)
class ExpertPruning:
    """Routed experts: the same number from every MoE layer, each layer's least important by REAP or
    routing frequency (``experts.py``); attention, dense layers and shared experts untouched."""

    def check(self, request: PruneRequest, config) -> None:
        if request.heads is not None or request.ffn is not None or request.params is not None:
            raise UserError(f"{family_of(config).title} models are pruned by --experts only for now "
                            f"(--heads, --ffn and --params are for dense models)")
        if request.experts is None:
            raise UserError(f"say how many routed experts to remove from {family_of(config).title} models: --experts R")
        experts.plan_expert_removal(config, request.experts)

    def prune(self, request, model, state, config, train, non_embedding) -> PruneOutcome:
        self.check(request, config)
        remove = experts.plan_expert_removal(config, request.experts)
        scores = experts.expert_importance(request.importance, model, train, request.importance_samples)
        keep = experts.experts_to_keep(scores, remove)
        layout = family_of(config).head_layout
        pruned, new_config = layout.remove_experts(state, config, dict(zip(config.moe_layers, keep)))
        heads = [list(range(config.heads_in_layer(i))) for i in range(config.num_hidden_layers)]
        report = {
            "experts_before": config.experts_per_layer, "experts_after": new_config.experts_per_layer,
            "removed_per_moe_layer": remove,
            "moe_k": {"before": config.moe_k, "after": new_config.moe_k,
                      "clamped": new_config.moe_k < config.moe_k},
            "importance": request.importance, "importance_samples": min(request.importance_samples, len(train)),
            "kept": {str(layer): kept for layer, kept in zip(config.moe_layers, keep)},
            "scores": {str(layer): np.round(s, 6).tolist() for layer, s in zip(config.moe_layers, scores)},
        }
        return PruneOutcome(pruned, new_config, heads, [], None, None, report)
