"""Attention fused into MultiHeadAttention: same outputs as the standard graph (padding included),
in FP32 and INT8 exports; a graph of another form is left alone."""

from __future__ import annotations

import json

import numpy as np
import onnx
import pytest
from typer.testing import CliRunner

from ernie_compress.cli import app
from ernie_compress.export.onnx_attention import fuse_attention
from ernie_compress.export.onnx_int8 import integer_ops
from tests.helpers import random_ids, train_tiny_checkpoint

runner = CliRunner()


def _export(ckpt, out, *extra) -> dict:
    res = runner.invoke(app, ["--quiet", "--json", "export", str(ckpt), "--format", "onnx", "--out", str(out), *extra])
    assert res.exit_code == 0, res.output
    return json.loads(res.stdout)


@pytest.fixture(scope="module")
def exports(tmp_path_factory):
    """{(precision, ops): model.onnx path} for the tiny model (2 layers, 4 heads), FP32 and PTQ INT8."""
    root = tmp_path_factory.mktemp("attention")
    fp32 = train_tiny_checkpoint(root)[0]
    res = runner.invoke(app, ["--quiet", "quantize", str(fp32), "--ptq", "int8", "--out", str(root / "ptq"),
                              "--calib-samples", "16"])
    assert res.exit_code == 0, res.output
    paths = {}
    for precision, ckpt in (("fp32", fp32), ("int8", root / "ptq")):
        for ops in ("onnxruntime", "standard"):
            result = _export(ckpt, root / f"{precision}-{ops}", "--onnx-ops", ops)
            assert result["verification"]["onnx"]["passed"]
            paths[(precision, ops)] = root / f"{precision}-{ops}" / "onnx" / "model.onnx"
            if ops == "onnxruntime":
                assert result["onnx_ops"] == {"ops": "onnxruntime", "fused_attention": 2, "residual_sums": 5}
            else:
                assert "onnx_ops" not in result
    return paths


def _padded_inputs(batch: int = 6, seq: int = 24) -> dict[str, np.ndarray]:
    ids = random_ids(batch, seq, 60)
    for row in range(batch):  # rows of every length from 4 tokens up: padding decides the result
        ids[row, 4 + row * 4:] = 0
    return {"input_ids": ids, "token_type_ids": np.zeros_like(ids)}


def _run(path, feeds) -> np.ndarray:
    """The encoder's last hidden states [batch, seq, hidden] (the output of its last LayerNorm: values
    of order one, where the tiny model's logits are a few hundredths)."""
    import onnxruntime as ort
    from onnx import TensorProto, helper

    model = onnx.load(str(path))
    hidden = [n.output[0] for n in model.graph.node if n.op_type == "LayerNormalization"][-1]
    model.graph.output.append(helper.make_tensor_value_info(hidden, TensorProto.FLOAT, None))
    options = ort.SessionOptions()
    options.log_severity_level = 3
    session = ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])
    return session.run([hidden], feeds)[0]


@pytest.mark.parametrize("precision", ["fp32", "int8"])
def test_fused_attention_equals_the_standard_graph(exports, precision):
    fused, standard = exports[(precision, "onnxruntime")], exports[(precision, "standard")]
    ops = integer_ops(fused)
    assert ops.get("MultiHeadAttention") == 2 and "Softmax" not in ops  # what ONNX Runtime really runs
    assert "MultiHeadAttention" not in integer_ops(standard)
    feeds = _padded_inputs()
    np.testing.assert_allclose(_run(fused, feeds), _run(standard, feeds), atol=1e-5)


def test_the_comparison_sees_a_dropped_padding_mask(exports, tmp_path):
    """Planted bug: the fused nodes ignore padding -> padded rows differ from the standard graph."""
    model = onnx.load(str(exports[("fp32", "onnxruntime")]))
    for node in model.graph.node:
        if node.op_type == "MultiHeadAttention":
            node.input[4] = ""
    broken = tmp_path / "broken.onnx"
    onnx.save(model, str(broken))
    feeds = _padded_inputs()
    assert np.abs(_run(broken, feeds) - _run(exports[("fp32", "standard")], feeds)).max() > 0.1


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
