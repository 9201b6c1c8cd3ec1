"""ERNIE 4.5 dense decoder configuration, stored as the published ``config.json``.

Keys follow PaddleFormers' ``Ernie4_5Config`` (``model_type: ernie4_5``) as in the ERNIE-4.5-0.3B
release (Baidu 2025, "ERNIE 4.5 Technical Report"): grouped-query attention (``num_key_value_heads``
KV heads shared by ``num_attention_heads`` query heads, Ainslie et al. 2023), an explicit
``head_dim``, SwiGLU FFN, RMSNorm, RoPE with ``rope_theta`` and tied input/output embeddings.
Mixture-of-experts configs are ``ernie4_5_moe_config.py``'s (``model_type: ernie4_5_moe``); this
config refuses MoE keys under the dense ``model_type``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from ..errors import UserError
from .config import TaskHeadConfig

MODEL_TYPE = "ernie4_5"


def _with_rope_parameters(data: dict[str, Any]) -> dict[str, Any]:
    """transformers >= 5 writes RoPE's base as ``rope_parameters: {"rope_type": "default", "rope_theta": ..}``
    without a top-level ``rope_theta`` (and reads it before ``rope_theta``, as here); scaled RoPE
    variants (another ``rope_type``) are refused in one line. ``rope_parameters`` stays in ``extra``."""
    params = data.get("rope_parameters")
    if not isinstance(params, dict):
        return data
    kind = params.get("rope_type", "default")
    if kind != "default":
        raise UserError(f"config.json: 'rope_parameters' asks for rope_type '{kind}'; only the default rotary "
                        f"embeddings (rope_theta alone) are computed here")
    return dict(data, rope_theta=params["rope_theta"]) if "rope_theta" in params else data


@dataclass
class Ernie45Config(TaskHeadConfig):
    vocab_size: int = 103424
    hidden_size: int = 1024
    intermediate_size: int = 3072
    num_hidden_layers: int = 18
    num_attention_heads: int = 16
    num_key_value_heads: int = 2
    head_dim: int = 128
    max_position_embeddings: int = 131072
    rms_norm_eps: float = 1e-5
    rope_theta: float = 500000.0
    use_bias: bool = False
    tie_word_embeddings: bool = True
    hidden_act: str = "silu"
    hidden_dropout_prob: float = 0.0
    attention_probs_dropout_prob: float = 0.0
    initializer_range: float = 0.02
    pad_token_id: int = 0
    bos_token_id: int = 1
    eos_token_id: int = 2
    architectures: list[str] = field(default_factory=lambda: ["Ernie4_5ForCausalLM"])
    id2label: dict[int, str] = field(default_factory=dict)
    model_type: str = MODEL_TYPE
    extra: dict[str, Any] = field(default_factory=dict)  # unknown keys, written back unchanged

    def __post_init__(self) -> None:
        self.id2label = {int(k): str(v) for k, v in self.id2label.items()}
        for name in ("vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers",
                     "num_attention_heads", "num_key_value_heads", "head_dim", "max_position_embeddings"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
                raise UserError(f"config.json: '{name}' must be a positive integer, got {value!r}")
        if self.num_attention_heads % self.num_key_value_heads:
            raise UserError(f"config.json: num_attention_heads {self.num_attention_heads} is not a multiple "
                            f"of num_key_value_heads {self.num_key_value_heads} (GQA groups must be equal)")
        if self.head_dim % 2:
            raise UserError(f"config.json: head_dim {self.head_dim} must be even for rotary embeddings")
        if self.hidden_act != "silu":
            raise UserError(f"config.json: hidden_act '{self.hidden_act}' is not supported (ERNIE 4.5 uses silu)")
        if not 0 <= self.pad_token_id < self.vocab_size:
            raise UserError(f"config.json: pad_token_id {self.pad_token_id} is outside the vocabulary "
                            f"(size {self.vocab_size})")

    # --- derived -----------------------------------------------------------------------------
    BASE_ARCHITECTURE = "Ernie4_5Model"

    @property
    def queries_per_group(self) -> int:
        return self.num_attention_heads // self.num_key_value_heads

    def heads_in_layer(self, layer: int) -> int:
        return self.num_attention_heads

    @property
    def heads_per_layer(self) -> list[int]:
        return [self.num_attention_heads] * self.num_hidden_layers

    def ffn_in_layer(self, layer: int) -> int:
        return self.intermediate_size

    @property
    def ffn_per_layer(self) -> list[int]:
        return [self.intermediate_size] * self.num_hidden_layers

    def causal_lm_shapes(self) -> dict[str, tuple[int, ...]]:
        """Parameter names and shapes of ``Ernie4_5ForCausalLM`` (Paddle layout, [in, out]), without
        building it: what a tool that makes weights without Paddle (benchmarks/decoding.py) needs."""
        h, d, f = self.hidden_size, self.head_dim, self.intermediate_size
        heads, kv = self.num_attention_heads, self.num_key_value_heads
        shapes: dict[str, tuple[int, ...]] = {"ernie.embed_tokens.weight": (self.vocab_size, h)}
        for i in range(self.num_hidden_layers):
            p = f"ernie.layers.{i}."
            linears = {"self_attn.qkv_proj": (h, (heads + 2 * kv) * d), "self_attn.o_proj": (heads * d, h),
                       "mlp.up_gate_proj": (h, 2 * f), "mlp.down_proj": (f, h)}
            for name, shape in linears.items():
                shapes[f"{p}{name}.weight"] = shape
                if self.use_bias:
                    shapes[f"{p}{name}.bias"] = shape[1:]
            shapes[f"{p}input_layernorm.weight"] = shapes[f"{p}post_attention_layernorm.weight"] = (h,)
        shapes["ernie.norm.weight"] = (h,)
        if not self.tie_word_embeddings:
            shapes["lm_head.weight"] = (h, self.vocab_size)
        return shapes

    # --- (de)serialisation -------------------------------------------------------------------
    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "Ernie45Config":
        if isinstance(data, dict):
            cls.check_model_type(data)
            data = _with_rope_parameters(data)
        return super().from_dict(data)

    @classmethod
    def check_model_type(cls, data: dict[str, Any]) -> None:
        """Refuse a mixture-of-experts config: the dense config reads dense models only."""
        model_type = str(data.get("model_type", MODEL_TYPE))
        if data.get("moe_num_experts") or "moe" in model_type:
            raise UserError(f"config.json describes an ERNIE 4.5 mixture-of-experts model (model_type '{model_type}') "
                            f"that the dense ERNIE 4.5 config does not read: text MoE models say model_type "
                            f"'ernie4_5_moe' (the multimodal 'ernie4_5_moe_vl' ones are not supported)")
