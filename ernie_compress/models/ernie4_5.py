"""ERNIE 4.5 dense decoder (the ERNIE-4.5-0.3B architecture) in Paddle, PaddleFormers parameter names.

Each layer is pre-norm: ``x + attn(rms(x))`` then ``x + mlp(rms(x))`` (RMSNorm: Zhang & Sennrich
2019). Attention is causal grouped-query attention (Ainslie et al. 2023): ``qkv_proj`` is one fused
Linear whose output columns are all query heads, then the KV heads' keys, then their values; query
head ``h`` reads KV head ``h // (heads / kv_heads)``. Rotary position embeddings (Su et al. 2021,
RoFormer) as the Paddle release applies them: *interleaved* pairs — dimensions (2i, 2i+1) of a head
are rotated by ``pos * theta^(-2i/head_dim)``. The FFN is SwiGLU (Shazeer 2020): ``up_gate_proj``
outputs the gate half then the up half; ``down_proj(silu(gate) * up)``.

Heads: causal LM (logits tied to ``embed_tokens`` when ``tie_word_embeddings``) and sequence
classification read at the last non-pad token (``score``, no bias), for right-padded batches.
"""

from __future__ import annotations

import math
from typing import Any

from ..paddle_env import import_paddle
from .ernie4_5_config import Ernie45Config

paddle = import_paddle()
nn = paddle.nn
F = nn.functional


@paddle.jit.not_to_static
def _record(record: dict | None, key: str, value) -> None:
    if record is not None:
        record.setdefault(key, []).append(value)


def _linear(config: Ernie45Config, n_in: int, n_out: int, bias: bool | None = None):
    init = nn.initializer.Normal(0.0, config.initializer_range)
    use_bias = config.use_bias if bias is None else bias
    return nn.Linear(n_in, n_out, weight_attr=paddle.ParamAttr(initializer=init),
                     bias_attr=None if use_bias else False)


class RMSNorm(nn.Layer):
    """``x / sqrt(mean(x^2) + eps) * weight`` over the last axis, computed in float32."""

    def __init__(self, hidden: int, eps: float):
        super().__init__()
        self.eps = eps
        self.weight = self.create_parameter([hidden], default_initializer=nn.initializer.Constant(1.0))

    def forward(self, x):
        variance = paddle.mean(paddle.square(x), axis=-1, keepdim=True)
        return x * paddle.rsqrt(variance + self.eps) * self.weight


def rope_angles(seq_len, head_dim: int, theta: float, start=0):
    """cos, sin of shape [seq, head_dim] for positions start .. start + seq - 1, each frequency
    repeated for its interleaved pair."""
    # theta^(-2i/d) written as exp(-2i ln(theta) / d)
    inv_freq = paddle.exp(paddle.arange(0, head_dim, 2, dtype="float32") * (-math.log(theta) / head_dim))  # [d/2]
    positions = paddle.arange(start, start + seq_len, dtype="float32")  # [s]
    angles = paddle.unsqueeze(positions, 1) * paddle.unsqueeze(inv_freq, 0)  # [s, d/2]
    angles = paddle.reshape(paddle.stack([angles, angles], axis=-1), [-1, head_dim])  # [s, d]
    return paddle.cos(angles), paddle.sin(angles)


def apply_rope(x, cos, sin):
    """Rotate interleaved pairs: x [b, s, heads, d]; cos/sin [s, d]."""
    d = x.shape[-1]
    pairs = paddle.reshape(x, [0, 0, 0, d // 2, 2])  # [b, s, h, d/2, (even, odd)]
    even, odd = paddle.split(pairs, 2, axis=-1)  # [b, s, h, d/2, 1] each
    # [-x1, x0, -x3, x2 ...]
    rotated = paddle.reshape(paddle.concat([-odd, even], axis=-1), [0, 0, 0, d])
    cos = paddle.unsqueeze(cos, [0, 2])  # [1, s, 1, d]
    sin = paddle.unsqueeze(sin, [0, 2])
    return x * cos + rotated * sin


class Ernie45Attention(nn.Layer):
    def __init__(self, config: Ernie45Config):
        super().__init__()
        self.heads = config.num_attention_heads
        self.kv_heads = config.num_key_value_heads
        self.head_dim = config.head_dim
        self.qkv_proj = _linear(config, config.hidden_size, (self.heads + 2 * self.kv_heads) * self.head_dim)
        self.o_proj = _linear(config, self.heads * self.head_dim, config.hidden_size)
        self.dropout = config.attention_probs_dropout_prob

    def forward(self, x, cos, sin, bias, record: dict | None = None, head_mask=None):
        # x: [b, s, hidden]; bias: [b, 1, s, s] (causal + padding, additive); head_mask: [heads]
        return self.attend(x, cos, sin, bias, None, record, head_mask)[0]

    def attend(self, x, cos, sin, bias, past=None, record: dict | None = None, head_mask=None):
        """Attention of the new positions ``x`` [b, s, hidden] over the cached keys/values ``past``
        (k, v: [b, kv, p, d], or None) and their own; bias [b, 1, s, p + s]. Returns the output and
        the cache with these positions appended: only the KV heads are kept (GQA)."""
        mix = paddle.reshape(self.qkv_proj(x), [0, 0, self.heads + 2 * self.kv_heads, self.head_dim])
        q, k, v = paddle.split(mix, [self.heads, self.kv_heads, self.kv_heads], axis=2)  # [b, s, h|kv, d]
        q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)
        _record(record, "qkv", (q, k, v))
        # Query heads of one group are adjacent: [b, s, h, d] -> [b, kv, g, s, d]; K and V get a
        # group axis of 1 and broadcast over it in the matmuls, so they are never copied per head.
        kv, d, g = self.kv_heads, self.head_dim, self.heads // self.kv_heads
        q = paddle.transpose(paddle.reshape(q, [0, 0, kv, g, d]), [0, 2, 3, 1, 4])  # [b, kv, g, s, d]
        k = paddle.transpose(k, [0, 2, 1, 3])  # [b, kv, s, d]
        v = paddle.transpose(v, [0, 2, 1, 3])
        if past is not None:
            k, v = paddle.concat([past[0], k], axis=2), paddle.concat([past[1], v], axis=2)  # [b, kv, p+s, d]
        scores = (paddle.matmul(q, paddle.unsqueeze(k, 2), transpose_y=True) * d ** -0.5
                  + paddle.unsqueeze(bias, 1))  # [b, kv, g, s, p+s]
        probs = F.dropout(F.softmax(scores, axis=-1), self.dropout, training=self.training)
        out = paddle.matmul(probs, paddle.unsqueeze(v, 2))  # [b, kv, g, s, d]
        out = paddle.reshape(paddle.transpose(out, [0, 3, 1, 2, 4]), [0, 0, self.heads, d])  # [b, s, h, d]
        if head_mask is not None:  # importance scoring: d loss / d mask (Michel et al. 2019)
            out = out * paddle.reshape(head_mask, [1, 1, self.heads, 1])
        return self.o_proj(paddle.reshape(out, [0, 0, self.heads * self.head_dim])), (k, v)


class Ernie45MLP(nn.Layer):
    def __init__(self, config: Ernie45Config):
        super().__init__()
        self.intermediate = config.intermediate_size
        self.up_gate_proj = _linear(config, config.hidden_size, 2 * config.intermediate_size)
        self.down_proj = _linear(config, config.intermediate_size, config.hidden_size)

    def forward(self, x):
        gate, up = paddle.split(self.up_gate_proj(x), 2, axis=-1)  # [b, s, ffn] each
        return self.down_proj(F.silu(gate) * up)


class Ernie45DecoderLayer(nn.Layer):
    def __init__(self, config: Ernie45Config):
        super().__init__()
        self.self_attn = Ernie45Attention(config)
        self.mlp = Ernie45MLP(config)
        self.input_layernorm = RMSNorm(config.hidden_size, config.rms_norm_eps)
        self.post_attention_layernorm = RMSNorm(config.hidden_size, config.rms_norm_eps)
        self.dropout = nn.Dropout(config.hidden_dropout_prob)

    def forward(self, x, cos, sin, bias, record=None, head_mask=None):
        x = x + self.dropout(self.self_attn(self.input_layernorm(x), cos, sin, bias, record, head_mask))
        return x + self.dropout(self.mlp(self.post_attention_layernorm(x)))

    def forward_cached(self, x, cos, sin, bias, past):
        attended, present = self.self_attn.attend(self.input_layernorm(x), cos, sin, bias, past)
        x = x + self.dropout(attended)
        return x + self.dropout(self.mlp(self.post_attention_layernorm(x))), present


def layer_inputs(config: Ernie45Config, input_ids):
    """What every decoder layer reads besides its hidden states, for right-padded ``input_ids`` [b, s]:
    the rotary cos, sin [s, d] and the additive attention bias [b, 1, s, s] (causal + padding)."""
    seq = paddle.shape(input_ids)[1]
    is_pad = paddle.cast(input_ids == config.pad_token_id, "float32")  # [b, s]
    pos = paddle.arange(0, seq, dtype="int64")
    future = paddle.unsqueeze(pos, 0) > paddle.unsqueeze(pos, 1)  # [s, s]: key after query
    causal = paddle.cast(future, "float32") * -1e4
    bias = paddle.unsqueeze(causal, [0, 1]) + paddle.unsqueeze(is_pad * -1e4, [1, 2])  # [b, 1, s, s]
    cos, sin = rope_angles(seq, config.head_dim, config.rope_theta)
    return cos, sin, bias


def build_layer(config: Ernie45Config, index: int):
    """Decoder layer ``index`` on its own (its parameters named as under ``ernie.layers.{index}.``), for
    layer-by-layer calibration (``quantize/sequential.py``); run it as ``layer(x, *layer_inputs(...))``."""
    return Ernie45DecoderLayer(config)


class Ernie45Model(nn.Layer):
    """Token embeddings, decoder layers, final RMSNorm: ``forward`` returns [b, s, hidden]."""

    def __init__(self, config: Ernie45Config):
        super().__init__()
        self.config = config
        init = nn.initializer.Normal(0.0, config.initializer_range)
        self.embed_tokens = nn.Embedding(config.vocab_size, config.hidden_size,
                                         weight_attr=paddle.ParamAttr(initializer=init))
        self.layers = nn.LayerList([Ernie45DecoderLayer(config) for _ in range(config.num_hidden_layers)])
        self.norm = RMSNorm(config.hidden_size, config.rms_norm_eps)

    def forward(self, input_ids, record: dict | None = None, head_mask=None):
        # input_ids: [b, s], right-padded with pad_token_id; head_mask: per layer [heads] or None
        cos, sin, bias = layer_inputs(self.config, input_ids)
        x = self.embed_tokens(input_ids)
        _record(record, "embeddings", x)
        for i, layer in enumerate(self.layers):
            x = layer(x, cos, sin, bias, record, None if head_mask is None else head_mask[i])
            _record(record, "hidden_states", x)
        return self.norm(x)

    def forward_cached(self, input_ids, past: list | None = None):
        """Incremental decoding: ``input_ids`` [b, s] are the positions after the ``past`` cache
        (per layer (k, v) [b, kv, p, d]; None for the prompt), no padding. Returns the hidden
        states [b, s, hidden] and the cache grown by s positions."""
        seq = input_ids.shape[1]
        offset = 0 if past is None else past[0][0].shape[2]
        query = paddle.arange(offset, offset + seq, dtype="int64")  # absolute positions [s]
        key = paddle.arange(0, offset + seq, dtype="int64")  # [p+s]
        future = paddle.unsqueeze(key, 0) > paddle.unsqueeze(query, 1)  # [s, p+s]: key after query
        bias = paddle.unsqueeze(paddle.cast(future, "float32") * -1e4, [0, 1])  # [1, 1, s, p+s]
        cos, sin = rope_angles(seq, self.config.head_dim, self.config.rope_theta, start=offset)
        x = self.embed_tokens(input_ids)
        present = []
        for i, layer in enumerate(self.layers):
            x, layer_cache = layer.forward_cached(x, cos, sin, bias, None if past is None else past[i])
            present.append(layer_cache)
        return self.norm(x), present


class Ernie45ForCausalLM(nn.Layer):
    """Next-token logits [b, s, vocab]; ``token_type_ids`` is accepted and ignored (one signature
    for every model in the toolkit)."""

    task_kind = "causal_lm"

    def __init__(self, config: Ernie45Config):
        super().__init__()
        self.config = config
        self.ernie = Ernie45Model(config)
        if not config.tie_word_embeddings:
            self.lm_head = _linear(config, config.hidden_size, config.vocab_size, bias=False)

    def forward(self, input_ids, token_type_ids=None, head_mask=None, record: dict | None = None):
        return self.logits(self.ernie(input_ids, record, head_mask))

    def logits(self, hidden):
        if self.config.tie_word_embeddings:
            return paddle.matmul(hidden, self.ernie.embed_tokens.weight, transpose_y=True)
        return self.lm_head(hidden)

    def forward_cached(self, input_ids, past: list | None = None):
        """Logits [b, s, vocab] of the new positions and the grown KV cache (see ``Ernie45Model``)."""
        hidden, present = self.ernie.forward_cached(input_ids, past)
        return self.logits(hidden), present


class Ernie45ForSequenceClassification(nn.Layer):
    """Class logits [b, labels] from the hidden state of each row's last non-pad token."""

    task_kind = "classification"

    def __init__(self, config: Ernie45Config):
        super().__init__()
        if config.num_labels < 2:
            raise ValueError("a classification model needs at least 2 labels in id2label")
        self.config = config
        self.ernie = Ernie45Model(config)
        self.dropout = nn.Dropout(config.hidden_dropout_prob)
        self.score = _linear(config, config.hidden_size, config.num_labels, bias=False)

    def forward(self, input_ids, token_type_ids=None, head_mask=None, record: dict | None = None):
        hidden = self.ernie(input_ids, record, head_mask)  # [b, s, h]
        real = paddle.cast(input_ids != self.config.pad_token_id, "int64")  # [b, s]
        last = paddle.sum(real, axis=1, keepdim=True) - 1  # [b, 1]
        positions = paddle.unsqueeze(paddle.arange(0, paddle.shape(input_ids)[1], dtype="int64"), 0)  # [1, s]
        pick = paddle.cast(positions == last, hidden.dtype)  # [b, s]: one-hot at the last real token
        pooled = paddle.sum(hidden * paddle.unsqueeze(pick, -1), axis=1)  # [b, h]
        return self.score(self.dropout(pooled))


class CachedDecoder:
    """``runtime.decoding.Decoder`` over ``Ernie45ForCausalLM.forward_cached`` in dygraph: one
    prompt at a time (no padding)."""

    def __init__(self, model: Ernie45ForCausalLM):
        self.model, self.cache = model, None

    def prefill(self, rows: list[list[int]]):
        if len(rows) != 1:
            raise ValueError("the dygraph decoder runs one prompt at a time")
        with paddle.no_grad():
            logits, self.cache = self.model.forward_cached(paddle.to_tensor(rows, dtype="int64"))
        return logits[:, -1].numpy()  # [1, vocab]

    def step(self, tokens):
        with paddle.no_grad():
            logits, self.cache = self.model.forward_cached(paddle.to_tensor([[int(tokens[0])]], dtype="int64"),
                                                           self.cache)
        return logits[:, -1].numpy()


ARCHITECTURES: dict[str, Any] = {
    "Ernie4_5ForCausalLM": Ernie45ForCausalLM,
    "Ernie4_5ForSequenceClassification": Ernie45ForSequenceClassification,
}
