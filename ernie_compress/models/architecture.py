"""What a model family declares about its architecture, as data the algorithms ask.

A family (``families.py``) names its parameters (:class:`ParameterNames`: layer prefixes, the
attention and FFN Linears of a layer, norms, embedding and heads), the role each Linear plays
(:class:`LinearRoles`, patterns that also cover mixture-of-experts layers), the smoothing map
(:class:`ScaleMapping`: which norm or Linear feeds which Linears, the table that activation-aware
quantization needs — the shape of mlx-lm's AWQ ``ScaleConfig(prev=..., layers=[...])`` and
llm-compressor's SmoothQuant/AWQ mappings), how its attention heads sit in the weights
(:class:`HeadLayout`, which picks the pruning strategy) and which signals a distillation teacher
of the family offers (:class:`Distillation`). Nothing here imports Paddle.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from ..errors import UserError

@dataclass(frozen=True)
class ParameterNames:
    """Where a family's weights live. Module paths inside a layer are relative to the layer:
    layer ``i``'s module ``m`` is ``f"{layer_prefix}{i}.{m}"``; its weight adds ``.weight``."""

    layer_prefix: str  # "ernie.encoder.layers."
    attention: str  # the attention block inside a layer ("self_attn"): all its parameters
    attention_in: tuple[str, ...]  # the q, k, v Linears, or one fused qkv Linear
    attention_out: str  # the output projection
    ffn_in: tuple[str, ...]  # the FFN input Linear(s) (a fused SwiGLU gate|up is one)
    ffn_out: str
    norms: tuple[str, ...]  # the norms inside a layer, in forward order
    embedding: str  # the word embedding module; its weight's rows are the vocabulary
    task_heads: tuple[str, ...]  # head modules, re-initialised for a new label set
    lm_head: str | None = None  # a causal LM's own output head when the embedding is not tied
    final_norm: str | None = None  # the norm after the last layer (pre-norm decoders)
    embedding_norm: str | None = None  # the norm over the embeddings (post-norm encoders)

    def layer(self, i: int) -> str:
        """Layer ``i``'s prefix, ending in a dot."""
        return f"{self.layer_prefix}{i}."

    def in_layer(self, i: int, module: str, parameter: str = "weight") -> str:
        """The full name of ``parameter`` of ``module`` in layer ``i``."""
        return f"{self.layer_prefix}{i}.{module}.{parameter}"

    @property
    def word_embedding(self) -> str:
        return f"{self.embedding}.weight"

    def layer_modules(self) -> tuple[str, ...]:
        """Every Linear and norm of a layer named above (relative)."""
        return (*self.attention_in, self.attention_out, *self.ffn_in, self.ffn_out, *self.norms)


@dataclass(frozen=True)
class LinearRoles:
    """Per role, regular expressions over a Linear's path inside a layer (``re.fullmatch``).

    Roles: ``attention_in`` (q/k/v), ``attention_out``, ``ffn_in`` (gate/up), ``ffn_out``
    (down). Patterns rather than names, so that experts (``mlp.experts.{j}.up_proj``) and shared
    experts (``mlp.shared_experts.up_proj``) of a mixture-of-experts layer take their dense
    counterpart's role."""

    patterns: Mapping[str, tuple[str, ...]]
    _compiled: dict = field(default_factory=dict, init=False, repr=False, compare=False)

    def role_of(self, name_in_layer: str) -> str | None:
        """The role of the Linear at ``name_in_layer`` (relative to its layer), or None."""
        for role, patterns in self.patterns.items():
            if any(self._regex(p).fullmatch(name_in_layer) for p in patterns):
                return role
        return None

    def _regex(self, pattern: str) -> re.Pattern:
        if pattern not in self._compiled:
            self._compiled[pattern] = re.compile(pattern)
        return self._compiled[pattern]


@dataclass(frozen=True)
class ExpertSite:
    """Where a routed expert's Linear sits: its MoE block and its expert (full module names)."""

    block: str  # the MoE block: its ``dispatch.rows[index]`` are the token rows the expert sees
    expert: str  # the expert module
    index: int  # the expert's position in the block (the router's column)


@dataclass(frozen=True)
class RoutedExperts:
    """Where a family's mixture-of-experts layers keep their routed experts: ``pattern`` fullmatches
    the path (inside a layer) of a routed expert's Linear, with the groups ``expert`` (the expert
    module's path), ``block`` (the MoE block's) and ``index`` (the expert's number). The block
    records, while its ``keep_dispatch`` is set, its last forward's dispatch: ``dispatch.rows[index]``
    are the rows of its flattened [b*s, h] input that expert sees, in the order its Linears see them.
    Shared experts are not routed: they see every token, as dense MLPs do."""

    pattern: str
    _compiled: dict = field(default_factory=dict, init=False, repr=False, compare=False)

    def locate(self, layer: str, name_in_layer: str) -> ExpertSite | None:
        """The site of the Linear ``name_in_layer`` of the layer whose prefix is ``layer`` (ending in a
        dot), or None when it is not a routed expert's."""
        if self.pattern not in self._compiled:
            self._compiled[self.pattern] = re.compile(self.pattern)
        match = self._compiled[self.pattern].fullmatch(name_in_layer)
        if match is None:
            return None
        return ExpertSite(layer + match["block"], layer + match["expert"], int(match["index"]))


@dataclass(frozen=True)
class ScaleMapping:
    """One smoothing edge: the output of ``prev`` (a norm, or a Linear — ``part`` names which of a
    fused Linear's output columns) is the input of every Linear in ``layers``, and nothing else
    reads it. A per-channel scale divided out of ``prev`` and multiplied into the ``layers``'
    input rows leaves the model's function unchanged (SmoothQuant, Xiao et al. 2023; AWQ, Lin et
    al. 2024). Paths are relative to a layer."""

    prev: str
    layers: tuple[str, ...]
    part: str | None = None  # of a fused prev: "v" of q|k|v, "up" of gate|up


@dataclass(frozen=True)
class HeadLayout:
    """How attention heads and FFN neurons sit in a family's weights; its type picks the pruning
    strategy (``prune/strategies.py`` registers one per layout type)."""


@dataclass(frozen=True)
class SeparateHeads(HeadLayout):
    """q, k, v in their own Linears, head ``h`` in columns ``h*d:(h+1)*d`` of each and rows of the
    output projection; a two-Linear FFN. Layers may keep different head counts and FFN widths
    (the config records them per layer)."""


@dataclass(frozen=True)
class GroupedQueryHeads(HeadLayout):
    """One fused qkv Linear whose columns are all query heads, then the KV heads' keys, then their
    values (query head ``h`` reads KV head ``h // (heads / kv_heads)``); a fused SwiGLU gate|up
    Linear. The config holds one shape for every layer, so every layer keeps the same."""


@dataclass(frozen=True)
class GroupedQueryHeadsAndExperts(HeadLayout):
    """Attention heads as :class:`GroupedQueryHeads`; MLPs that are routed experts (and shared
    experts) in the mixture-of-experts layers, dense elsewhere. Not a ``GroupedQueryHeads``: its
    strategy would look for a dense MLP in every layer. Its strategy removes routed experts, the
    same number from every MoE layer (``prune/experts.py``), through ``remove_experts``: the family's
    ``(state, config, {moe layer: kept experts}) -> (state, config)``, which knows the names."""

    remove_experts: Callable[[dict, Any, Mapping[int, Sequence[int]]], tuple[dict, Any]]


DISTILLATION_SIGNALS = {"logits": "logit", "hidden_states": "hidden-state",
                        "attention_relations": "attention (MiniLM)"}


@dataclass(frozen=True)
class Distillation:
    """What a teacher of the family can give a student (``stages/distill.py``)."""

    signals: frozenset[str]  # of DISTILLATION_SIGNALS
    instead: str = ""  # what to use when a signal is missing
    # model_types of the other families whose students a teacher of this one teaches: they share its
    # tokenizer and vocabulary, so its next-token (or label) distribution is theirs to learn
    students: frozenset[str] = frozenset()

    def require(self, signal: str, title: str, supported_by: str) -> None:
        """Refuse a signal this family's teachers do not give, saying which families do."""
        if signal not in self.signals:
            raise UserError(f"{DISTILLATION_SIGNALS[signal]} distillation is for {supported_by}; "
                            f"distill {title} models with {self.instead}")
