"""ERNIE 4.5 mixture-of-experts configuration (``model_type: ernie4_5_moe``), stored as the published
``config.json``.

Keys as PaddleFormers 1.2.0's ``Ernie4_5_MoeConfig`` and transformers' ``Ernie4_5_MoeConfig`` read
them (Baidu 2025, "ERNIE 4.5 Technical Report"), on top of the dense ERNIE 4.5 keys
(``ernie4_5_config.py``):

- ``moe_num_experts`` routed experts per MoE layer, ``moe_k`` of them per token, each a SwiGLU
  MLP ``moe_intermediate_size`` wide; ``moe_num_shared_experts`` shared experts, run for every
  token as one SwiGLU MLP ``moe_num_shared_experts * moe_intermediate_size`` wide (both references
  size it so);
- layer ``i`` is an MoE layer when ``(i + 1) % moe_layer_interval == 0`` and
  ``moe_layer_start_index <= i <= moe_layer_end_index`` (-1 or null: the last layer); the others
  keep the dense ``intermediate_size`` MLP;
- ``moe_norm_min``: the routing weights are renormalised by their sum clamped to at least it;
- ``moe_use_aux_free``: the router's ``e_score_correction_bias`` (aux-loss-free balancing) exists
  and biases the choice of experts (true in every release; PaddleFormers drops the bias when false);
- ``router_aux_loss_coef``: the weight of the load-balancing loss in training;
- ``moe_gate``: the release names its gate ``topk``, ``topk_fused`` or ``top2_fused`` (a top-k gate
  despite the name: the 300B pre-release config pairs it with ``moe_k`` 8); all compute the
  softmax top-k routing here.

Multi-token-prediction keys (``num_nextn_predict_layers``, ``mtp_loss_scaling_factor``, ...) and
the training machinery's keys (``moe_capacity``, ``moe_group``, ``router_z_loss_coef``,
``moe_orthogonal_loss_lambda``, ...) are kept unchanged in ``extra``: they do not change the
forward pass (a capacity of [64, 64, 64] with 64 experts never drops a token in PaddleFormers, and
transformers has none). Keys that would change the routing and that this model does not compute are
refused in one line naming the key (:data:`UNSUPPORTED`).
"""

from __future__ import annotations

import math
import re
from collections import defaultdict
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from ..errors import UserError
from .ernie4_5_config import MODEL_TYPE as DENSE_MODEL_TYPE
from .ernie4_5_config import Ernie45Config

MODEL_TYPE = "ernie4_5_moe"
TOP_K_GATES = ("topk", "topk_fused", "top2_fused")  # moe_gate values that name the softmax top-k gate


def _truthy(value: Any) -> bool:
    return bool(value)


def _not_softmax(value: Any) -> bool:
    return value not in (None, "softmax")


def _above_one(value: Any) -> bool:
    return value not in (None, 0, 1)


# key -> (whether its value asks for something this model does not compute, what that is)
UNSUPPORTED: dict[str, tuple[Callable[[Any], bool], str]] = {
    "scoring_func": (_not_softmax, "router scores other than softmax"),
    "moe_gate_act": (_not_softmax, "router scores other than softmax"),
    "sinkhorn_2gate": (_truthy, "Sinkhorn-balanced gating"),
    "moe_group_experts": (_truthy, "expert groups (one expert chosen per group)"),
    "n_group": (_above_one, "group-limited routing"),
    "topk_group": (_above_one, "group-limited routing"),
    "moe_norm_gate_logits": (lambda v: v is False, "routing weights that are not renormalised"),
    "moe_use_token_type_bias": (_truthy, "per-token-type router biases"),
    "multimodel_experts": (_truthy, "multimodal expert groups (ERNIE 4.5 VL)"),
}

# a routed expert's parameter: (its MoE layer's prefix, the expert's index)
_EXPERT_PARAMETER = re.compile(r"(.*\.layers\.\d+\.mlp\.)experts\.(\d+)\.")


def _positive_int(value: Any, minimum: int = 1) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= minimum


@dataclass
class Ernie45MoeConfig(Ernie45Config):
    # dense defaults of ERNIE-4.5-21B-A3B (transformers' Ernie4_5_MoeConfig defaults)
    hidden_size: int = 2560
    intermediate_size: int = 12288  # the dense layers' MLP
    num_hidden_layers: int = 28
    num_attention_heads: int = 20
    num_key_value_heads: int = 4
    head_dim: int | None = None  # absent in the releases: hidden_size // num_attention_heads
    moe_num_experts: int = 64
    moe_k: int = 6
    moe_intermediate_size: int = 1536
    moe_num_shared_experts: int = 2
    moe_layer_start_index: int = 1
    moe_layer_end_index: int | None = -1  # -1 or null: the last layer
    moe_layer_interval: int = 1
    moe_norm_min: float = 1e-12  # the routing weights' sum is clamped to at least this before dividing
    moe_use_aux_free: bool = True  # the router has e_score_correction_bias
    moe_gate: str = "topk"
    router_aux_loss_coef: float = 1e-2  # PaddleFormers' default; the loss sums over MoE layers as it does
    architectures: list[str] = field(default_factory=lambda: ["Ernie4_5_MoeForCausalLM"])
    model_type: str = MODEL_TYPE

    def __post_init__(self) -> None:
        if self.head_dim is None and isinstance(self.hidden_size, int) and _positive_int(self.num_attention_heads):
            if self.hidden_size % self.num_attention_heads:
                raise UserError(f"config.json: hidden_size {self.hidden_size} is not divisible by "
                                f"num_attention_heads {self.num_attention_heads}; give head_dim")
            self.head_dim = self.hidden_size // self.num_attention_heads
        super().__post_init__()
        self._check_moe_sizes()
        self._check_moe_layers()
        self._refuse_unsupported()

    def _check_moe_sizes(self) -> None:
        for name in ("moe_num_experts", "moe_intermediate_size"):
            value = getattr(self, name)
            if isinstance(value, list):
                raise UserError(f"config.json: '{name}' is a list {value} (expert groups per modality, as ERNIE 4.5 "
                                f"VL has); only text MoE models with one expert group are supported")
        for name, minimum in (("moe_num_experts", 1), ("moe_k", 1), ("moe_intermediate_size", 1),
                              ("moe_num_shared_experts", 0)):
            if not _positive_int(getattr(self, name), minimum):
                raise UserError(f"config.json: '{name}' must be an integer >= {minimum}, got {getattr(self, name)!r}")
        if self.moe_k > self.moe_num_experts:
            raise UserError(f"config.json: moe_k {self.moe_k} is more than moe_num_experts {self.moe_num_experts} "
                            f"(each token is routed to moe_k different experts)")
        for name in ("moe_norm_min", "router_aux_loss_coef"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not value >= 0:
                raise UserError(f"config.json: '{name}' must be a number >= 0, got {value!r}")
        if not isinstance(self.moe_use_aux_free, bool):
            raise UserError(f"config.json: 'moe_use_aux_free' must be true or false, got {self.moe_use_aux_free!r}")

    def _check_moe_layers(self) -> None:
        if not _positive_int(self.moe_layer_start_index, 0):
            raise UserError(f"config.json: 'moe_layer_start_index' must be an integer >= 0, "
                            f"got {self.moe_layer_start_index!r}")
        if not _positive_int(self.moe_layer_interval, 1):
            raise UserError(f"config.json: 'moe_layer_interval' must be an integer >= 1, "
                            f"got {self.moe_layer_interval!r}")
        end = self.moe_layer_end_index
        if end is not None and not (_positive_int(end, -1) and end < self.num_hidden_layers):
            raise UserError(f"config.json: 'moe_layer_end_index' must be -1 (the last layer) or a layer index below "
                            f"num_hidden_layers {self.num_hidden_layers}, got {end!r}")

    def _refuse_unsupported(self) -> None:
        if self.moe_gate not in TOP_K_GATES:
            raise UserError(f"config.json: moe_gate {self.moe_gate!r} is not supported (the softmax top-k gate: "
                            f"{', '.join(TOP_K_GATES)})")
        for key, (asks, what) in UNSUPPORTED.items():
            if key in self.extra and asks(self.extra[key]):
                raise UserError(f"config.json: '{key}': {self.extra[key]!r} asks for {what}, which this toolkit does "
                                f"not compute (it routes by softmax top-k); the model is not loaded")

    @classmethod
    def check_model_type(cls, data: dict[str, Any]) -> None:
        if data.get("model_type") == DENSE_MODEL_TYPE:
            raise UserError(f"config.json: model_type '{DENSE_MODEL_TYPE}' is the dense ERNIE 4.5; a "
                            f"mixture-of-experts config says '{MODEL_TYPE}'")

    # --- derived -----------------------------------------------------------------------------
    @property
    def last_moe_layer(self) -> int:
        end = self.moe_layer_end_index
        return self.num_hidden_layers - 1 if end is None or end == -1 else end

    def is_moe_layer(self, layer: int) -> bool:
        """As both references decide it: every ``moe_layer_interval``-th layer (counting from 1) between
        the start and end indices."""
        return ((layer + 1) % self.moe_layer_interval == 0
                and self.moe_layer_start_index <= layer <= self.last_moe_layer)

    @property
    def moe_layers(self) -> list[int]:
        return [i for i in range(self.num_hidden_layers) if self.is_moe_layer(i)]

    @property
    def experts_per_layer(self) -> list[int]:
        """Routed experts of each layer (0 for a dense layer)."""
        return [self.moe_num_experts if self.is_moe_layer(i) else 0 for i in range(self.num_hidden_layers)]

    @property
    def shared_expert_size(self) -> int:
        """The width of the shared experts' one SwiGLU MLP (0: none)."""
        return self.moe_num_shared_experts * self.moe_intermediate_size

    def ffn_in_layer(self, layer: int) -> int:
        """A dense layer's MLP width, or an MoE layer's width per routed expert."""
        return self.moe_intermediate_size if self.is_moe_layer(layer) else self.intermediate_size

    @property
    def ffn_per_layer(self) -> list[int]:
        return [self.ffn_in_layer(i) for i in range(self.num_hidden_layers)]

    def causal_lm_shapes(self) -> dict[str, tuple[int, ...]]:
        """Parameter names and shapes of ``Ernie4_5_MoeForCausalLM`` (Paddle layout, [in, out]), without
        building it (``ernie4_5_moe.py``'s docstring lists them)."""
        shapes = super().causal_lm_shapes()
        for i in self.moe_layers:
            mlp = f"ernie.layers.{i}.mlp."
            for name in ("up_gate_proj", "down_proj"):
                for suffix in (".weight", ".bias"):
                    shapes.pop(f"{mlp}{name}{suffix}", None)
            shapes.update(self._moe_shapes(mlp))
        return shapes

    def _moe_shapes(self, mlp: str) -> dict[str, tuple[int, ...]]:
        h, f, n = self.hidden_size, self.moe_intermediate_size, self.moe_num_experts
        shapes: dict[str, tuple[int, ...]] = {f"{mlp}gate.weight": (h, n)}
        swiglu = [(f"experts.{e}.", f) for e in range(n)]
        if self.moe_num_shared_experts:
            swiglu.append(("shared_experts.", self.shared_expert_size))
        for prefix, width in swiglu:
            shapes[f"{mlp}{prefix}up_gate_proj.weight"] = (h, 2 * width)
            shapes[f"{mlp}{prefix}down_proj.weight"] = (width, h)
            if self.use_bias:
                shapes[f"{mlp}{prefix}up_gate_proj.bias"] = (2 * width,)
                shapes[f"{mlp}{prefix}down_proj.bias"] = (h,)
        if self.moe_use_aux_free:
            shapes[f"{mlp}moe_statics.e_score_correction_bias"] = (1, n)
        return shapes

    def active_parameters(self, shapes: Mapping[str, Sequence[int]]) -> int:
        """The parameters one token's forward pass reads: everything but the routed experts, plus
        ``moe_k`` of each MoE layer's experts (counted from ``shapes``, so a checkpoint with fewer
        experts in a layer counts what it has)."""
        dense = 0
        routed: dict[str, int] = defaultdict(int)
        experts: dict[str, set[str]] = defaultdict(set)
        for name, shape in shapes.items():
            n = int(math.prod(shape))
            match = _EXPERT_PARAMETER.match(name)
            if match is None:
                dense += n
            else:
                routed[match.group(1)] += n
                experts[match.group(1)].add(match.group(2))
        return dense + sum(size * min(self.moe_k, len(experts[layer])) // len(experts[layer])
                           for layer, size in routed.items())
