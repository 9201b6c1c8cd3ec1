"""ERNIE 4.5's mixture-of-experts layer as an ONNX graph block: the router written out node by node,
the experts as ONNX Runtime's fused ``com.microsoft.MoE`` (float) or ``com.microsoft.QMoE`` (int8 /
int4 expert weights), or as one Linear per expert with Gather-based token dispatch.

The layer (PaddleFormers 1.2.0 ``transformers/ernie4_5_moe/modeling.py`` with
``nn/moe/moe_allgather_layer.py:fused_gate_logits_process_fused``; transformers 5
``models/ernie4_5_moe/modeling_ernie4_5_moe.py:Ernie4_5_MoeTopKRouter``)::

    p      = softmax(x @ W_gate)                   FP32, no bias            [T, E]
    chosen = topk(p + e_score_correction_bias, k)  experts, on the biased scores
    w      = p[chosen] / max(sum p[chosen], moe_norm_min)   the *unbiased* values
    y      = sum_j w_j * down_j(silu(gate_j(x)) * up_j(x))  + shared(x)  (SwiGLU, Shazeer 2020)

What ONNX Runtime 1.32's CPU kernels do (contrib operator schema, read from the installed
``onnxruntime.capi.onnxruntime_pybind11_state.get_all_operator_schema()``; kernel sources
``onnxruntime/contrib_ops/cpu/moe/moe_cpu.cc`` and ``moe_quantization_cpu.cc``; each fact below
also checked by running the kernel on random weights against numpy):

- Layouts: ``fc1_experts_weights`` [E, 2 * inter, hidden] (rows = outputs, [out, in] per expert),
  ``fc2_experts_weights`` [E, hidden, inter]; optional biases [E, 2 * inter], [E, hidden]. SwiGLU
  needs ``activation_type='swiglu', swiglu_fusion=1``: gate and up *interleaved* row by row
  (row 2i = gate_i, row 2i+1 = up_i); the CPU kernels refuse ``swiglu_fusion`` 0 and 2 ("CPU MoE
  only supports interleaved SwiGLU format"). The activation is
  ``G * sigmoid(alpha * G) * (L + beta)`` with ``activation_alpha`` 1, ``activation_beta`` 0 and no
  ``swiglu_limit`` by default: plain SiLU(gate) * up.
- Routing, ``MoE``: a full softmax over ``router_probs`` (they are logits), top-k on it, mixing
  weights the softmax values (divided by their sum when ``normalize_routing_weights=1``); a route
  of weight 0 is skipped. No input for separate mixing weights.
- Routing, ``QMoE``: top-k on the raw ``router_probs``; without ``router_weights`` the mixing
  weights are a softmax over the k chosen logits (``normalize_routing_weights`` has no effect);
  with ``router_weights`` [T, E] the weights are its values at the chosen experts (divided by
  their sum when ``normalize_routing_weights=1``). Routes of weight <= 1e-8 are skipped.
- ``QMoE`` weights: uint8 [E, N, K * bits / 8] (per expert, one row per output, inputs along the
  row), int4 two codes a byte, the even input in the low nibble; no zero-point input means the
  zero point 2^(bits-1) (128 / 8). Scales [E, N] (one per expert row: the kernel dequantizes and
  runs an SGEMM, float32 throughout) or [E, N, K / block_size] with ``block_size`` (a power of two
  >= 16; the kernel then packs the experts for the MatMulNBits kernels: int4 keeps float32
  activations at ``accuracy_level`` 0, int8 has only int8-activation kernels and quantizes the
  activations per block at every level). Inputs may be [T, hidden] or [b, s, hidden]; router
  tensors are [T, E] either way. ``use_sparse_mixer`` (Phi-3.5-MoE's, k=2 only) is not used.
- Speed (``benchmarks/moe_kernels.py``, 21B-A3B's layer, 2 threads): row scales dequantize the
  active experts on every call, so blocks are 2-4x faster (int4 decode 85 -> 23 ms); int8 QMoE is
  slower than int8 MatMulNBits at ``accuracy_level`` 4 (258 vs 29 ms a decode token).

How the routing is fed, exactly ERNIE 4.5's (the kernels' own top-k cannot take "choose on biased
scores, weight with unbiased ones" from one tensor): the graph computes ``p``, the chosen experts
(``TopK`` on ``p + bias``) and ``S = sum p[chosen]``; then

- ``MoE`` receives ``router_probs = log p`` at the chosen experts and -1e30 elsewhere: its softmax
  gives ``p_j / S`` on exactly the chosen experts and 0 on the rest, so its top-k takes them; its
  output is then scaled by ``S / max(S, moe_norm_min)`` (1 unless the clamp binds);
- ``QMoE`` receives ``router_probs = p + bias`` (its top-k chooses on the biased scores) and
  ``router_weights = p / max(S, moe_norm_min)`` (its mixing weights, ``normalize_routing_weights=0``).

Both agree with the reference except where a chosen expert's weight is below the kernel's skip
threshold (0 for MoE, 1e-8 for QMoE) or ties in the biased scores are broken differently.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, fields
from typing import Protocol

import numpy as np

from .ernie4_5_moe_family import FAMILY as MOE_FAMILY
from .ernie4_5_onnx import (AttentionIO, DecoderNames, LayerNames, attention, embedding,  # noqa: F401 - blocks
                            fused_attention_inputs, head, mlp, rms_norm,
                            rope_tables)  # the decoder export composes: embedding, head, rope_tables, fused_attention_inputs
from .onnx_graph import GraphBuilder, f32, float_matmul, i64, pack_codes

FILL = -1e30  # router logit of an expert not chosen: exp(FILL - max) is 0 in float32
ONNX_FLOAT = 1  # onnx.TensorProto.FLOAT (a Cast target)


class MoEShape(Protocol):
    """The config fields the block reads (an ERNIE 4.5 MoE config has them)."""

    hidden_size: int
    moe_num_experts: int
    moe_k: int
    moe_intermediate_size: int
    moe_num_shared_experts: int
    moe_norm_min: float


class IntegerWeight(Protocol):
    """A Linear's integer weights as ``export/decoder_onnx.WeightOnlyLinear`` holds them: signed
    symmetric codes [in, out], scales [in / group, out] (one row when ``group_size`` is None)."""

    codes: np.ndarray
    scales: np.ndarray
    bits: int
    group_size: int | None


Linear = str | tuple[str, str]  # a fused up_gate Linear prefix (gate half first), or (gate, up) prefixes


@dataclass(frozen=True)
class MoENames:
    """Parameter names of one MoE layer. Linears are prefixes (``{prefix}.weight`` [in, out], Paddle
    layout; ``{prefix}.bias`` where the checkpoint has one); expert templates hold ``{e}``."""

    gate: str  # the router's weight [hidden, experts] (no bias)
    correction_bias: str | None  # e_score_correction_bias [1, experts]; None: no aux-free bias
    expert_in: Linear  # template(s): fused "...experts.{e}.up_gate_proj" or (gate, up)
    expert_down: str  # template: "...experts.{e}.down_proj"
    shared_in: Linear | None = None  # shared experts' gate/up (one MLP of width k_shared * moe_inter)
    shared_down: str | None = None

    def expert(self, e: int) -> tuple[Linear, str]:
        """Expert ``e``'s (gate/up, down) Linear prefixes."""
        if isinstance(self.expert_in, str):
            return self.expert_in.format(e=e), self.expert_down.format(e=e)
        return (self.expert_in[0].format(e=e), self.expert_in[1].format(e=e)), self.expert_down.format(e=e)


def paddle_names(layer: int, prefix: str = "ernie.layers.", shared: bool = True) -> MoENames:
    """The Paddle release / PaddleFormers names of layer ``layer``'s MoE (PaddleFormers'
    ``Ernie4_5_MoeSparseMoeBlock``: ``mlp.gate``, ``mlp.moe_statics``, ``mlp.experts.{e}``,
    ``mlp.shared_experts``, fused ``up_gate_proj``)."""
    p = f"{prefix}{layer}.mlp."
    return MoENames(gate=f"{p}gate.weight", correction_bias=f"{p}moe_statics.e_score_correction_bias",
                    expert_in=p + "experts.{e}.up_gate_proj", expert_down=p + "experts.{e}.down_proj",
                    shared_in=f"{p}shared_experts.up_gate_proj" if shared else None,
                    shared_down=f"{p}shared_experts.down_proj" if shared else None)


@dataclass(frozen=True)
class Routing:
    """The router's tensors (see the module docstring): all [T, .] over the flattened tokens."""

    probs: str  # p [T, E]
    biased: str  # p + bias [T, E]
    chosen: str  # expert ids [T, k] int64
    values: str  # p[chosen] [T, k]
    weights: str  # p[chosen] / max(S, norm_min) [T, k]
    total: str  # S [T, 1]
    denominator: str  # max(S, norm_min) [T, 1]


def router(g: GraphBuilder, x2: str, config: MoEShape, names: MoENames) -> Routing:
    """ERNIE 4.5's router on tokens x2 [T, hidden], in float32 whatever ``g.matmul`` does."""
    probs = g.op("Softmax", float_matmul(g, x2, names.gate), axis=-1)  # [T, E]
    biased = probs if names.correction_bias is None else g.op(
        "Add", probs, g.const(names.correction_bias, f32(g.weights[names.correction_bias]).reshape(1, -1)))
    _, chosen = g.op("TopK", biased, g.const(f"moe.k{config.moe_k}", i64([config.moe_k])), outputs=2, axis=-1)
    values = g.op("GatherElements", probs, chosen, axis=1)  # [T, k] unbiased
    total = g.op("ReduceSum", values, g.const("moe.axis_last", i64([-1])), keepdims=1)  # [T, 1]
    denominator = g.op("Max", total, g.const(f"moe.norm_min.{config.moe_norm_min}", f32(config.moe_norm_min)))
    return Routing(probs, biased, chosen, values, g.op("Div", values, denominator), total, denominator)


def _swiglu(g: GraphBuilder, x: str, linear_in: Linear, down: str) -> str:
    """``down(silu(gate(x)) * up(x))`` through ``g.linear`` (fused gate|up split in halves)."""
    if isinstance(linear_in, str):
        gate, up = g.op("Split", g.linear(x, linear_in), outputs=2, axis=-1)  # two equal halves
    else:
        gate, up = g.linear(x, linear_in[0]), g.linear(x, linear_in[1])
    return g.linear(g.op("Mul", g.op("Mul", gate, g.op("Sigmoid", gate)), up), down)


# --- expert weights in the kernels' layouts -------------------------------------------------------

def _gate_up(weights: Mapping[str, np.ndarray], linear_in: Linear, suffix: str) -> tuple[np.ndarray, np.ndarray]:
    """Gate and up halves of a Linear's ``suffix`` array (``weight`` [in, 2I] or ``bias`` [2I]),
    each [..., I] along the last axis."""
    if isinstance(linear_in, str):
        fused = np.asarray(weights[f"{linear_in}.{suffix}"])
        half = fused.shape[-1] // 2
        return fused[..., :half], fused[..., half:]
    return np.asarray(weights[f"{linear_in[0]}.{suffix}"]), np.asarray(weights[f"{linear_in[1]}.{suffix}"])


def interleave(gate: np.ndarray, up: np.ndarray) -> np.ndarray:
    """[..., I] gate and up -> [..., 2I] with gate_i at 2i and up_i at 2i+1 (``swiglu_fusion=1``)."""
    return np.stack([gate, up], axis=-1).reshape(*gate.shape[:-1], 2 * gate.shape[-1])


def _float_experts(weights: Mapping[str, np.ndarray], config: MoEShape, names: MoENames) -> dict:
    """fc1 [E, 2I, hidden] (gate/up interleaved) and fc2 [E, hidden, I] for ``MoE``."""
    experts = [names.expert(e) for e in range(config.moe_num_experts)]
    return {"fc1": f32(np.stack([interleave(*_gate_up(weights, i, "weight")).T for i, _ in experts])),
            "fc2": f32(np.stack([np.asarray(weights[f"{d}.weight"]).T for _, d in experts]))}


def _expert_biases(g: GraphBuilder, config: MoEShape, names: MoENames) -> tuple[str, str]:
    """fc1 [E, 2I] (interleaved) and fc2 [E, hidden] bias initializers, "" where the experts have none."""
    experts = [names.expert(e) for e in range(config.moe_num_experts)]
    first_in, first_down = experts[0]
    key = names.expert_down.format(e="*")
    fc1 = fc2 = ""
    if f"{first_in if isinstance(first_in, str) else first_in[0]}.bias" in g.weights:
        fc1 = g.const(f"{key}.moe_fc1_bias",
                      f32(np.stack([interleave(*_gate_up(g.weights, i, "bias")) for i, _ in experts])))
    if f"{first_down}.bias" in g.weights:
        fc2 = g.const(f"{key}.moe_fc2_bias", f32(np.stack([np.asarray(g.weights[f"{d}.bias"]) for _, d in experts])))
    return fc1, fc2


def _scales(scales: np.ndarray, rows: int, block: int | None) -> np.ndarray:
    """[out, groups] scales -> [out] (row-wise) or [out, rows / block] (blocks; a per-channel scale
    repeated over its row's blocks)."""
    if block is None:
        return scales[:, 0]
    return scales if scales.shape[1] == rows // block else np.repeat(scales, rows // block, axis=1)


def _integer_experts(integer: Mapping[str, IntegerWeight], config: MoEShape, names: MoENames,
                     block: int | None) -> tuple[dict, int]:
    """QMoE's fc1/fc2 codes and scales from every expert's integer weights, and their bit width."""
    fc1, s1, fc2, s2, bits = [], [], [], [], set()
    for e in range(config.moe_num_experts):
        linear_in, down = names.expert(e)
        parts = [integer[f"{p}.weight"] for p in ([linear_in] if isinstance(linear_in, str) else linear_in)]
        codes = np.concatenate([q.codes for q in parts], axis=1)  # [hidden, 2I] gate | up
        scales = np.concatenate([q.scales for q in parts], axis=1)  # [groups, 2I]
        half = codes.shape[1] // 2
        fc1.append(interleave(codes[:, :half], codes[:, half:]).T)  # [2I, hidden]
        s1.append(_scales(interleave(scales[:, :half], scales[:, half:]).T, codes.shape[0], block))
        q = integer[f"{down}.weight"]
        fc2.append(q.codes.T)  # [hidden, I]
        s2.append(_scales(q.scales.T, q.codes.shape[0], block))
        bits |= {q.bits for q in [*parts, q]}
    if len(bits) != 1 or bits - {4, 8}:
        raise ValueError(f"QMoE needs every expert weight at one width, 4 or 8 bits; got {sorted(bits)}")
    (width,) = bits
    return {"fc1": pack_codes(np.stack(fc1), width), "fc1_scales": f32(np.stack(s1)),
            "fc2": pack_codes(np.stack(fc2), width), "fc2_scales": f32(np.stack(s2))}, width


def kernel_block(integer: Mapping[str, IntegerWeight], config: MoEShape, names: MoENames,
                 block_size: int | None) -> int | None:
    """QMoE's ``block_size``: the experts' group size where they have one (a power of two >= 16
    dividing hidden and inter), else ``block_size`` (None: one scale per expert row)."""
    groups = {integer[f"{p}.weight"].group_size for e in range(config.moe_num_experts)
              for p in _prefixes(names.expert(e))}
    if len(groups) != 1:
        raise ValueError(f"QMoE needs one group size for every expert weight; got {groups}")
    (group,) = groups
    block = group if group is not None else block_size
    if block is not None and (block < 16 or block & (block - 1) or config.hidden_size % block
                              or config.moe_intermediate_size % block):
        raise ValueError(f"QMoE block size {block} must be a power of two >= 16 dividing hidden "
                         f"{config.hidden_size} and moe_intermediate_size {config.moe_intermediate_size}")
    return block


def _prefixes(expert: tuple[Linear, str]) -> list[str]:
    linear_in, down = expert
    return [*([linear_in] if isinstance(linear_in, str) else linear_in), down]


def _trim(inputs: list[str]) -> list[str]:
    """Optional inputs left out at the end (ONNX: trailing empty names may be dropped)."""
    while inputs and not inputs[-1]:
        inputs.pop()
    return inputs


# --- the layer ------------------------------------------------------------------------------------

def _fused_moe(g: GraphBuilder, x2: str, config: MoEShape, names: MoENames, route: Routing) -> str:
    """``com.microsoft.MoE`` over x2 [T, hidden], fed the chosen experts' log-probabilities."""
    arrays = _float_experts(g.weights, config, names)
    key = names.expert_down.format(e="*")
    fill = g.op("Expand", g.const("moe.fill", f32(FILL)), g.op("Shape", route.probs))  # [T, E]
    logits = g.op("ScatterElements", fill, route.chosen, g.op("Log", route.values), axis=1)  # [T, E]
    fc1_bias, fc2_bias = _expert_biases(g, config, names)
    inputs = [x2, logits, g.const(f"{key}.moe_fc1", arrays["fc1"]), fc1_bias, g.const(f"{key}.moe_fc2", arrays["fc2"]),
              fc2_bias]
    out = g.op("MoE", *_trim(inputs), domain="com.microsoft", k=config.moe_k, activation_type="swiglu",
               swiglu_fusion=1, normalize_routing_weights=0)  # [T, hidden], weights p_j / S
    return g.op("Mul", out, g.op("Div", route.total, route.denominator))  # p_j / max(S, norm_min)


def _quantized_moe(g: GraphBuilder, x2: str, config: MoEShape, names: MoENames, route: Routing,
                   integer: Mapping[str, IntegerWeight], block_size: int | None, accuracy_level: int) -> str:
    """``com.microsoft.QMoE`` over x2 [T, hidden]: chooses on the biased scores, mixes with
    ``router_weights``."""
    block = kernel_block(integer, config, names, block_size)
    arrays, bits = _integer_experts(integer, config, names, block)
    key = names.expert_down.format(e="*")
    mixing = g.op("Div", route.probs, route.denominator)  # [T, E]; the kernel gathers the chosen
    fc1_bias, fc2_bias = _expert_biases(g, config, names)
    inputs = [x2, route.biased, g.const(f"{key}.qmoe_fc1.q{bits}", arrays["fc1"]),
              g.const(f"{key}.qmoe_fc1.scales", arrays["fc1_scales"]), fc1_bias,
              g.const(f"{key}.qmoe_fc2.q{bits}", arrays["fc2"]),
              g.const(f"{key}.qmoe_fc2.scales", arrays["fc2_scales"]), fc2_bias,
              *[""] * 6, mixing]  # fc3 and zero points absent; router_weights is input 14
    attrs = {"block_size": block} if block is not None else {}
    if accuracy_level:
        attrs["accuracy_level"] = accuracy_level
    return g.op("QMoE", *inputs, domain="com.microsoft", k=config.moe_k, activation_type="swiglu",
                swiglu_fusion=1, normalize_routing_weights=0, expert_weight_bits=bits, **attrs)


def dispatched_experts(g: GraphBuilder, x2: str, config: MoEShape, names: MoENames, route: Routing) -> str:
    """The experts without a fused kernel: for each expert, ``Gather`` the tokens routed to it,
    its SwiGLU through ``g.linear`` (MatMul or the export's MatMulNBits), scaled by its weight and
    added into [T, hidden] by a ``ScatterND`` (reduction add) of its own. One ScatterND for all
    experts would be wrong: a token routed to k experts repeats its row, and ONNX Runtime's CPU
    ScatterND adds the rows of one node in parallel without atomics (``scatter_nd.cc``), so
    repeated rows race (seen: 12% of the output lost at 128 tokens, 2 threads)."""
    zeros = g.op("Mul", route.probs, g.const("moe.zero", f32(0.0)))  # [T, E]
    dense = g.op("ScatterElements", zeros, route.chosen, route.weights, axis=1)  # [T, E] weight per expert
    out = g.op("Mul", x2, "moe.zero")  # [T, hidden]
    for e in range(config.moe_num_experts):
        mine = g.op("Equal", route.chosen, g.const(f"moe.expert{e}.id", i64(e)))  # [T, k]
        hit = g.op("ReduceMax", g.op("Cast", mine, to=ONNX_FLOAT), axes=[1], keepdims=0)  # [T]
        tokens = g.op("NonZero", hit)  # [1, n], each token once
        rows = g.op("Squeeze", tokens, g.const("moe.axis0", i64([0])))  # [n]
        expert = _swiglu(g, g.op("Gather", x2, rows, axis=0), *names.expert(e))  # [n, hidden]
        weight = g.op("Gather", g.op("Gather", dense, g.const(f"moe.expert{e}", i64([e])), axis=1), rows, axis=0)
        out = g.op("ScatterND", out, g.op("Transpose", tokens, perm=[1, 0]), g.op("Mul", expert, weight),
                   reduction="add")  # rows [n, 1] unique within this node
    return out


def moe(g: GraphBuilder, x: str, config: MoEShape, names: MoENames, integer: Mapping[str, IntegerWeight] | None = None,
        fused: bool = True, block_size: int | None = None, accuracy_level: int = 0, name: str | None = None) -> str:
    """ERNIE 4.5's MoE layer on x [b, s, hidden] or [T, hidden] -> the same shape.

    ``integer`` (weight name -> codes/scales) for every expert: ``QMoE`` (``block_size``: write
    per-channel scales as blocks of that size, for the MatMulNBits kernels, 128 for 21B-A3B's
    shapes; None: one scale per expert row, the slower dequantizing kernel); else ``MoE`` on the
    float weights. ``fused=False``: one Linear per expert (:func:`dispatched_experts`). Shared
    experts, when named, are a plain SwiGLU MLP added to the routed output."""
    x2 = g.op("Reshape", x, g.const(f"moe.tokens.{config.hidden_size}", i64([-1, config.hidden_size])))  # [T, hidden]
    route = router(g, x2, config, names)
    if not fused:
        out = dispatched_experts(g, x2, config, names, route)
    elif integer is not None:
        out = _quantized_moe(g, x2, config, names, route, integer, block_size, accuracy_level)
    else:
        out = _fused_moe(g, x2, config, names, route)
    if names.shared_in is not None:
        out = g.op("Add", out, _swiglu(g, x2, names.shared_in, names.shared_down))
    return g.op("Reshape", out, g.op("Shape", x), name=name)


# --- the decoder's blocks (the family's ``onnx_blocks``; ``export/decoder_onnx.py`` composes them) --

GRAPH_NAME = "ernie4_5_moe_decoder"
QMOE_BLOCKS = (128, 64, 32, 16)  # QMoE block sizes tried for per-channel codes, largest first


@dataclass(frozen=True)
class MoeLayerNames(LayerNames):
    """A decoder layer's names (the dense ones) and its index, which says whether it is an MoE layer."""

    index: int
    prefix: str  # of every layer: "ernie.layers."


@dataclass(frozen=True)
class MoeDecoderNames(DecoderNames):
    def layer(self, i: int) -> MoeLayerNames:
        dense = super().layer(i)
        return MoeLayerNames(**{f.name: getattr(dense, f.name) for f in fields(dense)}, index=i,
                             prefix=self.table.layer_prefix)


NAMES = MoeDecoderNames(MOE_FAMILY.names)


def _expert_weights(config: MoEShape, names: MoENames) -> list[str]:
    return [f"{p}.weight" for e in range(config.moe_num_experts) for p in _prefixes(names.expert(e))]


def qmoe_block(integer: Mapping[str, IntegerWeight], config: MoEShape, names: MoENames) -> int | None:
    """QMoE's block for these experts: their group size, or for per-channel codes the largest of
    :data:`QMOE_BLOCKS` dividing hidden and the expert width (the kernel's MatMulNBits path; a
    per-row scale is repeated over the row's blocks); None: one scale per row (dequantizing kernel)."""
    fitting = [b for b in QMOE_BLOCKS if not config.hidden_size % b and not config.moe_intermediate_size % b]
    return kernel_block(integer, config, names, fitting[0] if fitting else None)


def expert_kernel(g: GraphBuilder, config: MoEShape, names: MoENames) -> str:
    """How one MoE layer's experts run: ``moe`` (float fused), ``qmoe`` (integer fused) or
    ``dispatch`` (one Linear per expert: MatMul, or MatMulNBits for integer weights). ``g.experts``
    "auto" takes ``qmoe`` for 4-bit experts and ``dispatch`` for float and 8-bit ones and mixed
    layers, as measured at ERNIE-4.5-21B-A3B's shape on 2 threads: in the whole decoder
    (``benchmarks/moe_decoding.py``) int4 QMoE decodes 1.13x faster than MatMulNBits per expert and
    float MoE 0.60x as fast as MatMul per expert; for int8 the layer benchmark
    (``benchmarks/moe_kernels.py``) had QMoE 9x slower and the decoder benchmark 1.12x faster, so
    int8 keeps the per-expert kernels until that is settled. "fused" asks for ``moe``/``qmoe``
    (refused where the weights cannot be fed to QMoE), "dispatch" for ``dispatch``."""
    weights = _expert_weights(config, names)
    quantized = [w in g.integer for w in weights]
    if g.experts == "dispatch" or (any(quantized) and not all(quantized)):
        return "dispatch"
    if not any(quantized):
        return "moe" if g.experts == "fused" else "dispatch"
    bits = {g.integer[w].bits for w in weights}
    if g.experts == "fused":
        qmoe_block(g.integer, config, names)  # raises where QMoE cannot hold them
        return "qmoe"
    try:
        qmoe_block(g.integer, config, names)
    except ValueError:
        return "dispatch"
    return "qmoe" if bits == {4} else "dispatch"


def moe_layer(g: GraphBuilder, x: str, config, names: MoeLayerNames) -> str:
    """Layer ``names.index``'s MoE MLP on x [b, s, hidden], its experts run as :func:`expert_kernel` says."""
    layer = paddle_names(names.index, names.prefix, shared=config.moe_num_shared_experts > 0)
    kernel = expert_kernel(g, config, layer)
    if kernel == "qmoe":
        return moe(g, x, config, layer, integer=g.integer, block_size=qmoe_block(g.integer, config, layer),
                   accuracy_level=g.accuracy_level)
    return moe(g, x, config, layer, fused=kernel == "moe")


def decoder_layer(g: GraphBuilder, x: str, config, names: MoeLayerNames,
                  io: AttentionIO) -> tuple[str, tuple[str, str]]:
    """``Ernie45MoeDecoderLayer.forward_cached``: the dense layer's ``x + attn(rms(x))``, then
    ``x + mlp(rms(x))`` with the MoE MLP in the layers the config names."""
    attended, present = attention(g, rms_norm(g, x, names.input_norm, config.rms_norm_eps), config, names, io)
    x = g.op("Add", x, attended)
    normed = rms_norm(g, x, names.post_norm, config.rms_norm_eps)
    out = moe_layer(g, normed, config, names) if config.is_moe_layer(names.index) else mlp(g, normed, config, names)
    return g.op("Add", x, out), present
