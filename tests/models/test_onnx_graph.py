"""GraphBuilder.linear_parts: a fused Linear's output columns as one Split (the default) or, with
``separate_projections``, as separate MatMuls (float and MatMulNBits) equal to the fused Linear split;
the fused Linear and one Split where the kernel quantizes its input."""

from __future__ import annotations

import numpy as np
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper

from ernie_compress.export import decoder_onnx
from ernie_compress.models.onnx_graph import GraphBuilder

SIZES = [64, 32, 32]


def _run(g: GraphBuilder, outputs: list[str], x: np.ndarray) -> list[np.ndarray]:
    model = g.model("parts", [helper.make_tensor_value_info("x", TensorProto.FLOAT, list(x.shape))],
                    [helper.make_tensor_value_info(n, TensorProto.FLOAT, None) for n in outputs])
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return session.run(outputs, {"x": x})


def _weights(rng) -> dict[str, np.ndarray]:
    return {"proj.weight": rng.normal(size=(64, sum(SIZES))).astype(np.float32),
            "proj.bias": rng.normal(size=sum(SIZES)).astype(np.float32)}


def test_float_parts_equal_the_fused_linear_split_either_way():
    rng = np.random.default_rng(0)
    weights, x = _weights(rng), rng.normal(size=(2, 3, 64)).astype(np.float32)
    expected = np.split(x @ weights["proj.weight"] + weights["proj.bias"], np.cumsum(SIZES)[:-1], axis=-1)
    for separate, matmuls in ((False, 1), (True, 3)):
        g = GraphBuilder(weights, separate_projections=separate)
        parts = _run(g, g.linear_parts("x", "proj", SIZES), x)
        for got, want in zip(parts, expected, strict=True):
            np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
        ops = [n.op_type for n in g.nodes]
        assert ops.count("MatMul") == matmuls and ("Split" in ops) == (not separate)


@pytest.mark.parametrize("bits", [4, 8])
def test_integer_parts_read_their_own_columns_of_the_packed_weight(bits):
    """Each part's MatMulNBits reads the columns of its part: the parts equal the fused kernel's output
    split (planted: a part reading the first columns fails the second and third)."""
    rng = np.random.default_rng(1)
    weights, x = _weights(rng), rng.normal(size=(1, 3, 64)).astype(np.float32)
    qmax = 2 ** (bits - 1) - 1
    codes = rng.integers(-qmax, qmax + 1, size=(64, sum(SIZES))).astype(np.int8)
    scales = rng.uniform(0.01, 0.02, size=(2, sum(SIZES))).astype(np.float32)
    integer = {"proj.weight": decoder_onnx.WeightOnlyLinear(codes, scales, bits, 32)}
    state = {**weights, "proj.weight": (codes.reshape(2, 32, -1) * scales[:, None, :]).reshape(64, -1)}
    weights_ = decoder_onnx.DecoderWeights(state, integer)
    matmul, gather = decoder_onnx._integer_kernels(weights_)
    fused = GraphBuilder(state, matmul=matmul, gather=gather, integer=integer)
    (whole,) = _run(fused, [fused.linear("x", "proj")], x)
    g = GraphBuilder(state, matmul=matmul, gather=gather, integer=integer, separate_projections=True)
    parts = _run(g, g.linear_parts("x", "proj", SIZES), x)
    for got, want in zip(parts, np.split(whole, np.cumsum(SIZES)[:-1], axis=-1), strict=True):
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
    assert [n.op_type for n in g.nodes].count("MatMulNBits") == 3


def test_a_kernel_that_quantizes_its_input_runs_the_fused_weight_and_one_split():
    """W8A8 (DynamicQuantizeMatMul) quantizes its input inside: one kernel and a Split, not three
    quantizations of the same input."""
    rng = np.random.default_rng(2)
    weights, x = _weights(rng), rng.normal(size=(1, 3, 64)).astype(np.float32)
    codes = rng.integers(-127, 128, size=(64, sum(SIZES))).astype(np.int8)
    scales = rng.uniform(0.01, 0.02, size=(1, sum(SIZES))).astype(np.float32)
    integer = {"proj.weight": decoder_onnx.WeightOnlyLinear(codes, scales, 8, None, "int8")}
    matmul, gather = decoder_onnx._integer_kernels(decoder_onnx.DecoderWeights(weights, integer))
    g = GraphBuilder(weights, matmul=matmul, gather=gather, integer=integer, separate_projections=True)
    parts = _run(g, g.linear_parts("x", "proj", SIZES), x)
    assert [p.shape[-1] for p in parts] == SIZES
    assert [n.op_type for n in g.nodes].count("DynamicQuantizeMatMul") == 1 and "Split" in [n.op_type for n in g.nodes]
