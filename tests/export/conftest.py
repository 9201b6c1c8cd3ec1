"""Fixtures of the export tests: the tiny encoder exported FP32 and PTQ INT8, with and without ONNX
Runtime's fused operators (the graph rewrites' tests compare the two)."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from ernie_compress.cli import app
from tests.helpers import train_tiny_checkpoint

runner = CliRunner()


def _export(ckpt, out, *extra) -> dict:
    res = runner.invoke(app, ["--quiet", "--json", "export", str(ckpt), "--format", "onnx", "--out", str(out), *extra])
    assert res.exit_code == 0, res.output
    return json.loads(res.stdout)


@pytest.fixture(scope="session")
def exports(tmp_path_factory):
    """{(precision, ops): model.onnx path} for the tiny model (2 layers, 4 heads), FP32 and PTQ INT8, with
    --onnx-ops onnxruntime and standard, and INT8 also with --int8-attention qattention ("qattention")."""
    root = tmp_path_factory.mktemp("attention")
    fp32 = train_tiny_checkpoint(root)[0]
    res = runner.invoke(app, ["--quiet", "quantize", str(fp32), "--ptq", "int8", "--out", str(root / "ptq"),
                              "--calib-samples", "16"])
    assert res.exit_code == 0, res.output
    paths = {}
    for precision, ckpt, ops in (("fp32", fp32, "onnxruntime"), ("fp32", fp32, "standard"),
                                 ("int8", root / "ptq", "onnxruntime"), ("int8", root / "ptq", "standard"),
                                 ("int8", root / "ptq", "qattention")):
        flags = ["--onnx-ops", "onnxruntime", "--int8-attention", "qattention"] if ops == "qattention" else \
            ["--onnx-ops", ops]
        result = _export(ckpt, root / f"{precision}-{ops}", *flags)
        assert result["verification"]["onnx"]["passed"]
        paths[(precision, ops)] = root / f"{precision}-{ops}" / "onnx" / "model.onnx"
        if ops == "onnxruntime":
            assert result["onnx_ops"] == {"ops": "onnxruntime", "fused_attention": 2, "residual_sums": 5}
        elif ops == "qattention":
            assert result["onnx_ops"] == {"ops": "onnxruntime", "quantized_attention": 2, "fused_attention": 0,
                                          "residual_sums": 5}
        else:
            assert "onnx_ops" not in result
    return paths
