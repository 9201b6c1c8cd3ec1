"""Model presets: the published ERNIE 3.0 sizes and small ones that train on 2 CPU cores.

Real sizes from PaddleNLP's ERNIE 3.0 configurations (vocab 40000, gelu, 2048 positions).
The ERNIE 4.5 presets (``ernie45-*``) are the dense decoder (``ernie45-0.3b`` is ERNIE-4.5-0.3B's
published config) and the mixture-of-experts decoder (``ernie45-21b-a3b`` and ``ernie45-300b-a47b``
as published, for random-weight benchmarks and memory planning; ``ernie45-moe-demo`` and
``ernie45-moe-tiny`` train here). The ``demo-*`` presets exist for the embedded demo and tests; their vocabulary size is set
from the tokenizer built on the training data, so it is left out here.
"""

from __future__ import annotations

from ..errors import UserError

_ERNIE3 = dict(vocab_size=40000, hidden_act="gelu", max_position_embeddings=2048,
               type_vocab_size=4, task_type_vocab_size=16, use_task_id=True)  # as PaddleNLP's ERNIE 3.0 configs
_DEMO = dict(hidden_act="gelu", max_position_embeddings=512, type_vocab_size=2,
             use_task_id=False, hidden_dropout_prob=0.1, attention_probs_dropout_prob=0.1)


def _size(layers: int, hidden: int, heads: int, ffn: int, base: dict) -> dict:
    return dict(base, num_hidden_layers=layers, hidden_size=hidden, num_attention_heads=heads,
                intermediate_size=ffn)


PRESETS: dict[str, dict] = {
    # name: (layers, hidden, heads, ffn)  -- ERNIE 3.0 family
    "xbase": _size(20, 1024, 16, 4096, _ERNIE3),
    "base": _size(12, 768, 12, 3072, _ERNIE3),
    "medium": _size(6, 768, 12, 3072, _ERNIE3),
    "mini": _size(6, 384, 12, 1536, _ERNIE3),
    "micro": _size(4, 384, 12, 1536, _ERNIE3),
    "nano": _size(4, 312, 12, 1248, _ERNIE3),
    # small presets for the demo (teacher plays the "xxl" role) and the tests
    "demo-teacher": _size(4, 128, 4, 512, _DEMO),
    "demo-base": _size(4, 256, 8, 1024, _DEMO),  # a wider teacher (~4x the matmul work)
    "demo-mini": _size(2, 64, 2, 256, _DEMO),
    "demo-half": _size(2, 128, 4, 512, _DEMO),  # demo-teacher's width, half its layers (--init-from-teacher)
    "tiny": _size(2, 32, 4, 64, _DEMO),
}
# ERNIE 4.5 dense decoders: ERNIE-4.5-0.3B as published, and small ones of the same architecture
_ERNIE45 = dict(model_type="ernie4_5", architectures=["Ernie4_5ForCausalLM"], hidden_act="silu",
                rms_norm_eps=1e-5, rope_theta=500000.0, tie_word_embeddings=True, use_bias=False)
_ERNIE45_DEMO = dict(_ERNIE45, max_position_embeddings=512, hidden_dropout_prob=0.1,
                     attention_probs_dropout_prob=0.1, rope_theta=10000.0)


def _decoder(layers: int, hidden: int, heads: int, kv_heads: int, head_dim: int, ffn: int, base: dict) -> dict:
    return dict(base, num_hidden_layers=layers, hidden_size=hidden, num_attention_heads=heads,
                num_key_value_heads=kv_heads, head_dim=head_dim, intermediate_size=ffn)


PRESETS.update({
    "ernie45-0.3b": dict(_decoder(18, 1024, 16, 2, 128, 3072, _ERNIE45), vocab_size=103424,
                         max_position_embeddings=131072),
    "ernie45-demo": _decoder(4, 128, 8, 2, 16, 384, _ERNIE45_DEMO),  # the teacher of the 4.5 demo
    "ernie45-mini": _decoder(2, 64, 8, 2, 8, 192, _ERNIE45_DEMO),  # 4 query heads per KV group
    "ernie45-tiny": _decoder(2, 32, 4, 2, 16, 64, _ERNIE45_DEMO),  # head size 16: GroupQueryAttention's least
})
# ERNIE 4.5 mixture-of-experts decoders. The published shapes: ERNIE-4.5-21B-A3B as transformers'
# Ernie4_5_MoeConfig defaults ("similar to baidu/ERNIE-4.5-21B-A3B-PT") with head_dim = 2560 / 20, and
# ERNIE-4.5-300B-A47B as the release's weights show it (64 + 2*8 heads of 128 in qkv_proj [8192, 10240],
# experts' up_gate_proj [8192, 7168], no shared experts, MoE from layer 3, an untied lm_head
# [8192, 103424]); both with 64 experts, RMSNorm eps 1e-5, rope_theta 500000 and 131072 positions.
_ERNIE45_MOE = dict(_ERNIE45, model_type="ernie4_5_moe", architectures=["Ernie4_5_MoeForCausalLM"],
                    moe_layer_end_index=-1, moe_layer_interval=1, moe_norm_min=1e-12, moe_use_aux_free=True,
                    moe_gate="topk", router_aux_loss_coef=1e-2)
_ERNIE45_MOE_DEMO = dict(_ERNIE45_MOE, **{k: _ERNIE45_DEMO[k] for k in (
    "max_position_embeddings", "hidden_dropout_prob", "attention_probs_dropout_prob", "rope_theta")})


def _moe(experts: int, k: int, expert_ffn: int, shared: int, start: int, base: dict) -> dict:
    return dict(base, moe_num_experts=experts, moe_k=k, moe_intermediate_size=expert_ffn,
                moe_num_shared_experts=shared, moe_layer_start_index=start)


PRESETS.update({
    "ernie45-21b-a3b": dict(_decoder(28, 2560, 20, 4, 128, 12288, _moe(64, 6, 1536, 2, 1, _ERNIE45_MOE)),
                            vocab_size=103424, max_position_embeddings=131072),
    "ernie45-300b-a47b": dict(_decoder(54, 8192, 64, 8, 128, 28672, _moe(64, 8, 3584, 0, 3, _ERNIE45_MOE)),
                              vocab_size=103424, max_position_embeddings=131072, tie_word_embeddings=False),
    # ernie45-demo's attention and width; 8 experts of a quarter of its MLP, 2 per token, one shared
    "ernie45-moe-demo": _decoder(4, 128, 8, 2, 16, 384, _moe(8, 2, 96, 1, 1, _ERNIE45_MOE_DEMO)),
    "ernie45-moe-tiny": _decoder(3, 32, 4, 2, 8, 64, _moe(4, 2, 16, 1, 1, _ERNIE45_MOE_DEMO)),  # layer 0 dense
})
ALIASES = {"xxl": "xbase", "ernie-3.0-xbase-zh": "xbase", "ernie-3.0-base-zh": "base",
           "ernie-3.0-medium-zh": "medium", "ernie-3.0-mini-zh": "mini",
           "ernie-3.0-micro-zh": "micro", "ernie-3.0-nano-zh": "nano", "ernie-4.5-0.3b": "ernie45-0.3b",
           "ernie-4.5-21b-a3b": "ernie45-21b-a3b", "ernie-4.5-300b-a47b": "ernie45-300b-a47b"}


def resolve_preset(name: str) -> dict:
    """The config keys of preset ``name`` (or an alias such as ``xxl``); a copy the caller owns."""
    key = ALIASES.get(name, name)
    if key not in PRESETS:
        names = ", ".join(sorted(PRESETS) + sorted(ALIASES))
        raise UserError(f"unknown preset '{name}' (known: {names})")
    return dict(PRESETS[key])


def is_preset(name: str) -> bool:
    return ALIASES.get(name, name) in PRESETS


def resize_preset(keys: dict, name: str, layers: int | None = None, hidden: int | None = None) -> dict:
    """Preset ``name``'s ``keys`` at another depth and/or width (a student between the presets): ``layers``
    decoder or encoder layers; a ``hidden`` size whose attention heads keep the preset's head size (their
    count follows the width, and for grouped-query attention the KV heads keep the group size) and whose
    FFN keeps the preset's ratio to the hidden size. Mixture-of-experts presets are not resized."""
    if layers is None and hidden is None:
        return keys
    if keys.get("moe_num_experts"):
        raise UserError(f"preset '{name}' is a mixture of experts: --student-layers / --student-hidden resize dense "
                        f"presets")
    keys = dict(keys)
    if layers is not None:
        keys["num_hidden_layers"] = layers
    if hidden is not None and hidden != keys["hidden_size"]:
        heads = keys["num_attention_heads"]
        head_size = keys.get("head_dim") or keys["hidden_size"] // heads
        if hidden % head_size:
            raise UserError(f"--student-hidden {hidden} is not a multiple of preset '{name}''s head size {head_size}")
        new_heads = hidden // head_size
        if "num_key_value_heads" in keys:
            group = heads // keys["num_key_value_heads"]
            if new_heads % group:
                raise UserError(f"--student-hidden {hidden} gives {new_heads} heads, not a multiple of preset "
                                f"'{name}''s {group} query heads per KV head")
            keys["num_key_value_heads"] = new_heads // group
        keys["intermediate_size"] = max(1, round(keys["intermediate_size"] * hidden / keys["hidden_size"]))
        keys.update(hidden_size=hidden, num_attention_heads=new_heads)
    return keys
