"""INT8 attention fused into QAttention: the same hidden states as the standard INT8 graph on padded
rows; planted bugs (k and v weights swapped, the padding mask dropped) are seen; a layer whose
projections are not integer kernels of one input is left alone."""

from __future__ import annotations

import numpy as np
import onnx
from onnx import numpy_helper

from ernie_compress.export.onnx_int8 import integer_ops
from ernie_compress.export.onnx_qattention import fuse_quantized_attention
from tests.export.encoder_graphs import last_hidden, padded_inputs


def test_qattention_equals_the_standard_int8_graph_on_padded_rows(exports):
    fused, standard = exports[("int8", "qattention")], exports[("int8", "standard")]
    ops, standard_ops = integer_ops(fused), integer_ops(standard)
    assert ops.get("QAttention") == 2 and "Softmax" not in ops and "MultiHeadAttention" not in ops
    # q, k and v of each layer: three integer GEMMs became the kernel's one
    assert standard_ops["MatMulIntegerToFloat"] - ops.get("MatMulIntegerToFloat", 0) == 2 * 3
    feeds = padded_inputs()
    np.testing.assert_allclose(last_hidden(fused, feeds), last_hidden(standard, feeds), atol=1e-5)


def _planted(exports, change) -> float:
    model = onnx.load(str(exports[("int8", "qattention")]))
    change(model)
    feeds = padded_inputs()
    return float(np.abs(last_hidden(model, feeds) - last_hidden(exports[("int8", "standard")], feeds)).max())


def test_the_comparison_sees_k_and_v_swapped(exports):
    def swap(model):
        for init in model.graph.initializer:
            if init.name.endswith(".weight") and init.name.startswith("qattention_"):
                w = numpy_helper.to_array(init)
                h = w.shape[1] // 3
                init.CopyFrom(numpy_helper.from_array(np.concatenate([w[:, :h], w[:, 2 * h:], w[:, h:2 * h]], 1),
                                                      init.name))
    assert _planted(exports, swap) > 0.1


def test_the_comparison_sees_a_dropped_padding_mask(exports):
    def drop(model):
        for node in model.graph.node:
            if node.op_type == "QAttention":
                node.input[5] = ""
    assert _planted(exports, drop) > 0.1


def test_a_float_graph_is_left_alone(exports):
    model = onnx.load(str(exports[("fp32", "standard")]))
    before = model.SerializeToString()
    assert fuse_quantized_attention(model) == 0
    assert model.SerializeToString() == before
