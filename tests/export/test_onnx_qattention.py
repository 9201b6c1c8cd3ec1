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


def _first_layer(model) -> dict:
    """The first attention core's match (its q/k/v projection outputs)."""
    from ernie_compress.export.onnx_attention import _match
    from ernie_compress.export.onnx_graph import GraphIndex

    g = GraphIndex(model.graph)
    return next(m for m in (_match(g, n) for n in g.nodes if n.op_type == "Softmax") if m is not None)


def test_a_layer_left_to_multihead_attention_beside_qattention_layers(exports):
    """A projection with another reader cannot become QAttention: that layer goes to MultiHeadAttention,
    the other to QAttention, in one valid graph equal to the standard one."""
    from onnx import TensorProto, helper

    from ernie_compress.export.onnx_attention import fuse_attention

    def with_reader():
        model = onnx.load(str(exports[("int8", "standard")]))
        query = _first_layer(model)["query"]
        model.graph.node.append(helper.make_node("Identity", [query], ["query_copy"]))
        model.graph.output.append(helper.make_tensor_value_info("query_copy", TensorProto.FLOAT, None))
        return model

    mixed, standard = with_reader(), with_reader()
    assert fuse_quantized_attention(mixed) == 1 and fuse_attention(mixed) == 1
    produced = [o for n in mixed.graph.node for o in n.output]
    assert len(produced) == len(set(produced))  # each fusion's padding masks under its own names
    feeds = padded_inputs()
    np.testing.assert_allclose(last_hidden(mixed, feeds), last_hidden(standard, feeds), atol=1e-5)


def test_weights_with_a_zero_point_are_not_fused(exports):
    model = onnx.load(str(exports[("int8", "standard")]))
    key = _first_layer(model)["key"]
    node = next(n for n in model.graph.node if n.output[0] == key)
    zero_point = next(t for t in model.graph.initializer if t.name == node.input[5])
    zero_point.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(zero_point) + np.int8(1), zero_point.name))
    assert fuse_quantized_attention(model) == 1  # the other layer only


def test_qattention_on_a_checkpoint_it_cannot_rewrite_is_refused_in_one_line(tiny_lm, tmp_path):
    from typer.testing import CliRunner

    from ernie_compress.cli import app

    res = CliRunner().invoke(app, ["--quiet", "export", str(tiny_lm), "--format", "onnx", "--int8-attention",
                                   "qattention", "--out", str(tmp_path / "e")])
    assert res.exit_code == 2 and "--int8-attention qattention rewrites INT8" in res.stderr, res.output
    assert len(res.stderr.strip().splitlines()) == 1 and not (tmp_path / "e").exists()
