"""An ERNIE 4.5 causal LM as one ONNX graph with a KV cache: prefill and decode in one graph.

The graph is written node by node from the checkpoint's weights (``onnx.helper``), as ONNX Runtime's
generative model builder does, rather than traced: the cache inputs/outputs, GQA and the integer
weights are then exactly what we declare. Its interface is Optimum's "merged" decoder:

    inputs   input_ids [batch, seq] int64            the new positions (the whole prompt, or one token)
             attention_mask [batch, past + seq] int64 1 = a real token, 0 = padding (pad on the left)
             position_ids [batch, seq] int64          RoPE positions of the new tokens
             past_key_values.{i}.key|value [batch, kv_heads, past, head_dim] float32 (past = 0 at first)
    outputs  logits [batch, vocab] float32            of the last position only: what generation reads
             present.{i}.key|value [batch, kv_heads, past + seq, head_dim]

Only the KV heads are cached (GQA, Ainslie et al. 2023): query heads of a group read their KV head
through a broadcast MatMul, never a copy. The layer math is ``models/ernie4_5.py``'s: RMSNorm,
interleaved RoPE, SwiGLU. Logits are computed for the last position alone, so a long prompt does
not pay for a [seq, vocab] head (time to first token).

Weight-only checkpoints (``quantize/weight_only.py``) write each quantized Linear as ONNX Runtime's
``com.microsoft.MatMulNBits`` (contrib operator spec: B is [N, blocks, block_size * bits / 8] uint8,
codes of consecutive input rows of one output column per block, low nibble first; one scale per
block; no zero-point input means the zero point 2^(bits-1)): our symmetric codes c in
[-qmax, qmax] are stored as c + 2^(bits-1), with the checkpoint's own scales (recovered exactly
from its dequantized weights), so the integer kernel reproduces the dequantized model.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import UserError

OPSET = 17
IR_VERSION = 8  # ONNX 1.12, the release that brought opset 17
MASKED = -1e4  # the additive mask value of models/ernie4_5.py
DECODER_FILE = "onnx/decoder.onnx"


def cache_names(layers: int) -> tuple[list[str], list[str]]:
    past = [f"past_key_values.{i}.{kv}" for i in range(layers) for kv in ("key", "value")]
    present = [f"present.{i}.{kv}" for i in range(layers) for kv in ("key", "value")]
    return past, present


@dataclass
class WeightOnlyLinear:
    """A Linear's integer weights: codes [in, out] (signed), scales [in / group, out]."""

    codes: np.ndarray
    scales: np.ndarray
    bits: int
    group_size: int | None


def recover_codes(weight: np.ndarray, bits: int, group_size: int | None) -> WeightOnlyLinear:
    """Codes and scales of a dequantized weight [in, out] (``codes * scale`` per group). A group's
    largest |code| is normally qmax (RTN always; GPTQ nearly always); where it is not, the next
    smaller code that makes every element of the group an integer multiple is taken (any such pair
    gives the same dequantized values)."""
    rows, cols = weight.shape
    size = rows if group_size is None else group_size
    qmax = 2 ** (bits - 1) - 1
    grouped = weight.astype(np.float64).reshape(rows // size, size, cols)  # [groups, size, out]
    peak = np.abs(grouped).max(axis=1)  # [groups, out]
    scales = np.where(peak > 0, peak / qmax, 1.0)
    unsolved = np.ones_like(peak, dtype=bool)
    codes = np.zeros_like(grouped)
    for top in range(qmax, 0, -1):
        trial = np.where(peak > 0, peak / top, 1.0)
        q = np.rint(grouped / trial[:, None, :])
        exact = np.all(np.abs(q * trial[:, None, :] - grouped) <= 1e-6 * np.maximum(peak, 1e-30)[:, None, :], axis=1)
        take = unsolved & exact
        scales[take], unsolved[take] = trial[take], False
        codes = np.where(take[:, None, :], q, codes)
        if not unsolved.any():
            break
    if unsolved.any():
        raise UserError(f"weights are not on a {bits}-bit grid of {size} rows: the checkpoint's weight-only "
                        f"quantization cannot be written as integer kernels")
    return WeightOnlyLinear(codes.reshape(rows, cols).astype(np.int8), scales.astype(np.float32), bits, group_size)


def kernel_block_size(rows: int, group_size: int | None) -> int | None:
    """MatMulNBits' block size for a Linear of ``rows`` inputs: the group size, or for per-channel
    scales (repeated in every block) the largest power of two up to 128 dividing ``rows``; None
    where the kernel cannot hold the grid (a block must be a power of two of at least 16)."""
    if group_size is not None:
        return group_size if group_size >= 16 and group_size & (group_size - 1) == 0 else None
    for block in (128, 64, 32, 16):
        if rows % block == 0:
            return block
    return None


def pack_matmul_nbits(linear: WeightOnlyLinear, block: int) -> tuple[np.ndarray, np.ndarray]:
    """B [N, blocks, block * bits / 8] uint8 and scales [N * blocks] for MatMulNBits."""
    rows, cols = linear.codes.shape
    blocks = rows // block
    scales = linear.scales if linear.group_size is not None else np.repeat(linear.scales, blocks, axis=0)
    unsigned = (linear.codes.astype(np.int16) + 2 ** (linear.bits - 1)).astype(np.uint8)  # [in, out]
    per_column = unsigned.T.reshape(cols, blocks, block)  # [N, blocks, block]
    if linear.bits == 4:
        per_column = per_column[..., 0::2] | (per_column[..., 1::2] << 4)  # low nibble first
    return np.ascontiguousarray(per_column), np.ascontiguousarray(scales.T).reshape(-1).astype(np.float32)


@dataclass
class _Graph:
    """Nodes and initializers, with generated names."""

    nodes: list = field(default_factory=list)
    initializers: list = field(default_factory=list)
    names: set = field(default_factory=set)
    count: int = 0

    def const(self, name: str, array: np.ndarray) -> str:
        """An initializer (one per name: the shape constants every layer shares are written once)."""
        from onnx import numpy_helper

        if name not in self.names:
            self.names.add(name)
            self.initializers.append(numpy_helper.from_array(np.asarray(array), name))
        return name

    def op(self, op_type: str, *inputs: str, outputs: int = 1, name: str | None = None, domain: str | None = None,
           **attrs) -> Any:
        from onnx import helper

        self.count += 1
        base = name or f"{op_type.lower()}_{self.count}"
        outs = [base] if outputs == 1 else [f"{base}:{i}" for i in range(outputs)]
        self.nodes.append(helper.make_node(op_type, list(inputs), outs, name=f"n{self.count}_{op_type}",
                                           domain=domain, **attrs))
        return outs[0] if outputs == 1 else outs


@dataclass(frozen=True)
class DecoderWeights:
    """What the graph is built from: float weights, and the integer form of the quantized ones."""

    state: dict[str, np.ndarray]
    integer: dict[str, WeightOnlyLinear]  # weight name -> codes/scales (Paddle layout [in, out])
    accuracy_level: int = 0  # MatMulNBits: 0 computes in float32; 4 quantizes activations to int8 per block


COMPUTE_LEVELS = {"fp32": 0, "int8": 4}  # --weight-only-compute -> MatMulNBits accuracy_level


def decoder_weights(config, state: dict[str, np.ndarray], quant: dict | None,
                    accuracy_level: int = 0) -> DecoderWeights:
    """The checkpoint's weights for :func:`build_decoder`; for a weight-only checkpoint, the codes
    and scales of every quantized weight (``quant['weights']`` names them)."""
    integer: dict[str, WeightOnlyLinear] = {}
    if quant:
        for name, spec in quant.get("weights", {}).items():
            weight = state[name]
            if spec.get("transposed"):  # a tied embedding [vocab, hidden] is the head's [hidden, vocab]
                weight = weight.T
            integer[name] = recover_codes(weight, spec["bits"], spec["group_size"])
    return DecoderWeights(state, integer, accuracy_level)


def _kernel_block(weights: DecoderWeights, name: str) -> int | None:
    """MatMulNBits' block size for weight ``name``, or None where it stays a float MatMul."""
    q = weights.integer.get(name)
    return None if q is None else kernel_block_size(q.codes.shape[0], q.group_size)


def build_decoder(config, weights: DecoderWeights) -> Any:
    """The ONNX model (see the module docstring) of an ``Ernie4_5ForCausalLM`` ``config``."""
    from onnx import TensorProto, helper

    g = _Graph()
    state = weights.state
    H, KV, d = config.num_attention_heads, config.num_key_value_heads, config.head_dim
    groups, layers = H // KV, config.num_hidden_layers
    past_names, present_names = cache_names(layers)
    f32 = lambda x: np.asarray(x, dtype=np.float32)  # noqa: E731
    i64 = lambda x: np.asarray(x, dtype=np.int64)  # noqa: E731

    def linear(x: str, name: str, bias: str | None) -> str:
        w = f"{name}.weight"
        if block := _kernel_block(weights, w):
            q = weights.integer[w]
            packed, scales = pack_matmul_nbits(q, block)
            k, n = q.codes.shape
            attrs = {"K": k, "N": n, "bits": q.bits, "block_size": block}
            if weights.accuracy_level:
                attrs["accuracy_level"] = weights.accuracy_level
            y = g.op("MatMulNBits", x, g.const(f"{w}.q{q.bits}", packed), g.const(f"{w}.scales", scales),
                     domain="com.microsoft", **attrs)
        else:
            y = g.op("MatMul", x, g.const(w, f32(state[w])))
        if bias is not None and bias in state:
            y = g.op("Add", y, g.const(bias, f32(state[bias])))
        return y

    def rms(x: str, weight: str) -> str:  # the pattern ORT fuses into SimplifiedLayerNormalization
        ms = g.op("ReduceMean", g.op("Pow", x, two), axes=[-1], keepdims=1)
        normed = g.op("Div", x, g.op("Sqrt", g.op("Add", ms, g.const(f"{weight}.eps", f32(config.rms_norm_eps)))))
        return g.op("Mul", normed, g.const(weight, f32(state[weight])))

    def rope(x: str, heads: int) -> str:  # x [b, s, heads, d]: rotate interleaved pairs
        pairs = g.op("Reshape", x, g.const(f"rope.shape5.{heads}", i64([0, 0, heads, d // 2, 2])))
        even, odd = g.op("Split", pairs, g.const("rope.split", i64([1, 1])), outputs=2, axis=-1)
        rotated = g.op("Reshape", g.op("Concat", g.op("Neg", odd), even, axis=-1),
                       g.const(f"rope.shape4.{heads}", i64([0, 0, heads, d])))
        return g.op("Add", g.op("Mul", x, cos), g.op("Mul", rotated, sin))

    two = g.const("two", f32(2.0))
    # The mask: key t is visible to new position j when t <= past + j and attention_mask[t] == 1.
    total = g.op("Gather", g.op("Shape", "attention_mask"), g.const("one_index", i64(1)), axis=0)  # scalar T
    seq = g.op("Gather", g.op("Shape", "input_ids"), "one_index", axis=0)  # scalar s
    past_len = g.op("Sub", total, seq)
    step = g.const("step", i64(1))
    query_pos = g.op("Range", past_len, total, step)  # [s]
    key_pos = g.op("Range", g.const("zero", i64(0)), total, step)  # [T]
    future = g.op("Greater", g.op("Unsqueeze", key_pos, g.const("axis0", i64([0]))),
                  g.op("Unsqueeze", query_pos, g.const("axis1", i64([1]))))  # [s, T]
    padding = g.op("Unsqueeze", g.op("Equal", "attention_mask", "zero"), g.const("axes123", i64([1, 2, 3])))  # [b,1,1,1,T]
    bias = g.op("Where", g.op("Or", future, padding), g.const("masked", f32(MASKED)),
                g.const("visible", f32(0.0)))  # [b, 1, 1, s, T]
    # RoPE angles of the new positions: [b, s, 1, d], each frequency twice (interleaved pairs)
    inv_freq = np.exp(np.arange(0, d, 2, dtype=np.float32) * np.float32(-math.log(config.rope_theta) / d))
    angles = g.op("Mul", g.op("Unsqueeze", g.op("Cast", "position_ids", to=TensorProto.FLOAT),
                              g.const("axis_last", i64([-1]))),
                  g.const("rope.inv_freq", f32(np.repeat(inv_freq, 2))))  # [b, s, d]
    cos = g.op("Unsqueeze", g.op("Cos", angles), g.const("axis2", i64([2])))
    sin = g.op("Unsqueeze", g.op("Sin", angles), "axis2")

    embed = "ernie.embed_tokens.weight"
    x = g.op("Gather", g.const(embed, f32(state[embed])), "input_ids", axis=0)  # [b, s, hidden]
    scale = g.const("attention.scale", f32(d ** -0.5))
    for i in range(layers):
        p = f"ernie.layers.{i}."
        h = rms(x, p + "input_layernorm.weight")
        mix = g.op("Reshape", linear(h, p + "self_attn.qkv_proj", p + "self_attn.qkv_proj.bias"),
                   g.const("qkv.shape", i64([0, 0, H + 2 * KV, d])))
        q, k, v = g.op("Split", mix, g.const("qkv.split", i64([H, KV, KV])), outputs=3, axis=2)  # [b, s, h|kv, d]
        q, k = rope(q, H), rope(k, KV)
        k = g.op("Concat", past_names[2 * i], g.op("Transpose", k, perm=[0, 2, 1, 3]), axis=2,
                 name=present_names[2 * i])  # [b, kv, T, d]
        v = g.op("Concat", past_names[2 * i + 1], g.op("Transpose", v, perm=[0, 2, 1, 3]), axis=2,
                 name=present_names[2 * i + 1])
        q = g.op("Transpose", g.op("Reshape", q, g.const("q.groups", i64([0, 0, KV, groups, d]))),
                 perm=[0, 2, 3, 1, 4])  # [b, kv, g, s, d]
        keys = g.op("Transpose", g.op("Unsqueeze", k, "axis2"), perm=[0, 1, 2, 4, 3])  # [b, kv, 1, d, T]
        scores = g.op("Add", g.op("Mul", g.op("MatMul", q, keys), scale), bias)  # [b, kv, g, s, T]
        out = g.op("MatMul", g.op("Softmax", scores, axis=-1), g.op("Unsqueeze", v, "axis2"))  # [b, kv, g, s, d]
        out = g.op("Reshape", g.op("Transpose", out, perm=[0, 3, 1, 2, 4]), g.const("attn.flat", i64([0, 0, H * d])))
        x = g.op("Add", x, linear(out, p + "self_attn.o_proj", p + "self_attn.o_proj.bias"))
        h = rms(x, p + "post_attention_layernorm.weight")
        gate, up = g.op("Split", linear(h, p + "mlp.up_gate_proj", p + "mlp.up_gate_proj.bias"),
                        g.const("ffn.split", i64([config.intermediate_size] * 2)), outputs=2, axis=-1)
        act = g.op("Mul", g.op("Mul", gate, g.op("Sigmoid", gate)), up)  # SiLU(gate) * up
        x = g.op("Add", x, linear(act, p + "mlp.down_proj", p + "mlp.down_proj.bias"))
    last = g.op("Gather", x, g.const("last", i64(-1)), axis=1)  # [b, hidden]: only the last position
    last = rms(last, "ernie.norm.weight")
    if not config.tie_word_embeddings:
        logits = linear(last, "lm_head", None)
    elif _kernel_block(weights, embed):
        logits = linear(last, "ernie.embed_tokens", None)  # MatMulNBits on the head's codes [hidden, vocab]
    else:
        logits = g.op("Gemm", last, embed, transB=1, name="logits")  # [b, vocab] from the [vocab, hidden] table
    if logits != "logits":
        logits = g.op("Identity", logits, name="logits")

    batch, seq_dim, past_dim, total_dim = "batch", "sequence", "past_sequence", "total_sequence"
    inputs = [helper.make_tensor_value_info("input_ids", TensorProto.INT64, [batch, seq_dim]),
              helper.make_tensor_value_info("attention_mask", TensorProto.INT64, [batch, total_dim]),
              helper.make_tensor_value_info("position_ids", TensorProto.INT64, [batch, seq_dim])]
    inputs += [helper.make_tensor_value_info(n, TensorProto.FLOAT, [batch, KV, past_dim, d]) for n in past_names]
    outputs = [helper.make_tensor_value_info("logits", TensorProto.FLOAT, [batch, config.vocab_size])]
    outputs += [helper.make_tensor_value_info(n, TensorProto.FLOAT, [batch, KV, total_dim, d]) for n in present_names]
    graph = helper.make_graph(g.nodes, "ernie4_5_decoder", inputs, outputs, g.initializers)
    opsets = [helper.make_opsetid("", OPSET), helper.make_opsetid("com.microsoft", 1)]
    # the IR version of opset 17 (ONNX 1.12), not the installed onnx package's newest: runtimes
    # refuse a model whose IR version is newer than theirs (ONNX Runtime 1.31 stops at IR 13)
    return helper.make_model(graph, opset_imports=opsets, producer_name="ernie-compress", ir_version=IR_VERSION)


def save_model(model, path: Path) -> list[str]:
    """Write ``model``; weights go to one external data file when the model passes protobuf's 2 GB
    limit. Returns the files written (relative to ``path``'s folder)."""
    import onnx

    path.parent.mkdir(parents=True, exist_ok=True)
    if model.ByteSize() < 2**31 - 2**26:
        onnx.save(model, str(path))
        return [path.name]
    data = path.name + ".data"
    onnx.save(model, str(path), save_as_external_data=True, all_tensors_to_one_file=True, location=data,
              size_threshold=1024)
    return [path.name, data]


def kernel_counts(model) -> dict[str, int]:
    """How many MatMuls run as integer-weight kernels and how many as float ones."""
    ops = [n.op_type for n in model.graph.node]
    return {"MatMulNBits": ops.count("MatMulNBits"), "MatMul": ops.count("MatMul"), "Gemm": ops.count("Gemm")}
