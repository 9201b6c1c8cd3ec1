"""``export --format decoder``: a causal LM's onnx/decoder.onnx alone (no model.onnx, no paddle/), verified
as with --format onnx, scored through the decoder by evaluate, run by generate; refused in one line for an
encoder, with --layout, and for --score-with model."""

from __future__ import annotations

from typer.testing import CliRunner

from ernie_compress.cli import app
from tests.helpers import cli_json, train_tiny_checkpoint

runner = CliRunner()


def test_the_decoder_alone_is_written_verified_evaluated_and_generated_from(tiny_lm, tmp_path):
    alone = cli_json(["export", str(tiny_lm), "--format", "decoder", "--out", str(tmp_path / "d")])
    full = cli_json(["export", str(tiny_lm), "--format", "onnx", "--out", str(tmp_path / "f")])
    assert sorted(p.name for p in (tmp_path / "d" / "onnx").iterdir()) == ["decoder.onnx"]
    assert not (tmp_path / "d" / "paddle").exists() and list(alone["files"]) == ["decoder"]
    assert alone["verification"]["decoder"]["greedy_tokens_equal"]
    assert alone["verification"]["decoder"]["max_abs_diff"] == full["verification"]["decoder"]["max_abs_diff"]
    timing = ["--prompt-lengths", "8", "--decode-batch-sizes", "1", "--new-tokens", "2"]
    scored = cli_json(["evaluate", str(tmp_path / "d"), *timing])
    through = cli_json(["evaluate", str(tmp_path / "f"), "--score-with", "decoder", "--batch-sizes", "1",
                        "--iterations", "1", "--warmup", "0", *timing])
    assert scored["scored_with"] and scored["latency"] == [] and scored["metrics"] == through["metrics"]
    prompts = ["--prompt", "质量太差", "--max-new-tokens", "8"]
    assert (cli_json(["generate", str(tmp_path / "d"), *prompts])["results"][0]["tokens"]
            == cli_json(["generate", str(tmp_path / "f"), *prompts])["results"][0]["tokens"])
    res = runner.invoke(app, ["--quiet", "evaluate", str(tmp_path / "d"), "--score-with", "model"])
    assert res.exit_code == 2 and "decoder alone" in res.stderr and len(res.stderr.strip().splitlines()) == 1


def test_bad_decoder_only_requests_are_one_line(tiny_lm, tmp_path):
    encoder, _ = train_tiny_checkpoint(tmp_path, epochs=1)
    for args, message in (([str(encoder)], "has none"), ([str(tiny_lm), "--layout", "hf"], "--layout")):
        res = runner.invoke(app, ["--quiet", "export", *args, "--format", "decoder", "--out", str(tmp_path / "e")])
        assert res.exit_code == 2 and message in res.stderr and len(res.stderr.strip().splitlines()) == 1, res.output
        assert not (tmp_path / "e").exists()
