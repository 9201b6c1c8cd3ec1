"""Attention fused into MultiHeadAttention: same outputs as the standard graph (padding included),
in FP32 and INT8 exports; a graph of another form is left alone."""

from __future__ import annotations

import numpy as np
import onnx
import pytest

from ernie_compress.export.onnx_attention import fuse_attention
from ernie_compress.export.onnx_int8 import integer_ops
from tests.export.encoder_graphs import last_hidden, padded_inputs

@pytest.mark.parametrize("precision", ["fp32", "int8"])
def test_fused_attention_equals_the_standard_graph(exports, precision):
    fused, standard = exports[(precision, "onnxruntime")], exports[(precision, "standard")]
    ops = integer_ops(fused)
    assert ops.get("MultiHeadAttention") == 2 and "Softmax" not in ops  # what ONNX Runtime really runs
    assert "MultiHeadAttention" not in integer_ops(standard)
    feeds = padded_inputs()
    np.testing.assert_allclose(last_hidden(fused, feeds), last_hidden(standard, feeds), atol=1e-5)


def test_the_comparison_sees_a_dropped_padding_mask(exports, tmp_path):
    """Planted bug: the fused nodes ignore padding -> padded rows differ from the standard graph."""
    model = onnx.load(str(exports[("fp32", "onnxruntime")]))
    for node in model.graph.node:
        if node.op_type == "MultiHeadAttention":
            node.input[4] = ""
    broken = tmp_path / "broken.onnx"
    onnx.save(model, str(broken))
    feeds = padded_inputs()
    assert np.abs(last_hidden(broken, feeds) - last_hidden(exports[("fp32", "standard")], feeds)).max() > 0.1


def test_another_attention_form_is_left_alone(exports):
    """Without the padding mask (e.g. a decoder's causal mask) the matcher fuses nothing."""
    model = onnx.load(str(exports[("fp32", "standard")]))
    for node in model.graph.node:
        if node.op_type == "Unsqueeze":  # the [B, 1, 1, S] mask: make it something else
            node.op_type = "Identity"
            del node.input[1:]
    before = model.SerializeToString()
    assert fuse_attention(model) == 0
    assert model.SerializeToString() == before
