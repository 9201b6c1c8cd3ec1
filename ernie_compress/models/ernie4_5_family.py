"""The ERNIE 4.5 decoder family: parameter names, Linear roles, smoothing map, head layout.

Names as PaddleFormers' ``Ernie4_5`` (``ernie4_5.py``): pre-norm layers ``ernie.layers.{i}`` with a
fused ``self_attn.qkv_proj`` (query heads | KV keys | KV values), ``self_attn.o_proj``, a fused
SwiGLU ``mlp.up_gate_proj`` (gate | up) and ``mlp.down_proj``, RMSNorms ``input_layernorm`` and
``post_attention_layernorm``; ``ernie.norm`` at the end; the LM head tied to ``ernie.embed_tokens``
unless ``lm_head`` exists.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from .architecture import Distillation, GroupedQueryHeads, LinearRoles, ParameterNames, ScaleMapping
from .ernie4_5_config import Ernie45Config
from .ernie4_5_layout import check_hf_writable, normalize_ernie45_state, to_hf
from .family import LayoutWriter, ModelFamily

NAMES = ParameterNames(
    layer_prefix="ernie.layers.", attention="self_attn",
    attention_in=("self_attn.qkv_proj",), attention_out="self_attn.o_proj",
    ffn_in=("mlp.up_gate_proj",), ffn_out="mlp.down_proj", norms=("input_layernorm", "post_attention_layernorm"),
    embedding="ernie.embed_tokens", final_norm="ernie.norm", task_heads=("score", "lm_head"), lm_head="lm_head")

# The dense MLP, a routed expert ``mlp.experts.{j}`` or a shared expert ``mlp.shared_experts`` (ERNIE 4.5
# MoE): each a gate/up (fused or not) and a down projection. The router ``mlp.gate`` has no role.
_MLP = r"mlp(?:\.experts\.\d+|\.shared_experts)?"
LINEAR_ROLES = LinearRoles({
    "attention_in": (r"self_attn\.(?:qkv|q|k|v)_proj",),
    "attention_out": (r"self_attn\.o_proj",),
    "ffn_in": (_MLP + r"\.(?:up_gate|gate|up)_proj",),
    "ffn_out": (_MLP + r"\.down_proj",),
})

# Pre-norm: each RMSNorm feeds only its block's input Linears. The values reach o_proj through the
# attention average (a KV head's value columns feed the o_proj rows of every query head in its
# group); the up half reaches down_proj through silu(gate) * up, linear in up.
SMOOTHING = (
    ScaleMapping("input_layernorm", ("self_attn.qkv_proj",)),
    ScaleMapping("self_attn.qkv_proj", ("self_attn.o_proj",), part="v"),
    ScaleMapping("post_attention_layernorm", ("mlp.up_gate_proj",)),
    ScaleMapping("mlp.up_gate_proj", ("mlp.down_proj",), part="up"),
)


def smoothing_parts(config, part: str) -> tuple[slice, np.ndarray]:
    """Where a smoothing edge's part sits: "v", the values of the fused qkv (after the query heads and
    the keys), read by o_proj's rows of every query head in a KV head's group (query head h reads KV
    head h // (heads / kv_heads)); "up", the second half of the fused gate|up, read row for row by
    down_proj."""
    H, KV, d = config.num_attention_heads, config.num_key_value_heads, config.head_dim
    if part == "v":
        heads = np.arange(H) // (H // KV)  # the KV head of each query head
        return slice((H + KV) * d, (H + 2 * KV) * d), (heads[:, None] * d + np.arange(d)).reshape(-1)  # [H * d]
    if part == "up":
        ffn = config.intermediate_size
        return slice(ffn, 2 * ffn), np.arange(ffn)
    raise ValueError(f"no smoothing part {part!r} in ERNIE 4.5")


def _normalize(config, state, raw: dict[str, Any], ours: bool):
    return normalize_ernie45_state(state, config, raw, ours)


def student_keys(keys: dict, teacher_config) -> None:
    """A student preset takes its teacher's BOS and EOS ids (the shared tokenizer's, for
    generation); the teacher is dense or mixture-of-experts ERNIE 4.5 (``Distillation.students``)."""
    keys.update(bos_token_id=teacher_config.bos_token_id, eos_token_id=teacher_config.eos_token_id)


# PaddleFormers' default save and transformers read the same files; transformers wants "pt" metadata or
# none, PaddleFormers "np"/"pd" or none
HF_WRITER = LayoutWriter(check_hf_writable, to_hf, None)

FAMILY = ModelFamily(
    model_type="ernie4_5", title="ERNIE 4.5", config_class=Ernie45Config,
    implementation="ernie_compress.models.ernie4_5", onnx_blocks="ernie_compress.models.ernie4_5_onnx",
    architecture_for_kind={"classification": "Ernie4_5ForSequenceClassification",
                           "pair_classification": "Ernie4_5ForSequenceClassification",
                           "causal_lm": "Ernie4_5ForCausalLM"},
    other_kinds_hint="they serve classification and causal LM (lm, demo:lm) so far",
    names=NAMES, linear_roles=LINEAR_ROLES, smoothing=SMOOTHING, smoothing_parts=smoothing_parts,
    head_layout=GroupedQueryHeads(),
    distillation=Distillation(frozenset({"logits", "hidden_states"}),
                              instead="logits (--kd-weight) and hidden states (--hidden-weight)",
                              students=frozenset({"ernie4_5_moe"})),  # same tokenizer and vocabulary
    input_names=("input_ids",), writers=dict.fromkeys(("paddleformers", "hf"), HF_WRITER), normalize=_normalize,
    student_keys=student_keys,
    # Paddle 3.3.1's oneDNN CPU kernels compute the ERNIE 4.5 graph wrongly (logits off by up to
    # 0.76 with every fusion pass off; exact with plain kernels)
    onednn_exact=False)
