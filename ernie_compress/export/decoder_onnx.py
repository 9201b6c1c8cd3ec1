"""An ERNIE 4.5 causal LM as one ONNX graph with a KV cache: prefill and decode in one graph.

The graph is written node by node from the checkpoint's weights (``onnx.helper``), as ONNX Runtime's
generative model builder does, rather than traced: the cache inputs/outputs, GQA and the integer
weights are then exactly what we declare. The layers are the family's ONNX blocks
(``models/ernie4_5_onnx.py``, each checked equal to its Paddle layer); this module composes them and
owns the interface, the mask, the integer-weight encoding and the file. The interface is Optimum's
"merged" decoder:

    inputs   input_ids [batch, seq] int64            the new positions (the whole prompt, or one token)
             attention_mask [batch, past + seq] int64 1 = a real token, 0 = padding (pad on the left)
             position_ids [batch, seq] int64          RoPE positions of the new tokens: a prompt's 0 .. s-1
                                                      from its row's first slot, padding included; each
                                                      later token its row's next
             past_key_values.{i}.key|value [batch, kv_heads, past, head_dim] float32 (past = 0 at first)
    outputs  logits [batch, vocab] float32            of the last position only: what generation reads
             present.{i}.key|value [batch, kv_heads, past + seq, head_dim]

(RoPE scores depend on differences of positions only, so a row padded on the left may count from its
padding; ONNX Runtime's GroupQueryAttention rotates a first prompt's tokens by their index, so it must.)

Only the KV heads are cached (GQA, Ainslie et al. 2023): query heads of a group read their KV head
through a broadcast MatMul, never a copy. Logits are computed for the last position alone, so a
long prompt does not pay for a [seq, vocab] head (time to first token).

Weight-only checkpoints (``quantize/weight_only.py``) write each quantized Linear as ONNX Runtime's
``com.microsoft.MatMulNBits`` (contrib operator spec: B is [N, blocks, block_size * bits / 8] uint8,
codes of consecutive input rows of one output column per block, low nibble first; one scale per
block; no zero-point input means the zero point 2^(bits-1)): our symmetric codes c in
[-qmax, qmax] are stored as c + 2^(bits-1), with the checkpoint's own scales (recovered exactly
from its dequantized weights), so the integer kernel reproduces the dequantized model. A tied
embedding table quantized as the head is stored once: the head's packed codes and scales, which
``com.microsoft.GatherBlockQuantized`` also reads (reshaped) for the token rows, as ONNX Runtime's
generative model builder shares its INT4 table; no float copy of the table is written.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import UserError
from ..models.families import family_of
# IR_VERSION is re-exported: the export's contract (tests pin it)
from ..models.onnx_graph import (IR_VERSION, OPSET, SHARED_BUFFER_KEY, Gather, GraphBuilder, MatMul, f32,  # noqa: F401
                                 float_gather, float_matmul, i64, pack_codes)

MASKED = -1e4  # the additive mask value of models/ernie4_5.py
DECODER_FILE = "onnx/decoder.onnx"
PROTOBUF_LIMIT = 2**31 - 2**26  # weight bytes above which a model is saved with external data (2 GB less a margin)


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
    activations: str = "float"  # "int8": W8A8 (quantize --w8a8), run as DynamicQuantizeMatMul; "int8-static":
    #   QAT/PTQ INT8, the input quantized with a calibrated scale, run as MatMulIntegerToFloat
    activation_scale: float | None = None  # "int8-static": the input's scale (abs-max / 127)


FUSED_HEAD_DIM = 16  # GroupQueryAttention's CPU kernel takes head sizes that are multiples of this


def attention_kernel(config, onnx_ops: str, int8_cache: bool = False) -> tuple[bool, str]:
    """Whether the decoder's attention is ONNX Runtime's fused ``GroupQueryAttention`` (``--onnx-ops
    onnxruntime``), and the manifest's words for what it is (and why standard ops, where fused was asked).
    An int8 cache stays in standard ops, which decode fastest over a long cache: at 512 cached positions
    (ERNIE-4.5-0.3B W4, 2 threads, one interleaved run, ``benchmarks/results/kv-decode-512.md``) a step
    takes 11.5 ms against 14.4 ms with GroupQueryAttention over the codes read back
    (``ernie4_5_onnx._fused_attention_over_int8_cache``), although that graph prefills 2048 tokens in
    0.79x the standard graph's time (``int8-kv-prefill.md``); the kernel's own quantized cache prefilled
    512 tokens 1.42x slower still. An int8 cache is chosen for long contexts, where decoding dominates."""
    if onnx_ops != "onnxruntime":
        return False, "standard ops (--onnx-ops standard)"
    if config.head_dim % FUSED_HEAD_DIM:
        return False, (f"standard ops: GroupQueryAttention's CPU kernel takes head sizes that are multiples of "
                       f"{FUSED_HEAD_DIM}, this model's is {config.head_dim}")
    if int8_cache:
        return False, ("standard ops: an int8 cache decodes faster over a long cache in standard ops than in "
                       "GroupQueryAttention (measured; decoder_onnx.attention_kernel)")
    return True, "GroupQueryAttention (com.microsoft: rotary inside, interleaved)"


RECOVER_COLUMNS = 4096  # output columns recovered at a time: float64 temporaries of [in, 4096], not [in, out]


def recover_codes(weight: np.ndarray, bits: int, group_size: int | None) -> WeightOnlyLinear:
    """Codes and scales of a dequantized weight [in, out] (``codes * scale`` per group). A group's
    largest |code| is normally qmax (RTN always; GPTQ nearly always); where it is not, the next
    smaller code that makes every element of the group an integer multiple is taken (any such pair
    gives the same dequantized values). Columns are independent, so they are recovered
    :data:`RECOVER_COLUMNS` at a time: a 103,424-entry head of width 2,560 took 10 GB of
    temporaries at once."""
    cols = weight.shape[1]
    if cols <= RECOVER_COLUMNS:
        return _recover_columns(weight, bits, group_size)
    parts = [_recover_columns(weight[:, start:start + RECOVER_COLUMNS], bits, group_size)
             for start in range(0, cols, RECOVER_COLUMNS)]
    return WeightOnlyLinear(np.concatenate([p.codes for p in parts], axis=1),
                            np.concatenate([p.scales for p in parts], axis=1), bits, group_size)


def _recover_columns(weight: np.ndarray, bits: int, group_size: int | None) -> WeightOnlyLinear:
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
    per_column = pack_codes(linear.codes.T.reshape(cols, blocks, block), linear.bits)  # [N, blocks, block * bits / 8]
    return per_column, np.ascontiguousarray(scales.T).reshape(-1).astype(np.float32)


@dataclass(frozen=True)
class DecoderWeights:
    """What the graph is built from: float weights, and the integer form of the quantized ones."""

    state: dict[str, np.ndarray]
    integer: dict[str, WeightOnlyLinear]  # weight name -> codes/scales (Paddle layout [in, out])
    accuracy_level: int = 0  # MatMulNBits: 0 computes in float32; 4 quantizes activations to int8 per block
    experts: str = "auto"  # mixture-of-experts layers: fused kernels, one Linear per expert, or as measured best


COMPUTE_LEVELS = {"fp32": 0, "int8": 4}  # --weight-only-compute -> MatMulNBits accuracy_level
EXPERT_KERNELS = ("auto", "fused", "dispatch")  # --moe-experts


def decoder_weights(config, state: dict[str, np.ndarray], quant: dict | None,
                    accuracy_level: int = 0, experts: str = "auto") -> DecoderWeights:
    """The checkpoint's weights for :func:`build_decoder`; for a weight-only checkpoint, the codes
    and scales of every quantized weight (``quant['weights']`` names them)."""
    integer: dict[str, WeightOnlyLinear] = {}
    if quant:
        for name, spec in quant.get("weights", {}).items():
            weight = state[name]
            if spec.get("transposed"):  # a tied embedding [vocab, hidden] is the head's [hidden, vocab]
                weight = weight.T
            integer[name] = recover_codes(weight, spec["bits"], spec["group_size"])
            integer[name].activations = spec.get("activations", "float")
    return DecoderWeights(state, integer, accuracy_level, experts)


def _kernel_block(weights: DecoderWeights, name: str) -> int | None:
    """MatMulNBits' block size for weight ``name``, or None where it stays a float MatMul."""
    q = weights.integer.get(name)
    return None if q is None else kernel_block_size(q.codes.shape[0], q.group_size)


def _integer_kernels(weights: DecoderWeights) -> tuple[MatMul, Gather]:
    """The graph builder's ``matmul`` and ``gather`` for these weights: ``com.microsoft.MatMulNBits``
    where a Linear's weight has integer codes the kernel can hold, and ``GatherBlockQuantized`` for
    an embedding table with codes (a tied table quantized as the head): both read the same packed
    codes and scales, written once; else a float MatMul (or Gemm) and Gather."""
    kernels: dict[str, tuple[int, int, int, int]] = {}  # initializer stem -> (K, N, bits, block) written

    def packed(g: GraphBuilder, weight: str, columns: tuple[int, int] | None = None) -> tuple[str, tuple[int, int, int, int]] | None:
        """Write ``weight``'s packed codes [N, blocks, block * bits / 8] and scales [N * blocks] (once), of
        its output columns [start, stop) only where ``columns`` says (columns are independent: the
        same bytes as the whole weight's rows N); returns the initializers' stem and (K, N, bits, block)."""
        stem = weight if columns is None else f"{weight}[{columns[0]}:{columns[1]}]"
        if stem not in kernels:
            block = _kernel_block(weights, weight)
            if block is None:
                return None
            q = weights.integer[weight]  # codes [in, out] even for a tied table: decoder_weights transposed it
            if columns is not None:
                cut = slice(*columns)
                q = WeightOnlyLinear(q.codes[:, cut], q.scales[:, cut], q.bits, q.group_size)
            codes, scales = pack_matmul_nbits(q, block)
            g.const(f"{stem}.q{q.bits}", codes)
            g.const(f"{stem}.scales", scales)
            kernels[stem] = (*q.codes.shape, q.bits, block)
        return stem, kernels[stem]

    def matmul(g: GraphBuilder, x: str, weight: str, transposed: bool = False, name: str | None = None,
               columns: tuple[int, int] | None = None) -> str:
        q = weights.integer.get(weight)
        if q is not None and q.activations != "float" and columns is not None:
            raise ValueError(f"{weight}: a kernel that quantizes its input runs the whole weight (GraphBuilder.linear_parts)")
        if q is not None and q.activations == "int8":
            return dynamic_quantize_matmul(g, x, weight, q, name)
        if q is not None and q.activations == "int8-static":
            return static_quantize_matmul(g, x, weight, q, name)
        kernel = packed(g, weight, columns)
        if kernel is None:
            return float_matmul(g, x, weight, transposed, name, columns)
        stem, (k, n, bits, block) = kernel
        attrs = {"K": k, "N": n, "bits": bits, "block_size": block}
        if weights.accuracy_level:
            attrs["accuracy_level"] = weights.accuracy_level
        return g.op("MatMulNBits", x, f"{stem}.q{bits}", f"{stem}.scales", domain="com.microsoft", name=name,
                    **attrs)

    def gather(g: GraphBuilder, ids: str, table: str) -> str:
        """Rows of a quantized table [vocab, hidden] from the head's MatMulNBits initializers (N = vocab
        rows of K = hidden codes): codes reshaped to [vocab, hidden * bits / 8], scales to [vocab, blocks]
        (ONNX Runtime contrib spec, quantize_axis 1). The zero point 2^(bits-1) is written out (uint8
        [vocab, blocks], two a byte for int4) rather than left to the kernel's default, which some
        builds of other providers have taken as 0."""
        kernel = packed(g, table)
        if kernel is None:
            return float_gather(g, ids, table)
        _, (hidden, vocab, bits, block) = kernel
        rows = g.const("table_rows", i64([vocab, -1]))
        codes = g.op("Reshape", f"{table}.q{bits}", rows)  # [vocab, hidden * bits / 8] uint8
        scales = g.op("Reshape", f"{table}.scales", rows)  # [vocab, hidden / block]
        blocks = hidden // block
        zero = np.full((vocab, blocks if bits == 8 else (blocks + 1) // 2), 0x80 if bits == 8 else 0x88, np.uint8)
        return g.op("GatherBlockQuantized", codes, ids, scales, g.const(f"{table}.zero_points", zero),
                    domain="com.microsoft", bits=bits, block_size=block, gather_axis=0, quantize_axis=1)

    return matmul, gather


def dynamic_quantize_matmul(g: GraphBuilder, x: str, weight: str, q: WeightOnlyLinear, name: str | None = None) -> str:
    """W8A8: ``com.microsoft.DynamicQuantizeMatMul`` (contrib spec: A float, quantized inside to uint8 per
    tensor as DynamicQuantizeLinear; B int8 [K, N]; b_scale per column [N]; no zero point: symmetric).
    Only per-channel int8 codes (``quantize --w8a8``) take this path."""
    if q.bits != 8 or q.group_size is not None:
        raise ValueError(f"{weight}: W8A8 needs int8 codes per output channel, not {q.bits}-bit groups")
    codes = g.const(f"{weight}.int8", np.ascontiguousarray(q.codes))  # [in, out]
    scales = g.const(f"{weight}.scales", q.scales.reshape(-1).astype(np.float32))  # [out]
    return g.op("DynamicQuantizeMatMul", x, codes, scales, domain="com.microsoft", name=name)


def static_int8_weights(state: dict[str, np.ndarray], weight_bits: int,
                        scales: dict[str, dict]) -> dict[str, WeightOnlyLinear]:
    """QAT/PTQ INT8 (``quantize/scheme.py``): per quantized Linear, its weight on the fake-quant grid
    (symmetric per output channel, ``weight_absmax / qmax``, qmax 127 or 63 for 7-bit weights) and its
    input's static scale (``input_absmax / 127``, symmetric per tensor), from the checkpoint's scales."""
    qmax = 2 ** (weight_bits - 1) - 1
    integer = {}
    for layer, entry in scales.items():
        weight = state[f"{layer}.weight"]  # [in, out]
        step = np.maximum(np.asarray(entry["weight_absmax"], np.float64), 1e-12) / qmax  # [out]
        codes = np.clip(np.rint(weight / step), -qmax, qmax).astype(np.int8)
        integer[f"{layer}.weight"] = WeightOnlyLinear(codes, step[None, :].astype(np.float32), 8, None, "int8-static",
                                                      max(float(entry["input_absmax"]), 1e-12) / 127)
    return integer


def static_quantize_matmul(g: GraphBuilder, x: str, weight: str, q: WeightOnlyLinear, name: str | None = None) -> str:
    """QAT/PTQ INT8: the input quantized with its static scale to uint8 around 128 (the fake-quant model's
    symmetric int8 grid, as the encoder's INT8 export does), then ``com.microsoft.MatMulIntegerToFloat``
    (A uint8, B int8 [K, N], a_scale, per-column b_scale [N], a_zero_point 128, b_zero_point 0)."""
    a_scale = g.const(f"{weight}.input_scale", np.float32(q.activation_scale))
    a_zero = g.const("int8.input_zero_point", np.uint8(128))
    quantized = g.op("QuantizeLinear", x, a_scale, a_zero)  # uint8
    codes = g.const(f"{weight}.int8", np.ascontiguousarray(q.codes))  # [in, out]
    scales = g.const(f"{weight}.scales", q.scales.reshape(-1).astype(np.float32))  # [out]
    zeros = g.const(f"{weight}.zero_points", np.zeros(q.codes.shape[1], np.int8))
    return g.op("MatMulIntegerToFloat", quantized, codes, a_scale, scales, a_zero, zeros, domain="com.microsoft",
                name=name)


def _attention_bias(g: GraphBuilder) -> str:
    """The additive mask [b, 1, 1, s, T] of the interface: key t is visible to new position j when
    t <= past + j and attention_mask[t] == 1 (past = T - s, from the inputs' shapes)."""
    total = g.op("Gather", g.op("Shape", "attention_mask"), g.const("one_index", i64(1)), axis=0)  # scalar T
    seq = g.op("Gather", g.op("Shape", "input_ids"), "one_index", axis=0)  # scalar s
    past_len = g.op("Sub", total, seq)
    step = g.const("step", i64(1))
    query_pos = g.op("Range", past_len, total, step)  # [s]
    key_pos = g.op("Range", g.const("zero", i64(0)), total, step)  # [T]
    future = g.op("Greater", g.op("Unsqueeze", key_pos, g.const("axis0", i64([0]))),
                  g.op("Unsqueeze", query_pos, g.const("axis1", i64([1]))))  # [s, T]
    padding = g.op("Unsqueeze", g.op("Equal", "attention_mask", "zero"), g.const("axes123", i64([1, 2, 3])))  # [b,1,1,1,T]
    return g.op("Where", g.op("Or", future, padding), g.const("masked", f32(MASKED)),
                g.const("visible", f32(0.0)))  # [b, 1, 1, s, T]


def _interface(config, full_sequence: bool = False, int8_cache: bool = False) -> tuple[list, list]:
    """The graph's inputs and outputs (the module docstring's table); ``full_sequence``: input_ids
    in, logits [batch, sequence, vocab] out (``onnx/model.onnx`` of a family without a static graph);
    ``int8_cache``: the cache tensors are int8 codes (``kv_cache.py``)."""
    from onnx import TensorProto, helper

    KV, d = config.num_key_value_heads, config.head_dim
    past_names, present_names = cache_names(config.num_hidden_layers)
    batch, seq_dim, past_dim, total_dim = "batch", "sequence", "past_sequence", "total_sequence"
    ids = helper.make_tensor_value_info("input_ids", TensorProto.INT64, [batch, seq_dim])
    if full_sequence:
        return [ids], [helper.make_tensor_value_info("logits", TensorProto.FLOAT, [batch, seq_dim, config.vocab_size])]
    inputs = [ids, helper.make_tensor_value_info("attention_mask", TensorProto.INT64, [batch, total_dim]),
              helper.make_tensor_value_info("position_ids", TensorProto.INT64, [batch, seq_dim])]
    cache = TensorProto.INT8 if int8_cache else TensorProto.FLOAT
    inputs += [helper.make_tensor_value_info(n, cache, [batch, KV, past_dim, d]) for n in past_names]
    outputs = [helper.make_tensor_value_info("logits", TensorProto.FLOAT, [batch, config.vocab_size])]
    outputs += [helper.make_tensor_value_info(n, cache, [batch, KV, total_dim, d]) for n in present_names]
    return inputs, outputs


def _full_sequence_feeds(g: GraphBuilder, config) -> str:
    """What a full-sequence graph computes in place of the cached interface's inputs: attention_mask
    all ones and position_ids 0..s-1 [b, s], and an empty cache [b, kv, 0, d] (returned)."""
    shape = g.op("Shape", "input_ids")  # [b, s]
    g.op("Expand", g.const("one", i64(1)), shape, name="attention_mask")
    seq = g.op("Gather", shape, g.const("one_index", i64(1)), axis=0)
    g.op("Expand", g.op("Range", g.const("zero", i64(0)), seq, g.const("step", i64(1))), shape, name="position_ids")
    batch = g.op("Slice", shape, g.const("axis0", i64([0])), g.const("axis1", i64([1])))  # [1]
    empty = g.op("Concat", batch, g.const("cache.tail", i64([config.num_key_value_heads, 0, config.head_dim])), axis=0)
    return g.op("ConstantOfShape", empty)  # [b, kv, 0, d] float32 zeros


def build_decoder(config, weights: DecoderWeights, full_sequence: bool = False,
                  enter: Callable[[GraphBuilder, str | None], None] | None = None,
                  kv_scales: list[tuple[np.ndarray, np.ndarray]] | None = None, fused_attention: bool = False) -> Any:
    """The ONNX model (see the module docstring) of an ``Ernie4_5ForCausalLM`` ``config``, composed
    from the family's blocks (for ERNIE 4.5 ``models/ernie4_5_onnx.py``). ``full_sequence``: no
    cache, logits of every position (``onnx/model.onnx`` where the model cannot be traced).
    ``kv_scales``: an int8 cache, with these static scales (key, value [kv, d]) per layer (``kv_cache.py``).
    ``fused_attention``: each layer's attention as ONNX Runtime's ``GroupQueryAttention``.
    ``enter(g, group)`` is called before the nodes of each checkpoint group are written ("rest" for
    the embedding, "layers.{i}", "rest" again for the final norm and head, then None): a streamed
    export (``streamed_decoder.py``) swaps that group's weights in and writes out the last one's."""
    if full_sequence and kv_scales is not None:
        raise ValueError("a full-sequence graph has no cache to quantize")
    blocks = family_of(config).graph_blocks()
    names = blocks.NAMES
    enter = enter or (lambda g, group: None)
    matmul, gather = _integer_kernels(weights)
    g = GraphBuilder(weights.state, matmul=matmul, gather=gather, integer=weights.integer,
                     accuracy_level=weights.accuracy_level, experts=weights.experts)
    past, present = cache_names(config.num_hidden_layers)
    if full_sequence:
        past = [_full_sequence_feeds(g, config)] * len(past)
    bias = _attention_bias(g)
    cos, sin = blocks.rope_tables(g, "position_ids", config)
    fused = blocks.fused_attention_inputs(g, "position_ids", bias, config) if fused_attention else None
    enter(g, "rest")
    x = blocks.embedding(g, "input_ids", names.embedding)  # [b, s, hidden]
    for i in range(config.num_hidden_layers):
        io = blocks.AttentionIO(cos, sin, bias, past=(past[2 * i], past[2 * i + 1]),
                                present=(present[2 * i], present[2 * i + 1]),
                                kv_scales=None if kv_scales is None else kv_scales[i], fused=fused)
        enter(g, f"layers.{i}")
        x, _ = blocks.decoder_layer(g, x, config, names.layer(i), io)
    enter(g, "rest")
    if full_sequence:  # [b, s, hidden] -> [b * s, hidden] rows for the head, then [b, s, vocab]
        rows = g.op("Reshape", x, g.const("rows", i64([-1, config.hidden_size])))
        rows = blocks.rms_norm(g, rows, names.final_norm, config.rms_norm_eps)
        shape = g.op("Concat", g.op("Shape", "input_ids"), g.const("vocab", i64([config.vocab_size])), axis=0)
        g.op("Reshape", blocks.head(g, rows, config, names), shape, name="logits")
    else:
        last = g.op("Gather", x, g.const("last", i64(-1)), axis=1)  # [b, hidden]: only the last position
        last = blocks.rms_norm(g, last, names.final_norm, config.rms_norm_eps)
        blocks.head(g, last, config, names, name="logits")  # [b, vocab]
    enter(g, None)
    model = g.model(blocks.GRAPH_NAME, *_interface(config, full_sequence, int8_cache=kv_scales is not None))
    if fused_attention and kv_scales is None and not full_sequence:  # every present is GroupQueryAttention's
        from onnx import helper

        helper.set_model_props(model, {SHARED_BUFFER_KEY: "shared"})  # past and present may be one buffer
    return model


def save_model(model, path: Path) -> list[str]:
    """Write ``model``; weights go to one external data file when the model passes protobuf's 2 GB
    limit. Returns the files written (relative to ``path``'s folder)."""
    import onnx

    path.parent.mkdir(parents=True, exist_ok=True)
    if _weight_bytes(model) < PROTOBUF_LIMIT:
        onnx.save(model, str(path))
        return [path.name]
    data = path.name + ".data"
    onnx.save(model, str(path), save_as_external_data=True, all_tensors_to_one_file=True, location=data,
              size_threshold=1024)
    return [path.name, data]


def _weight_bytes(model) -> int:
    """Bytes of the initializers: what decides protobuf's 2 GB limit (``ByteSize`` itself fails past it)."""
    return sum(len(t.raw_data) or 4 * len(t.float_data) + 8 * len(t.int64_data) for t in model.graph.initializer)


def kernel_counts(model) -> dict[str, int]:
    """How many MatMuls run as integer-weight kernels and how many as float ones (and, in mixture-of-experts
    models, how many layers run their experts as fused float or integer kernels; how many attentions are
    fused)."""
    ops = [n.op_type for n in model.graph.node]
    counts = {op: ops.count(op) for op in ("MatMulNBits", "MatMul", "Gemm")}
    for op in ("DynamicQuantizeMatMul", "MatMulIntegerToFloat", "GroupQueryAttention"):
        if op in ops:
            counts[op] = ops.count(op)
    return {**counts, **{op: ops.count(op) for op in ("MoE", "QMoE") if op in ops}}
