"""Residual sums written as Sum: ONNX Runtime keeps Add + LayerNormalization out of its CPU
SkipLayerNormalization, with the same result; bias additions are not touched."""

from __future__ import annotations

import numpy as np
from onnx import TensorProto, helper, numpy_helper

from ernie_compress.export.onnx_int8 import integer_ops
from ernie_compress.export.onnx_layer_norm import residual_sums_as_sum


def _residual_block():
    """y = LayerNorm(x + (x @ W + b)): the residual Add and a bias Add, shapes known as ONNX
    Runtime's fusion requires."""
    rng = np.random.default_rng(0)
    inits = [numpy_helper.from_array(rng.normal(size=(8, 8)).astype(np.float32), "w"),
             numpy_helper.from_array(rng.normal(size=8).astype(np.float32), "b"),
             numpy_helper.from_array(rng.uniform(0.5, 1.5, size=8).astype(np.float32), "gamma"),
             numpy_helper.from_array(rng.normal(size=8).astype(np.float32), "beta")]
    nodes = [helper.make_node("MatMul", ["x", "w"], ["m"]),
             helper.make_node("Add", ["m", "b"], ["sub"]),  # bias: not a residual sum
             helper.make_node("Add", ["x", "sub"], ["res"]),
             helper.make_node("LayerNormalization", ["res", "gamma", "beta"], ["y"], axis=-1, epsilon=1e-12)]
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 5, 8])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, 5, 8])
    model = helper.make_model(helper.make_graph(nodes, "g", [x], [y], inits),
                              opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return model


def _save(model, path):
    path.write_bytes(model.SerializeToString())
    return path


def test_residual_sum_stays_out_of_skip_layer_norm_with_the_same_result(tmp_path):
    import onnxruntime as ort

    plain = _save(_residual_block(), tmp_path / "plain.onnx")
    model = _residual_block()
    assert residual_sums_as_sum(model) == 1
    assert [n.op_type for n in model.graph.node] == ["MatMul", "Add", "Sum", "LayerNormalization"]
    rewritten = _save(model, tmp_path / "sum.onnx")
    assert "SkipLayerNormalization" in integer_ops(plain)  # what the rewrite is for: ORT fuses the Add
    ops = integer_ops(rewritten)
    assert "SkipLayerNormalization" not in ops and ops.get("LayerNormalization") == 1
    x = np.random.default_rng(1).normal(size=(2, 5, 8)).astype(np.float32)
    outputs = [ort.InferenceSession(str(p), providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]
               for p in (plain, rewritten)]
    np.testing.assert_allclose(outputs[0], outputs[1], atol=1e-5)


def test_an_add_read_elsewhere_too_is_left_alone():
    model = _residual_block()
    model.graph.output.append(helper.make_tensor_value_info("res", TensorProto.FLOAT, [2, 5, 8]))
    assert residual_sums_as_sum(model) == 0


def test_a_bias_read_by_the_layer_norm_is_left_alone():
    """An Add of a constant straight before a LayerNormalization is a bias, not a residual sum."""
    model = _residual_block()
    residual = model.graph.node[2]
    residual.input[0] = "b"  # LayerNorm(b + sub): one input is an initializer
    assert residual_sums_as_sum(model) == 0
