"""A NumPy forward of an ERNIE 4.5 causal LM (dense or mixture of experts), streamed layer by layer
from a lazy checkpoint: the reference a streamed decoder export (``streamed_decoder.py``) is verified
against where the Paddle model cannot be built (the checkpoint does not fit in memory).

The math is ``models/ernie4_5.py``'s, in float32 as dygraph computes it: token embedding; per
layer pre-norm RMSNorm (Zhang & Sennrich 2019), causal grouped-query attention (Ainslie et al.
2023) with rotary position embeddings on *interleaved* pairs (Su et al. 2021; dimensions (2i, 2i+1)
rotated by ``pos * theta^(-2i/d)``, as the Paddle release does) and the additive -1e4 mask, a SwiGLU
FFN (Shazeer 2020: ``down(silu(gate) * up)``, gate half first), or in the MoE layers the config names
``ernie4_5_moe.py``'s routing (softmax router in float32, the top ``moe_k`` experts of ``p +
e_score_correction_bias``, mixed by their unbiased ``p`` over its sum clamped to ``moe_norm_min``,
plus the shared experts); final RMSNorm; the head tied to the embedding table or ``lm_head``. The
weights are the checkpoint's own (a weight-only checkpoint stores them dequantized, so this is the
quantized model computed exactly).

Every sequence is run whole (no cache) and all of them go through one layer before the next is
read: one pass over the checkpoint, one layer's weights (or the embedding and head) in memory.
"""

from __future__ import annotations

import math

import numpy as np

from ..lazy_checkpoint import REST, LazyCheckpoint
from ..models.ernie4_5_moe_onnx import MoENames, paddle_names
from ..models.ernie4_5_onnx import LayerNames
from ..models.families import family_of

MASKED = -1e4  # the additive mask value of models/ernie4_5.py
REFERENCE = "streamed NumPy reference"  # what an export verified against it names in its manifest


def rms_norm(x: np.ndarray, weight: np.ndarray, eps: float) -> np.ndarray:
    """``x / sqrt(mean(x^2) + eps) * weight`` over the last axis: x [s, hidden]."""
    return x / np.sqrt(np.mean(np.square(x), axis=-1, keepdims=True) + np.float32(eps)) * weight


def rope_tables(length: int, head_dim: int, theta: float) -> tuple[np.ndarray, np.ndarray]:
    """cos, sin [s, 1, d] of positions 0 .. s-1, each frequency repeated for its interleaved pair."""
    inv_freq = np.exp(np.arange(0, head_dim, 2, dtype=np.float32) * np.float32(-math.log(theta) / head_dim))  # [d/2]
    angles = np.arange(length, dtype=np.float32)[:, None] * inv_freq[None, :]  # [s, d/2]
    angles = np.repeat(angles, 2, axis=1)  # [s, d]: (f0, f0, f1, f1, ...)
    return np.cos(angles)[:, None, :], np.sin(angles)[:, None, :]


def rotate(x: np.ndarray, cos: np.ndarray, sin: np.ndarray) -> np.ndarray:
    """Interleaved rotary embedding: x [s, heads, d]; pairs (2i, 2i+1) -> rotated by their angle."""
    rotated = np.empty_like(x)
    rotated[..., 0::2], rotated[..., 1::2] = -x[..., 1::2], x[..., 0::2]  # [-x1, x0, -x3, x2 ...]
    return x * cos + rotated * sin


def linear(x: np.ndarray, weights: dict[str, np.ndarray], prefix: str) -> np.ndarray:
    """A Paddle Linear: x [s, in] @ W [in, out] (+ bias where the checkpoint has one)."""
    y = x @ weights[f"{prefix}.weight"]
    bias = weights.get(f"{prefix}.bias")
    return y if bias is None else y + bias


def attention(x: np.ndarray, weights: dict[str, np.ndarray], names: LayerNames, config) -> np.ndarray:
    """Causal GQA over x [s, hidden] (normed): query head h reads KV head h // (H / KV)."""
    H, KV, d = config.num_attention_heads, config.num_key_value_heads, config.head_dim
    s = x.shape[0]
    mix = linear(x, weights, names.qkv).reshape(s, H + 2 * KV, d)
    q, k, v = mix[:, :H], mix[:, H:H + KV], mix[:, H + KV:]  # [s, h|kv, d]
    cos, sin = rope_tables(s, d, config.rope_theta)
    q, k = rotate(q, cos, sin), rotate(k, cos, sin)
    q = q.reshape(s, KV, H // KV, d).transpose(1, 2, 0, 3)  # [kv, g, s, d]
    k, v = k.transpose(1, 0, 2)[:, None], v.transpose(1, 0, 2)[:, None]  # [kv, 1, s, d]
    future = np.triu(np.ones((s, s), dtype=bool), k=1)  # [s, s]: key after query
    scores = q @ k.transpose(0, 1, 3, 2) * np.float32(d ** -0.5) + np.where(future, MASKED, 0).astype(np.float32)
    scores = np.exp(scores - scores.max(axis=-1, keepdims=True))
    out = (scores / scores.sum(axis=-1, keepdims=True)) @ v  # [kv, g, s, d]
    return linear(out.transpose(2, 0, 1, 3).reshape(s, H * d), weights, names.out)


def swiglu(x: np.ndarray, weights: dict[str, np.ndarray], up_gate: str, down: str) -> np.ndarray:
    """``down(silu(gate) * up)`` with gate and up the halves of the fused ``up_gate`` Linear: x [s, hidden]."""
    gate, up = np.split(linear(x, weights, up_gate), 2, axis=-1)  # [s, ffn] each
    return linear(gate / (1 + np.exp(-gate)) * up, weights, down)


def softmax(x: np.ndarray) -> np.ndarray:
    e = np.exp(x - x.max(axis=-1, keepdims=True))
    return e / e.sum(axis=-1, keepdims=True)


def moe(x: np.ndarray, weights: dict[str, np.ndarray], names: MoENames, config) -> np.ndarray:
    """``Ernie45MoeBlock``: x [T, hidden] routed to the top ``moe_k`` experts, mixed, plus the shared experts."""
    probs = softmax(x @ weights[names.gate])  # [T, E]
    bias = weights.get(names.correction_bias) if config.moe_use_aux_free else None
    scores = probs if bias is None else probs + bias  # [T, E]: the choice is on the biased scores
    chosen = np.argsort(-scores, axis=-1, kind="stable")[:, :config.moe_k]  # [T, k]
    picked = np.take_along_axis(probs, chosen, axis=-1)  # [T, k]: mixed by the unbiased ones
    mixing = picked / np.maximum(picked.sum(axis=-1, keepdims=True), np.float32(config.moe_norm_min))
    out = np.zeros_like(x)
    for e in range(config.moe_num_experts):
        rows, slots = np.nonzero(chosen == e)  # a token picks an expert at most once
        if rows.size:
            out[rows] += mixing[rows, slots, None] * swiglu(x[rows], weights, *names.expert(e))
    if names.shared_in is not None:
        out += swiglu(x, weights, names.shared_in, names.shared_down)
    return out


def feed_forward(x: np.ndarray, weights: dict[str, np.ndarray], names: LayerNames, config) -> np.ndarray:
    """The layer's FFN: the MoE block in the layers an MoE config names, else the dense SwiGLU MLP."""
    is_moe_layer = getattr(config, "is_moe_layer", None)
    if is_moe_layer is not None and is_moe_layer(names.index):
        return moe(x, weights, paddle_names(names.index, names.prefix, config.moe_num_shared_experts > 0), config)
    return swiglu(x, weights, names.up_gate, names.down)


def decoder_layer(x: np.ndarray, weights: dict[str, np.ndarray], names: LayerNames, config) -> np.ndarray:
    """Pre-norm residual: ``x + attn(rms(x))``, then ``x + mlp(rms(x))``; x [s, hidden]."""
    eps = config.rms_norm_eps
    x = x + attention(rms_norm(x, weights[names.input_norm], eps), weights, names, config)
    return x + feed_forward(rms_norm(x, weights[names.post_norm], eps), weights, names, config)


def _float32(state: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    return {name: np.asarray(value, dtype=np.float32) for name, value in state.items()}


def reference_logits(lazy: LazyCheckpoint, sequences: list[list[int]], starts: list[int]) -> list[np.ndarray]:
    """Next-token logits of each sequence at positions ``start - 1`` .. end - 2 ([len - start + 1,
    vocab] each: the logits that predicted tokens ``start`` ..), computed layer by layer: the
    embedding, each layer read and applied to every sequence then dropped, the final norm and head."""
    config, names = lazy.config, family_of(lazy.config).graph_blocks().NAMES
    rest = _float32(lazy.load_group(REST))
    hidden = [rest[names.embedding][np.asarray(ids)] for ids in sequences]  # [s, hidden] each
    del rest  # the embedding and head are read again at the end: one group in memory at a time
    for i in range(config.num_hidden_layers):
        weights = _float32(lazy.load_group(f"layers.{i}"))
        hidden = [decoder_layer(x, weights, names.layer(i), config) for x in hidden]
        del weights
    rest = _float32(lazy.load_group(REST))
    head = rest[names.embedding].T if config.tie_word_embeddings else rest[f"{names.lm_head}.weight"]  # [hidden, vocab]
    norm = rest[names.final_norm]
    return [rms_norm(x[start - 1:-1], norm, config.rms_norm_eps) @ head for x, start in zip(hidden, starts)]
