"""A QAT/PTQ INT8 causal LM gets ``onnx/decoder.onnx`` with integer kernels (``MatMulIntegerToFloat``,
static input scales): it reproduces the fake-quant dygraph model through the KV cache (the integer
arithmetic is exact on the fake-quant grid), differs from the float model, refuses a wrong input scale,
and evaluate scores it through the decoder as model.onnx scores it."""

from __future__ import annotations

import pytest
from typer.testing import CliRunner

from ernie_compress.cli import app
from ernie_compress.export import decoder_onnx
from tests.helpers import cli_json

runner = CliRunner()


@pytest.fixture(scope="module")
def ptq_lm(tiny_lm, tmp_path_factory):
    out = tmp_path_factory.mktemp("ptq") / "ptq"
    cli_json(["quantize", str(tiny_lm), "--ptq", "int8", "--calib-samples", "32", "--out", str(out)])
    return out


def test_int8_decoder_reproduces_the_fake_quant_model_and_is_scored_through_it(ptq_lm, tiny_lm, tmp_path):
    exported = cli_json(["export", str(ptq_lm), "--format", "onnx", "--out", str(tmp_path / "e")])
    entry, check = exported["files"]["decoder"], exported["verification"]["decoder"]
    assert entry["kernels"]["MatMulIntegerToFloat"] == 8 and entry["activations"] == "int8"  # 4 Linears x 2 layers
    assert check["greedy_tokens_equal"] and check["max_relative_diff"] < 1e-4 and "fake-quant" in check["against"]
    float_export = cli_json(["export", str(tiny_lm), "--format", "onnx", "--out", str(tmp_path / "f")])
    prompts = ["--prompt", "质量太差", "--max-new-tokens", "8"]
    assert cli_json(["generate", str(tmp_path / "e"), *prompts])["results"][0]["tokens"]
    timing = ["--batch-sizes", "1", "--iterations", "1", "--warmup", "0", "--prompt-lengths", "8",
              "--decode-batch-sizes", "1", "--new-tokens", "2"]
    through = cli_json(["evaluate", str(tmp_path / "e"), *timing])
    full = cli_json(["evaluate", str(tmp_path / "e"), "--score-with", "model", *timing])
    assert through.get("scored_with") and not full.get("scored_with")
    assert abs(through["metrics"]["perplexity"] / full["metrics"]["perplexity"] - 1) < 0.01
    floats = cli_json(["evaluate", str(tmp_path / "f"), "--score-with", "decoder", *timing])["metrics"]["perplexity"]
    assert floats != through["metrics"]["perplexity"]  # the int8 decoder quantizes
    assert float_export["files"]["decoder"]["activations"] == "float"


def test_a_wrong_static_input_scale_is_refused(ptq_lm, tmp_path, monkeypatch):
    real = decoder_onnx.static_int8_weights

    def off(*args):
        integer = real(*args)
        for q in integer.values():
            q.activation_scale *= 0.2  # inputs clipped at a fifth of their calibrated range
        return integer

    monkeypatch.setattr(decoder_onnx, "static_int8_weights", off)
    res = runner.invoke(app, ["--quiet", "export", str(ptq_lm), "--format", "onnx", "--out", str(tmp_path / "e")])
    assert res.exit_code == 2 and "int8 activations) failed verification" in res.stderr, res.output
    assert not (tmp_path / "e").exists()
