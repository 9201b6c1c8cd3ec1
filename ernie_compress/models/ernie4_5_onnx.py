"""ERNIE 4.5's layers as ONNX graph blocks: the math of ``ernie4_5.py``, written once more for ONNX.

Each block mirrors one Paddle layer and is checked equal to it on random weights by
``tests/models/test_ernie4_5_onnx.py``:

==================  ==================================  ==========================================
block               Paddle layer                        reads
==================  ==================================  ==========================================
:func:`embedding`   ``Ernie45Model.embed_tokens``       token ids [b, s] -> [b, s, hidden]
:func:`rms_norm`    ``RMSNorm`` (Zhang & Sennrich 2019)  [..., hidden]
:func:`rope_tables` ``rope_angles`` (Su et al. 2021)    position ids [b, s] -> cos, sin [b, s, 1, d]
:func:`attention`   ``Ernie45Attention.attend``         GQA (Ainslie et al. 2023) with a KV cache
:func:`mlp`         ``Ernie45MLP`` (SwiGLU, Shazeer 2020)  [b, s, hidden]
:func:`decoder_layer` ``Ernie45DecoderLayer.forward_cached``  pre-norm residual attention + MLP
:func:`head`        ``Ernie45ForCausalLM.logits``       tied to the embedding table or ``lm_head``
==================  ==================================  ==========================================

A block takes a :class:`~.onnx_graph.GraphBuilder`, the names of its input tensors and its
layer's parameter names (:data:`NAMES`), and returns the names of its outputs. Linears go through
``g.linear``, so the export decides how their weights are stored (float or integer kernels).
``export/decoder_onnx.py`` composes the blocks into the cached decoder graph.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from .architecture import ParameterNames
from .ernie4_5_config import Ernie45Config
from .ernie4_5_family import NAMES as FAMILY_NAMES
from .onnx_graph import GraphBuilder, f32, i64

ONNX_FLOAT = 1  # onnx.TensorProto.FLOAT (a Cast target), without importing onnx here
ONNX_INT8 = 3  # onnx.TensorProto.INT8
ONNX_INT32 = 6  # onnx.TensorProto.INT32


@dataclass(frozen=True)
class LayerNames:
    """Parameter names of one decoder layer (Linears by prefix, norms by weight)."""

    input_norm: str
    qkv: str  # fused: all query heads, then the KV heads' keys, then their values
    out: str
    post_norm: str
    up_gate: str  # fused: the gate half, then the up half
    down: str


@dataclass(frozen=True)
class DecoderNames:
    """The parameter names the blocks read, taken from the family's table (``ernie4_5_family.NAMES``)."""

    table: ParameterNames

    @property
    def embedding(self) -> str:
        return self.table.word_embedding

    @property
    def final_norm(self) -> str:
        return f"{self.table.final_norm}.weight"

    @property
    def lm_head(self) -> str:  # the untied head Linear (absent when tie_word_embeddings)
        return self.table.lm_head

    def layer(self, i: int) -> LayerNames:
        t, p = self.table, self.table.layer(i)
        input_norm, post_norm = t.norms
        (qkv,), (up_gate,) = t.attention_in, t.ffn_in
        return LayerNames(input_norm=f"{p}{input_norm}.weight", qkv=p + qkv, out=p + t.attention_out,
                          post_norm=f"{p}{post_norm}.weight", up_gate=p + up_gate, down=p + t.ffn_out)


GRAPH_NAME = "ernie4_5_decoder"  # the exported decoder graph's name
NAMES = DecoderNames(FAMILY_NAMES)


@dataclass(frozen=True)
class AttentionIO:
    """What attention reads besides its input: RoPE tables, the additive mask, the cache in and
    the names its grown cache takes (graph outputs in the exported decoder)."""

    cos: str  # [b, s, 1, d]
    sin: str
    bias: str  # [b, 1, 1, s, past + s]: 0 where a key is visible, MASKED where not
    past: tuple[str, str]  # key, value [b, kv, past, d]
    present: tuple[str, str]  # names of key, value [b, kv, past + s, d]
    # an int8 cache (``export/kv_cache.py``): the static per-channel scales of keys and values
    # [kv, d] each; None: the cache is float32
    kv_scales: tuple[np.ndarray, np.ndarray] | None = None
    # ONNX Runtime's fused GroupQueryAttention reads these (:func:`fused_attention_inputs`); None:
    # attention in standard ops
    fused: FusedAttentionInputs | None = None


@dataclass(frozen=True)
class FusedAttentionInputs:
    """What ``com.microsoft.GroupQueryAttention`` reads besides q, k, v and the cache, made
    once per graph from the positions and the mask (:func:`fused_attention_inputs`)."""

    seqlens_k: str  # [b] int32: every row's total length - 1 (the padding a batch puts first counts: it is masked)
    total: str  # int32 scalar T
    cos: str  # [b * s, d / 2]: a row per new token, of that token's own position
    sin: str
    rows: str  # [b, s] int64: each token's row of cos / sin (0 .. b * s - 1)
    bias: str  # [b, 1, s, T]: the additive mask (padding and the future)


def embedding(g: GraphBuilder, ids: str, table: str) -> str:
    """Rows of the embedding table: ids [b, s] int64 -> [b, s, hidden] (the builder's ``gather``:
    a quantized tied table is read by the integer kernel that also serves the head)."""
    return g.gather(g, ids, table)


def rms_norm(g: GraphBuilder, x: str, weight: str, eps: float) -> str:
    """``x / sqrt(mean(x^2) + eps) * weight`` over the last axis (the pattern ONNX Runtime fuses
    into SimplifiedLayerNormalization)."""
    ms = g.op("ReduceMean", g.op("Pow", x, g.const("two", f32(2.0))), axes=[-1], keepdims=1)
    normed = g.op("Div", x, g.op("Sqrt", g.op("Add", ms, g.const(f"{weight}.eps", f32(eps)))))
    return g.op("Mul", normed, g.weight(weight))


def rope_tables(g: GraphBuilder, position_ids: str, config: Ernie45Config) -> tuple[str, str]:
    """cos, sin [b, s, 1, d] of the positions [b, s]; each frequency ``theta^(-2i/d)`` repeated for
    its interleaved pair, as ``rope_angles``."""
    inv_freq = _inverse_frequencies(config)  # [d/2]
    angles = g.op("Mul", g.op("Unsqueeze", g.op("Cast", position_ids, to=ONNX_FLOAT), g.const("axis_last", i64([-1]))),
                  g.const("rope.inv_freq", f32(np.repeat(inv_freq, 2))))  # [b, s, d]
    cos = g.op("Unsqueeze", g.op("Cos", angles), g.const("axis2", i64([2])))
    sin = g.op("Unsqueeze", g.op("Sin", angles), "axis2")
    return cos, sin


def _inverse_frequencies(config: Ernie45Config) -> np.ndarray:
    """``theta^(-2i/d)`` for i < d / 2, float32 as ``rope_angles`` computes them."""
    d = config.head_dim
    return np.exp(np.arange(0, d, 2, dtype=np.float32) * np.float32(-math.log(config.rope_theta) / d))


def fused_attention_inputs(g: GraphBuilder, position_ids: str, bias: str, config: Ernie45Config) -> FusedAttentionInputs:
    """GroupQueryAttention's extra inputs from the positions [b, s] and the mask [b, 1, 1, s, T].

    The cos / sin caches are built per call with one row per new token, of that token's own position,
    and ``rows`` numbers the tokens 0 .. b * s - 1: after the first call the kernel rotates token i of
    row b with its row ``rows[b, i]``, so each row of a batch turns at its own position (continuous
    batching) and no table of every position up to the context length is stored. In a first prompt the
    kernel rotates token i of every row with cache row i, the first row's positions: the interface's
    prompt positions are therefore the same in every row, 0 .. s-1 from the first slot, padding
    included (``decoder_onnx``'s docstring). Every row is ``T`` long for the kernel (``seqlens_k``): the
    padding is hidden by the mask."""
    flat = g.op("Reshape", position_ids, g.const("flat", i64([-1])))  # [b * s]
    angles = g.op("Mul", g.op("Unsqueeze", g.op("Cast", flat, to=ONNX_FLOAT), g.const("axis_last", i64([-1]))),
                  g.const("gqa.inv_freq", f32(_inverse_frequencies(config))))  # [b * s, d / 2]
    count = g.op("Squeeze", g.op("Shape", flat), g.const("axis0", i64([0])))  # scalar b * s
    rows = g.op("Reshape", g.op("Range", g.const("gqa.zero", i64(0)), count, g.const("gqa.one", i64(1))),
                g.op("Shape", position_ids))  # [b, s]
    shape = g.op("Shape", bias)  # [b, 1, 1, s, T]
    total = g.op("Gather", shape, g.const("gqa.last", i64(4)), axis=0)  # scalar T
    batch = g.op("Slice", shape, g.const("axis0", i64([0])), g.const("gqa.axis1", i64([1])))  # [1]
    seqlens = g.op("Expand", g.op("Cast", g.op("Sub", total, "gqa.one"), to=ONNX_INT32), batch)  # [b]
    # the kernel wants at least T rows of cos / sin: zero rows after the b * s used ones, where T is more
    short = g.op("Max", g.op("Sub", total, count), "gqa.zero")
    pads = g.op("Concat", g.const("gqa.pad_before", i64([0, 0])), g.op("Unsqueeze", short, "axis0"),
                g.const("gqa.pad_after", i64([0])), axis=0)  # [0, 0, max(T - b s, 0), 0]
    cos, sin = (g.op("Pad", g.op(op, angles), pads) for op in ("Cos", "Sin"))  # [max(b s, T), d / 2]
    return FusedAttentionInputs(seqlens_k=seqlens, total=g.op("Cast", total, to=ONNX_INT32), cos=cos, sin=sin,
                                rows=rows, bias=g.op("Squeeze", bias, g.const("gqa.axis1", i64([1]))))


def _rope(g: GraphBuilder, x: str, heads: int, d: int, cos: str, sin: str) -> str:
    """``apply_rope``: x [b, s, heads, d], interleaved pairs (2i, 2i+1) rotated."""
    pairs = g.op("Reshape", x, g.const(f"rope.shape5.{heads}", i64([0, 0, heads, d // 2, 2])))
    even, odd = g.op("Split", pairs, g.const("rope.split", i64([1, 1])), outputs=2, axis=-1)
    rotated = g.op("Reshape", g.op("Concat", g.op("Neg", odd), even, axis=-1),
                   g.const(f"rope.shape4.{heads}", i64([0, 0, heads, d])))  # [-x1, x0, -x3, x2 ...]
    return g.op("Add", g.op("Mul", x, cos), g.op("Mul", rotated, sin))


def attention(g: GraphBuilder, x: str, config: Ernie45Config, names: LayerNames,
              io: AttentionIO) -> tuple[str, tuple[str, str]]:
    """``Ernie45Attention.attend``: x [b, s, hidden] over the cache and itself; returns the output
    [b, s, hidden] and the grown cache (key, value) named ``io.present``. Only the KV heads are
    cached; the query heads of a group read theirs through a broadcast MatMul, never a copy.
    With ``io.fused``, ONNX Runtime's GroupQueryAttention computes the same (:func:`_fused_attention`)."""
    if io.fused is not None:
        return _fused_attention(g, x, config, names, io)
    H, KV, d = config.num_attention_heads, config.num_key_value_heads, config.head_dim
    q, _, (k, v) = _queries_and_grown_cache(g, x, config, names, io)
    q = g.op("Transpose", g.op("Reshape", q, g.const("q.groups", i64([0, 0, KV, H // KV, d]))),
             perm=[0, 2, 3, 1, 4])  # [b, kv, g, s, d]
    keys, values = k, v  # [b, kv, T, d]: the cache itself, or its int8 codes read as float below
    if io.kv_scales is None:
        scaled = g.op("Mul", g.op("MatMul", q, _keys_by_column(g, keys)), g.const("attention.scale", f32(d ** -0.5)))
    else:  # codes times scale = the cached tensor: each key channel's scale folded into q, each value's into the output
        q_scale = g.const(f"{io.present[0]}.q_scale", f32(io.kv_scales[0] * d ** -0.5).reshape(1, KV, 1, 1, d))
        keys, values = (g.op("Cast", t, to=ONNX_FLOAT) for t in (k, v))  # [b, kv, T, d] codes as float
        scaled = g.op("MatMul", g.op("Mul", q, q_scale), _keys_by_column(g, keys))
    scores = g.op("Add", scaled, io.bias)  # [b, kv, g, s, T]
    out = g.op("MatMul", g.op("Softmax", scores, axis=-1), g.op("Unsqueeze", values, "axis2"))  # [b, kv, g, s, d]
    if io.kv_scales is not None:
        out = g.op("Mul", out, g.const(f"{io.present[1]}.out_scale", f32(io.kv_scales[1]).reshape(1, KV, 1, 1, d)))
    out = g.op("Reshape", g.op("Transpose", out, perm=[0, 3, 1, 2, 4]), g.const("attn.flat", i64([0, 0, H * d])))
    return g.linear(out, names.out), (k, v)


def _queries_and_grown_cache(g: GraphBuilder, x: str, config: Ernie45Config, names: LayerNames,
                             io: AttentionIO) -> tuple[str, tuple[str, str], tuple[str, str]]:
    """The standard-op front of attention: the rotated queries [b, s, H, d], the new keys and values
    [b, s, kv, d] (with an int8 cache, their int8 codes: :func:`_cache_codes`), and the grown cache
    (key, value) [b, kv, T, d] named ``io.present``."""
    H, KV, d = config.num_attention_heads, config.num_key_value_heads, config.head_dim
    q, k, v = (g.op("Reshape", part, g.const(f"qkv.shape.{heads}", i64([0, 0, heads, d])))
               for part, heads in zip(g.linear_parts(x, names.qkv, [H * d, KV * d, KV * d]), (H, KV, KV)))  # [b, s, h|kv, d]
    q, k = _rope(g, q, H, d, io.cos, io.sin), _rope(g, k, KV, d, io.cos, io.sin)
    if io.kv_scales is not None:  # int8 codes of the new keys and values, [b, s, kv, d]
        k, v = (_cache_codes(g, new, scale, f"{name}.scale") for new, scale, name in zip((k, v), io.kv_scales, io.present))
    grown = tuple(g.op("Concat", past, g.op("Transpose", new, perm=[0, 2, 1, 3]), axis=2, name=name)
                  for past, new, name in zip(io.past, (k, v), io.present))  # [b, kv, T, d]
    return q, (k, v), grown


def _fused_attention(g: GraphBuilder, x: str, config: Ernie45Config, names: LayerNames,
                     io: AttentionIO) -> tuple[str, tuple[str, str]]:
    """:func:`attention` as one ``com.microsoft.GroupQueryAttention`` node (ONNX Runtime contrib
    operator: q, k and v apart (``GraphBuilder.linear_parts``), which decoded faster than the kernel's
    packed input here (1.10x against 1.02x of the standard graph, one interleaved run); rotary inside,
    interleaved pairs; the grown cache [b, kv, past + s, d] out, past and present apart). An int8
    cache: :func:`_fused_attention_over_int8_cache`."""
    if io.kv_scales is not None:
        return _fused_attention_over_int8_cache(g, x, config, names, io)
    H, KV, d, fused = config.num_attention_heads, config.num_key_value_heads, config.head_dim, io.fused
    q, k, v = g.linear_parts(x, names.qkv, [H * d, KV * d, KV * d])  # [b, s, H d], [b, s, KV d] x 2
    inputs = [q, k, v, io.past[0], io.past[1], fused.seqlens_k, fused.total, fused.cos, fused.sin, fused.rows,
              fused.bias]
    out, key, value = g.op("GroupQueryAttention", *inputs, domain="com.microsoft",
                           output_names=[g.fresh("gqa_out"), *io.present], num_heads=H, kv_num_heads=KV,
                           do_rotary=1, rotary_interleaved=1, scale=float(d ** -0.5))  # out [b, s, H d]
    return g.linear(out, names.out), (key, value)


def _fused_attention_over_int8_cache(g: GraphBuilder, x: str, config: Ernie45Config, names: LayerNames,
                                     io: AttentionIO) -> tuple[str, tuple[str, str]]:
    """GroupQueryAttention in float over an int8 cache: the queries and keys rotated in standard ops (as
    :func:`attention`; the kernel's rotary off), the new keys and values rounded to the cache's codes
    (:func:`_cache_codes`, static per-channel scales [kv, d]) and appended to the past codes as the
    present cache; the kernel reads the past and the new codes back as codes x scale, so that a prompt
    attends over what the cache holds, as the standard-op graph computes. Against the standard-op int8
    graph this keeps the kernel's attention (no [s, T] score tensors of a long prompt in separate ops);
    the kernel's own quantized cache (``k_quant_type`` PER_CHANNEL) prefilled a 512-token prompt 1.42x
    slower than the standard-op graph (ERNIE-4.5-0.3B W4, 2 threads)."""
    H, KV, d, fused = config.num_attention_heads, config.num_key_value_heads, config.head_dim, io.fused
    q, codes, present = _queries_and_grown_cache(g, x, config, names, io)  # present: [b, kv, T, d] int8
    new_floats, past_floats = [], []
    for past, new, scale, name in zip(io.past, codes, io.kv_scales, io.present):
        step = g.const(f"{name}.step", f32(scale))  # [kv, d]: codes x scale = the cached value
        new_floats.append(g.op("Reshape", g.op("Mul", g.op("Cast", new, to=ONNX_FLOAT), step),
                               g.const("gqa.kv_flat", i64([0, 0, KV * d]))))  # [b, s, KV d]
        past_floats.append(g.op("Mul", g.op("Cast", past, to=ONNX_FLOAT),
                                g.const(f"{name}.step4", f32(scale).reshape(1, KV, 1, d))))  # [b, kv, past, d]
    queries = g.op("Reshape", q, g.const("gqa.q_flat", i64([0, 0, H * d])))  # [b, s, H d]
    out, _, _ = g.op("GroupQueryAttention", queries, *new_floats, *past_floats, fused.seqlens_k, fused.total, "", "",
                     "", fused.bias, domain="com.microsoft", output_names=[g.fresh("gqa_out"), g.fresh("gqa_key"),
                                                                          g.fresh("gqa_value")],
                     num_heads=H, kv_num_heads=KV, do_rotary=0, scale=float(d ** -0.5))  # out [b, s, H d]
    return g.linear(out, names.out), present


def _keys_by_column(g: GraphBuilder, keys: str) -> str:
    """Keys [b, kv, T, d] -> [b, kv, 1, d, T]: the right operand of the grouped queries' MatMul."""
    return g.op("Transpose", g.op("Unsqueeze", keys, "axis2"), perm=[0, 1, 2, 4, 3])


def _cache_codes(g: GraphBuilder, x: str, scale: np.ndarray, name: str) -> str:
    """Symmetric int8 codes of x [b, s, kv, d] with a static scale per channel [kv, d]:
    ``clip(round(x / scale), -127, 127)`` (round half to even)."""
    scaled = g.op("Round", g.op("Mul", x, g.const(f"{name}.inverse", f32(1.0 / scale))))
    clipped = g.op("Clip", scaled, g.const("int8.low", f32(-127.0)), g.const("int8.high", f32(127.0)))
    return g.op("Cast", clipped, to=ONNX_INT8)


def mlp(g: GraphBuilder, x: str, config: Ernie45Config, names: LayerNames) -> str:
    """``Ernie45MLP``: ``down_proj(silu(gate) * up)``, gate and up from the fused ``up_gate_proj``."""
    gate, up = g.linear_parts(x, names.up_gate, [config.intermediate_size] * 2)  # [b, s, ffn] each
    act = g.op("Mul", g.op("Mul", gate, g.op("Sigmoid", gate)), up)  # SiLU(gate) * up
    return g.linear(act, names.down)


def decoder_layer(g: GraphBuilder, x: str, config: Ernie45Config, names: LayerNames,
                  io: AttentionIO) -> tuple[str, tuple[str, str]]:
    """``Ernie45DecoderLayer.forward_cached``: ``x + attn(rms(x))``, then ``x + mlp(rms(x))``;
    returns the layer's output and its grown cache."""
    attended, present = attention(g, rms_norm(g, x, names.input_norm, config.rms_norm_eps), config, names, io)
    x = g.op("Add", x, attended)
    return g.op("Add", x, mlp(g, rms_norm(g, x, names.post_norm, config.rms_norm_eps), config, names)), present


def head(g: GraphBuilder, x: str, config: Ernie45Config, names: DecoderNames, name: str | None = None) -> str:
    """``Ernie45ForCausalLM.logits``: x [b, hidden] -> [b, vocab] (one position per row: the
    decoder's last), through the embedding table [vocab, hidden] read transposed (one Gemm) when the
    head is tied, else the ``lm_head`` Linear."""
    if config.tie_word_embeddings:
        return g.matmul(g, x, names.embedding, transposed=True, name=name)
    return g.linear(x, names.lm_head, name=name)
