"""The INT8 QDQ graph: only MatMuls read the rounded activation; residual readers keep the float."""

from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper

from ernie_compress.export.onnx_int8 import keep_float_for_other_consumers


def test_residual_reader_gets_the_float_tensor_back(tmp_path):
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 4])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, 4])
    inits = [helper.make_tensor("s", TensorProto.FLOAT, [], [0.1]), helper.make_tensor("z", TensorProto.UINT8, [], [128]),
             helper.make_tensor("w", TensorProto.FLOAT, [4, 4], np.eye(4, dtype=np.float32).ravel().tolist())]
    nodes = [helper.make_node("QuantizeLinear", ["x", "s", "z"], ["xq"]),
             helper.make_node("DequantizeLinear", ["xq", "s", "z"], ["xdq"]),
             helper.make_node("MatMul", ["xdq", "w"], ["m"]),
             helper.make_node("Add", ["m", "xdq"], ["y"])]  # the residual
    path = tmp_path / "g.onnx"
    onnx.save(helper.make_model(helper.make_graph(nodes, "g", [x], [y], inits)), str(path))
    assert keep_float_for_other_consumers(path) == 1
    graph = onnx.load(str(path)).graph
    matmul, add = graph.node[2], graph.node[3]
    assert list(matmul.input) == ["xdq", "w"] and list(add.input) == ["m", "x"]
