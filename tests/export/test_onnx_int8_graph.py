"""The INT8 QDQ graph: only MatMuls read the rounded activation; residual readers keep the float."""

from __future__ import annotations

import numpy as np
from onnx import TensorProto, helper

from ernie_compress.export.onnx_int8 import keep_float_for_other_consumers


def test_residual_reader_gets_the_float_tensor_back():
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 4])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, 4])
    inits = [helper.make_tensor("s", TensorProto.FLOAT, [], [0.1]), helper.make_tensor("z", TensorProto.UINT8, [], [128]),
             helper.make_tensor("w", TensorProto.FLOAT, [4, 4], np.eye(4, dtype=np.float32).ravel().tolist())]
    nodes = [helper.make_node("QuantizeLinear", ["x", "s", "z"], ["xq"]),
             helper.make_node("DequantizeLinear", ["xq", "s", "z"], ["xdq"]),
             helper.make_node("MatMul", ["xdq", "w"], ["m"]),
             helper.make_node("Add", ["m", "xdq"], ["y"])]  # the residual
    model = helper.make_model(helper.make_graph(nodes, "g", [x], [y], inits))
    assert keep_float_for_other_consumers(model) == 1
    graph = model.graph
    matmul, add = graph.node[2], graph.node[3]
    assert list(matmul.input) == ["xdq", "w"] and list(add.input) == ["m", "x"]


def _qdq_linear_with_bias(tmp_path):
    """x -> Q/DQ (u8) -> MatMul with DQ(int8 W, per channel) -> Add(bias) -> y."""
    from onnx import numpy_helper

    rng = np.random.default_rng(0)
    w = rng.integers(-127, 128, size=(4, 3)).astype(np.int8)
    inits = [helper.make_tensor("s", TensorProto.FLOAT, [], [0.05]),
             helper.make_tensor("z", TensorProto.UINT8, [], [128]),
             numpy_helper.from_array(w, "wq"),
             numpy_helper.from_array(np.array([0.01, 0.02, 0.03], np.float32), "ws"),
             numpy_helper.from_array(np.zeros(3, np.int8), "wz"),
             numpy_helper.from_array(np.array([0.5, -1.0, 2.0], np.float32), "bias")]
    nodes = [helper.make_node("QuantizeLinear", ["x", "s", "z"], ["xq"]),
             helper.make_node("DequantizeLinear", ["xq", "s", "z"], ["xdq"]),
             helper.make_node("DequantizeLinear", ["wq", "ws", "wz"], ["wdq"], axis=1),
             helper.make_node("MatMul", ["xdq", "wdq"], ["m"]),
             helper.make_node("Add", ["m", "bias"], ["y"])]
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 5, 4])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, 5, 3])
    return helper.make_model(helper.make_graph(nodes, "g", [x], [y], inits),
                             opset_imports=[helper.make_opsetid("", 13)])


def test_bias_is_fused_into_the_integer_kernel_with_the_same_result(tmp_path):
    import onnxruntime as ort

    from ernie_compress.export.onnx_int8 import fuse_bias_into_integer_matmuls

    qdq = _qdq_linear_with_bias(tmp_path)
    fused = _qdq_linear_with_bias(tmp_path)
    assert fuse_bias_into_integer_matmuls(fused) == 1
    ops = [n.op_type for n in fused.graph.node]
    assert ops == ["QuantizeLinear", "MatMulIntegerToFloat"]  # MatMul, Add and both DQs are gone
    assert list(fused.graph.node[1].input) == ["xq", "wq", "s", "ws", "z", "wz", "bias"]
    x = np.random.default_rng(1).normal(size=(2, 5, 4)).astype(np.float32)
    run = lambda m: ort.InferenceSession(m.SerializeToString(), providers=["CPUExecutionProvider"]).run(
        None, {"x": x})[0]
    np.testing.assert_allclose(run(fused), run(qdq), atol=1e-5)


def test_a_matmul_whose_output_has_other_readers_is_left_alone(tmp_path):
    from ernie_compress.export.onnx_int8 import fuse_bias_into_integer_matmuls

    model = _qdq_linear_with_bias(tmp_path)
    model.graph.node.append(helper.make_node("Relu", ["m"], ["r"]))  # a second reader of the MatMul
    model.graph.output.append(helper.make_tensor_value_info("r", TensorProto.FLOAT, [2, 5, 3]))
    assert fuse_bias_into_integer_matmuls(model) == 0
    assert [n.op_type for n in model.graph.node].count("MatMul") == 1


def test_weights_scaled_along_their_input_axis_are_left_alone(tmp_path):
    """MatMulIntegerToFloat scales B per output column; a DequantizeLinear along axis 0 is not that."""
    from onnx import numpy_helper

    from ernie_compress.export.onnx_int8 import fuse_bias_into_integer_matmuls

    model = _qdq_linear_with_bias(tmp_path)
    w_dq = model.graph.node[2]
    w_dq.attribute[0].i = 0
    inits = {i.name: i for i in model.graph.initializer}
    inits["ws"].CopyFrom(numpy_helper.from_array(np.full(4, 0.01, np.float32), "ws"))
    inits["wz"].CopyFrom(numpy_helper.from_array(np.zeros(4, np.int8), "wz"))
    assert fuse_bias_into_integer_matmuls(model) == 0
