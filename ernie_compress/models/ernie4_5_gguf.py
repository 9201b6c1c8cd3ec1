"""ERNIE 4.5 (dense and MoE) weight names as llama.cpp's GGUF files hold them (``export --layout gguf``).

As llama.cpp's ``convert_hf_to_gguf.py`` writes ``Ernie4_5ForCausalLM`` (architecture ``ernie4_5``)
and ``Ernie4_5_MoeForCausalLM`` (``ernie4_5-moe``), loaded by its ``src/models/ernie4-5*.cpp``.
GGUF shapes are given here as numpy shapes (GGML's ``ne`` reversed): every matrix is [out, in].

=============================================  =====================================  =============
ours (Paddle release names, [in, out])          GGUF                                    numpy shape
=============================================  =====================================  =============
``ernie.embed_tokens.weight`` [vocab, h]        ``token_embd.weight``                   [vocab, h]
``ernie.layers.i.input_layernorm.weight``       ``blk.i.attn_norm.weight``              [h]
``...self_attn.qkv_proj.weight`` (q | k | v)    ``blk.i.attn_q`` / ``attn_k`` / ``attn_v``  [out, h] each
``...self_attn.o_proj.weight``                  ``blk.i.attn_output.weight``            [h, H*d]
``...post_attention_layernorm.weight``          ``blk.i.ffn_norm.weight``               [h]
``...mlp.up_gate_proj.weight`` (gate | up)      ``blk.i.ffn_gate`` / ``ffn_up``         [ffn, h] each
``...mlp.down_proj.weight``                     ``blk.i.ffn_down.weight``               [h, ffn]
MoE: ``...mlp.gate.weight`` (router) [h, E]     ``blk.i.ffn_gate_inp.weight``           [E, h]
MoE: ``...mlp.moe_statics.e_score_correction_bias`` [1, E]  ``blk.i.exp_probs_b.bias``   [E]
MoE: ``...mlp.experts.e.up_gate_proj`` (each e) ``blk.i.ffn_gate_exps`` / ``ffn_up_exps``  [E, f, h]
MoE: ``...mlp.experts.e.down_proj`` (each e)    ``blk.i.ffn_down_exps.weight``          [E, h, f]
MoE: ``...mlp.shared_experts.up_gate_proj``     ``blk.i.ffn_gate_shexp`` / ``ffn_up_shexp``  [S*f, h]
MoE: ``...mlp.shared_experts.down_proj``        ``blk.i.ffn_down_shexp.weight``         [h, S*f]
``ernie.norm.weight``                           ``output_norm.weight``                  [h]
``lm_head.weight`` [h, vocab] (untied only)     ``output.weight``                       [vocab, h]
=============================================  =====================================  =============

Rotary embeddings need no permutation: ERNIE 4.5 and llama.cpp's ``LLAMA_ROPE_TYPE_NORM`` both rotate
adjacent pairs (the converter permutes nothing).
"""

from __future__ import annotations

import re

import numpy as np

GGUF_ARCHITECTURES = {"Ernie4_5ForCausalLM": "ernie4_5", "Ernie4_5_MoeForCausalLM": "ernie4_5-moe"}
_FIXED = {"ernie.embed_tokens.weight": "token_embd.weight", "ernie.norm.weight": "output_norm.weight",
          "lm_head.weight": "output.weight"}
_LAYER = re.compile(r"ernie\.layers\.(\d+)\.(.+)")
_EXPERT = re.compile(r"ernie\.layers\.(\d+)\.mlp\.experts\.(\d+)\.(?:up_gate_proj|down_proj)\.weight")
_LAYER_NAMES = {"input_layernorm.weight": "attn_norm.weight", "post_attention_layernorm.weight": "ffn_norm.weight",
                "self_attn.o_proj.weight": "attn_output.weight", "mlp.down_proj.weight": "ffn_down.weight",
                "mlp.gate.weight": "ffn_gate_inp.weight", "mlp.moe_statics.e_score_correction_bias": "exp_probs_b.bias",
                "mlp.shared_experts.down_proj.weight": "ffn_down_shexp.weight"}
_SPLITS = {"self_attn.qkv_proj.weight": ("attn_q.weight", "attn_k.weight", "attn_v.weight"),
           "mlp.up_gate_proj.weight": ("ffn_gate.weight", "ffn_up.weight"),
           "mlp.shared_experts.up_gate_proj.weight": ("ffn_gate_shexp.weight", "ffn_up_shexp.weight")}
EXPERT_TENSORS = ("gate", "up", "down")  # blk.i.ffn_{which}_exps.weight


def gguf_names(name: str) -> tuple[str, ...] | None:
    """The GGUF tensor(s) of one of our weights (several: a fused one split by output columns); None
    for a routed expert's weight (stacked per layer: :func:`expert_of`) or a weight llama.cpp has not."""
    if name in _FIXED:
        return (_FIXED[name],)
    match = _LAYER.fullmatch(name)
    if match is None or _EXPERT.fullmatch(name):
        return None
    layer, leaf = match.groups()
    if leaf in _LAYER_NAMES:
        return (f"blk.{layer}.{_LAYER_NAMES[leaf]}",)
    if leaf in _SPLITS:
        return tuple(f"blk.{layer}.{part}" for part in _SPLITS[leaf])
    return None


def column_splits(config, name: str, columns: int) -> list[tuple[int, int]]:
    """Output-column ranges of a weight's GGUF parts: q, k, v (all queries, then keys, then values),
    gate, up (halves of any ``up_gate_proj``), or the whole."""
    if name.endswith(".qkv_proj.weight"):
        q, kv = config.num_attention_heads * config.head_dim, config.num_key_value_heads * config.head_dim
        return [(0, q), (q, q + kv), (q + kv, q + 2 * kv)]
    if name.endswith(".up_gate_proj.weight"):
        return [(0, columns // 2), (columns // 2, columns)]
    return [(0, columns)]


def expert_of(name: str) -> tuple[int, int] | None:
    """(layer, expert) of a routed expert's weight, else None."""
    match = _EXPERT.fullmatch(name)
    return None if match is None else (int(match.group(1)), int(match.group(2)))


def expert_weights(layer: int, expert: int) -> tuple[str, str]:
    """The (up_gate_proj, down_proj) weight names of one routed expert."""
    prefix = f"ernie.layers.{layer}.mlp.experts.{expert}."
    return prefix + "up_gate_proj.weight", prefix + "down_proj.weight"


def expert_tensor(layer: int, which: str) -> str:
    return f"blk.{layer}.ffn_{which}_exps.weight"


def float_value(name: str, value: np.ndarray) -> np.ndarray:
    """A float weight as GGUF holds it: a Linear's [in, out] (the router) as [out, in], the correction
    bias [1, E] as [E]; norms and the embedding [vocab, h] as they are."""
    if name.endswith("e_score_correction_bias"):
        return value.reshape(-1)
    if value.ndim == 2 and name != "ernie.embed_tokens.weight":
        return value.T
    return value


def order(name: str) -> tuple[int, int, str]:
    """The converter's order: the embedding, the layers in turn, the final norm and head."""
    match = _LAYER.fullmatch(name)
    if match:
        return (1, int(match.group(1)), name)
    return (0 if name == "ernie.embed_tokens.weight" else 2, 0, name)
