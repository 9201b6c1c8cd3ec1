"""models/ernie4_5_moe_onnx.py: the MoE block, run in ONNX Runtime, equals a numpy model of ERNIE 4.5's
routing and mixing (PaddleFormers 1.2.0 / transformers ``Ernie4_5_MoeTopKRouter``) on random weights:

- float experts as ``com.microsoft.MoE`` and as per-expert MatMuls with Gather dispatch: within 1e-5;
- int8 / int4 experts as ``com.microsoft.QMoE`` (per-row scales, and block scales) against the numpy
  model of the dequantized weights (tolerances at :data:`QMOE_TOLERANCE`, with why).

The correction bias is large enough to change the chosen experts for many tokens (asserted), and one
variant's ``moe_norm_min`` is large enough that the clamp binds. The routing bugs a port makes
(mixing with biased scores, top-k on unbiased ones, gate/up halves swapped) are each far outside the
tolerance on these inputs (asserted against the numpy model with the bug).
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import numpy as np
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper

from ernie_compress.models import ernie4_5_moe_onnx as moe_onnx
from ernie_compress.models.families import config_from_dict
from ernie_compress.models.onnx_graph import GraphBuilder
from ernie_compress.models.presets import resolve_preset

LAYER = 1


def Config(**changes):  # noqa: N802 - reads as the config it builds
    """A small ERNIE 4.5 MoE config (the real config class): 8 experts, top-2, 2 shared experts."""
    keys = dict(resolve_preset("ernie45-moe-tiny"), hidden_size=64, moe_num_experts=8, moe_k=2,
                moe_intermediate_size=32, moe_num_shared_experts=2, moe_norm_min=1e-12)
    return config_from_dict({**keys, **changes})


VARIANTS = {"shared": Config(), "no_shared": Config(moe_num_shared_experts=0),
            "six_experts_clamped": Config(moe_num_experts=6, moe_norm_min=0.9)}  # the clamp binds


@dataclass(frozen=True)
class Codes:
    """Integer weights as the export holds them: signed codes [in, out], scales [in / group, out]."""

    codes: np.ndarray
    scales: np.ndarray
    bits: int
    group_size: int | None


def _names(config: Config) -> moe_onnx.MoENames:
    return moe_onnx.paddle_names(LAYER, shared=config.moe_num_shared_experts > 0)


@lru_cache(maxsize=None)
def _weights(variant: str) -> dict[str, np.ndarray]:
    """Paddle-layout weights [in, out] of one MoE layer under its Paddle names."""
    config, names = VARIANTS[variant], _names(VARIANTS[variant])
    rng = np.random.default_rng(3)
    h, i, e = config.hidden_size, config.moe_intermediate_size, config.moe_num_experts
    w = {names.gate: rng.normal(0, 0.3, (h, e)), names.correction_bias: rng.normal(0, 0.15, (1, e))}
    for j in range(e):
        up_gate, down = names.expert(j)
        w[f"{up_gate}.weight"] = rng.normal(0, 0.2, (h, 2 * i))
        w[f"{down}.weight"] = rng.normal(0, 0.2, (i, h))
    if names.shared_in:
        width = i * config.moe_num_shared_experts
        w[f"{names.shared_in}.weight"] = rng.normal(0, 0.2, (h, 2 * width))
        w[f"{names.shared_down}.weight"] = rng.normal(0, 0.2, (width, h))
    return {k: v.astype(np.float32) for k, v in w.items()}


def _tokens(config: Config, shape: tuple[int, ...]) -> np.ndarray:
    return np.random.default_rng(11).standard_normal((*shape, config.hidden_size)).astype(np.float32)


# --- the numpy model --------------------------------------------------------------------------------

def _silu(z):
    return z / (1 + np.exp(-z))


def _swiglu(x, up_gate, down, swap=False):
    gate, up = np.split(x @ up_gate, 2, axis=-1)
    if swap:
        gate, up = up, gate
    return (_silu(gate) * up) @ down


def reference(x, w, config, bug: str | None = None) -> np.ndarray:
    """ERNIE 4.5's MoE layer (float64); ``bug`` plants one of the routing mistakes."""
    names = _names(config)
    x2 = x.reshape(-1, config.hidden_size).astype(np.float64)
    logits = x2 @ w[names.gate]
    p = np.exp(logits - logits.max(-1, keepdims=True))
    p /= p.sum(-1, keepdims=True)  # [T, E]
    biased = p + w[names.correction_bias]
    chosen = np.argsort(-(p if bug == "topk_unbiased" else biased), axis=-1, kind="stable")[:, :config.moe_k]
    values = np.take_along_axis(biased if bug == "mix_biased" else p, chosen, axis=-1)  # [T, k]
    weights = values / np.maximum(values.sum(-1, keepdims=True), config.moe_norm_min)
    out = np.zeros_like(x2)
    for t in range(len(x2)):
        for e, weight in zip(chosen[t], weights[t]):
            up_gate, down = names.expert(e)
            out[t] += weight * _swiglu(x2[t], w[f"{up_gate}.weight"], w[f"{down}.weight"], swap=bug == "swap")
    if names.shared_in:
        out += _swiglu(x2, w[f"{names.shared_in}.weight"], w[f"{names.shared_down}.weight"])
    return out.reshape(x.shape)


def chosen_sets(x, w, config, biased: bool) -> list[frozenset]:
    names = _names(config)
    logits = x.reshape(-1, config.hidden_size) @ w[names.gate]
    p = np.exp(logits - logits.max(-1, keepdims=True))
    p /= p.sum(-1, keepdims=True)
    scores = p + w[names.correction_bias] if biased else p
    return [frozenset(row) for row in np.argsort(-scores, axis=-1)[:, :config.moe_k]]


# --- running the block ------------------------------------------------------------------------------

def _run(weights, config, x, **kwargs) -> np.ndarray:
    g = GraphBuilder(weights)
    out = moe_onnx.moe(g, "x", config, _names(config), name="y", **kwargs)
    assert out == "y"
    model = g.model("moe", [helper.make_tensor_value_info("x", TensorProto.FLOAT, None)],
                    [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)])
    options = ort.SessionOptions()
    options.log_severity_level = 3
    session = ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])
    return session.run(None, {"x": x})[0]


def _close(actual, expected, tolerance):
    scale = max(1.0, float(np.abs(expected).max()))
    assert actual.shape == expected.shape
    error = float(np.abs(actual - expected).max())
    assert error <= tolerance * scale, f"max abs error {error:.2e} > {tolerance:.0e} x {scale:.2f}"
    return error


SHAPES = [(2, 5), (7,)]  # [b, s, hidden] and [T, hidden]


def test_the_correction_bias_changes_the_chosen_experts():
    for variant, config in VARIANTS.items():
        x, w = _tokens(config, (40,)), _weights(variant)
        changed = sum(a != b for a, b in zip(chosen_sets(x, w, config, True), chosen_sets(x, w, config, False)))
        assert changed >= 10, f"{variant}: the bias changes the experts of only {changed}/40 tokens"


def test_the_clamp_binds_in_the_clamped_variant():
    config, w = VARIANTS["six_experts_clamped"], _weights("six_experts_clamped")
    x = _tokens(config, (40,))
    p = np.exp(x @ w[_names(config).gate])
    p /= p.sum(-1, keepdims=True)
    biased = p + w[_names(config).correction_bias]
    totals = np.take_along_axis(p, np.argsort(-biased, -1)[:, :config.moe_k], -1).sum(-1)
    assert (totals < config.moe_norm_min).mean() > 0.5


@pytest.mark.parametrize("fused", [True, False], ids=["MoE", "per_expert_matmul"])
@pytest.mark.parametrize("shape", SHAPES, ids=["3d", "2d"])
@pytest.mark.parametrize("variant", VARIANTS)
def test_float_experts_equal_the_reference(variant, shape, fused):
    config, w = VARIANTS[variant], _weights(variant)
    x = _tokens(config, shape)
    _close(_run(w, config, x, fused=fused), reference(x, w, config), 1e-5)


# --- integer experts ------------------------------------------------------------------------------

def _quantize(weight: np.ndarray, bits: int, group: int | None) -> Codes:
    """Symmetric RTN codes of a weight [in, out] (one scale per output column, or per group of rows)."""
    rows, cols = weight.shape
    size = rows if group is None else group
    qmax = 2 ** (bits - 1) - 1
    grouped = weight.reshape(rows // size, size, cols)
    scales = np.abs(grouped).max(axis=1) / qmax  # [groups, out]
    codes = np.clip(np.rint(grouped / scales[:, None]), -qmax, qmax)
    return Codes(codes.reshape(rows, cols).astype(np.int8), scales.astype(np.float32), bits, group)


def _dequantized(codes: Codes) -> np.ndarray:
    size = codes.codes.shape[0] // codes.scales.shape[0]
    return (codes.codes.astype(np.float32) * np.repeat(codes.scales, size, axis=0)).astype(np.float32)


def _integer_weights(variant: str, bits: int, group: int | None):
    """Every routed expert's codes, and the weights with the experts dequantized (shared experts
    and the router stay float, as both references keep them)."""
    config, names = VARIANTS[variant], _names(VARIANTS[variant])
    w = dict(_weights(variant))
    integer = {}
    for e in range(config.moe_num_experts):
        for prefix in moe_onnx._prefixes(names.expert(e)):
            integer[f"{prefix}.weight"] = _quantize(w[f"{prefix}.weight"], bits, group)
            w[f"{prefix}.weight"] = _dequantized(integer[f"{prefix}.weight"])
    return w, integer


# Row scales: the CPU kernel dequantizes to float32 and runs an SGEMM, so only float rounding
# separates it from the dequantized model (1e-5). Block scales: int4 runs MatMulNBits' float32
# kernels (1e-5); int8 has only kernels that quantize the activations to int8 per block of 16, a
# relative error of ~1/254 per product, which summed over hidden/inter terms of random sign stays
# near 1e-2 of the output scale.
QMOE_TOLERANCE = {(8, "rows"): 1e-5, (4, "rows"): 1e-5, (4, "blocks"): 1e-5, (8, "blocks"): 2e-2}
SCALES = {"rows": dict(group=None, block_size=None), "blocks": dict(group=16, block_size=None),
          "rows_as_blocks": dict(group=None, block_size=16)}


@pytest.mark.parametrize("scales", SCALES)
@pytest.mark.parametrize("bits", [8, 4])
@pytest.mark.parametrize("variant", VARIANTS)
def test_qmoe_equals_the_dequantized_reference(variant, bits, scales):
    config = VARIANTS[variant]
    w, integer = _integer_weights(variant, bits, SCALES[scales]["group"])
    x = _tokens(config, (2, 5))
    actual = _run(w, config, x, integer=integer, block_size=SCALES[scales]["block_size"])
    tolerance = QMOE_TOLERANCE[bits, "rows" if scales == "rows" else "blocks"]
    _close(actual, reference(x, w, config), tolerance)


@pytest.mark.parametrize("bug", ["mix_biased", "topk_unbiased", "swap"])
@pytest.mark.parametrize("variant", VARIANTS)
def test_each_routing_bug_is_far_outside_the_tolerance(variant, bug):
    """The inputs above tell a correct layer from one with the bug: the buggy model's output is
    off by more than 5 times the loosest tolerance used here (int8 block kernels, 2e-2)."""
    config, w = VARIANTS[variant], _weights(variant)
    x = _tokens(config, (2, 5))
    right, wrong = reference(x, w, config), reference(x, w, config, bug=bug)
    assert np.abs(right - wrong).max() > 0.1 * max(1.0, float(np.abs(right).max()))


def test_qmoe_refuses_mixed_widths():
    w, integer = _integer_weights("no_shared", 8, None)
    name = next(iter(integer))
    integer[name] = _quantize(_weights("no_shared")[name], 4, None)
    with pytest.raises(ValueError, match="one width"):
        _run(w, VARIANTS["no_shared"], _tokens(VARIANTS["no_shared"], (3,)), integer=integer)


def test_dispatched_experts_sum_every_route_with_threads():
    """Many tokens on 2 threads: each expert's rows are added by a ScatterND of their own (one
    ScatterND over all routes races on the rows a token repeats, one per chosen expert)."""
    config = Config(hidden_size=2048, moe_num_shared_experts=0)
    names = _names(config)
    rng = np.random.default_rng(5)
    w = {names.gate: rng.normal(0, 0.1, (2048, 8)), names.correction_bias: rng.normal(0, 0.15, (1, 8))}
    for e in range(8):
        up_gate, down = names.expert(e)
        w[f"{up_gate}.weight"], w[f"{down}.weight"] = rng.normal(0, 0.05, (2048, 64)), rng.normal(0, 0.1, (32, 2048))
    w = {k: v.astype(np.float32) for k, v in w.items()}
    x = _tokens(config, (512,))
    g = GraphBuilder(w)
    moe_onnx.moe(g, "x", config, names, fused=False, name="y")
    model = g.model("moe", [helper.make_tensor_value_info("x", TensorProto.FLOAT, None)],
                    [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)])
    options = ort.SessionOptions()
    options.intra_op_num_threads = 2
    session = ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])
    expected = reference(x, w, config)
    for _ in range(10):  # the race (old graph) showed in about half the runs of 10 calls
        _close(session.run(None, {"x": x})[0], expected, 1e-5)


# --- the block against the Paddle MoE layer -----------------------------------------------------------

@pytest.mark.parametrize("shared", [2, 0])
def test_the_block_equals_the_paddle_moe_layer_on_its_own_weights(shared):
    """The family's two writings of the MoE layer agree: ``models/ernie4_5_moe.py``'s
    ``Ernie45MoeBlock`` and this block, fed the Paddle model's own parameters by the names
    ``paddle_names`` gives (so a name or layout disagreement between them fails here too)."""
    from ernie_compress.models import build_model, model_state
    from ernie_compress.paddle_env import import_paddle

    paddle = import_paddle()
    config = Config(vocab_size=40, moe_num_shared_experts=shared)
    paddle.seed(0)
    model = build_model(config)
    model.eval()
    rng = np.random.default_rng(5)
    layer = next(i for i in range(config.num_hidden_layers) if config.is_moe_layer(i))
    block = model.ernie.layers[layer].mlp
    bias = rng.normal(0, 0.1, (1, config.moe_num_experts)).astype(np.float32)  # large enough to reroute
    block.moe_statics.e_score_correction_bias.set_value(bias)
    x = rng.normal(0, 1, (2, 5, config.hidden_size)).astype(np.float32)
    with paddle.no_grad():
        expected = block(paddle.to_tensor(x)).numpy()

    state = model_state(model)
    g = GraphBuilder(state)
    moe_onnx.moe(g, "x", config, moe_onnx.paddle_names(layer, shared=shared > 0), name="y")
    onnx_model = g.model("moe", [helper.make_tensor_value_info("x", TensorProto.FLOAT, None)],
                         [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)])
    got = ort.InferenceSession(onnx_model.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-5)
