"""``quantize --weight-only ... --stream`` (quantize/streaming.py): layer by layer into sharded
safetensors, byte-equal to the in-memory quantize; its refusals; the sharded output's integrity."""

from __future__ import annotations

import json

import numpy as np
import pytest
from typer.testing import CliRunner

from ernie_compress.checkpoint import load_checkpoint, save_checkpoint
from ernie_compress.cli import app
from ernie_compress.errors import UserError
from ernie_compress.lazy_checkpoint import open_checkpoint
from ernie_compress.quantize.streaming import quantized_linears
from ernie_compress.stages.skeleton import start_from
from ernie_compress.quantize.scheme import quantized_linear_names
from tests.helpers import NEGATIVE, POSITIVE, cli_json
from tests.test_lazy_checkpoint import _saved


@pytest.fixture(scope="module")
def parents(tiny_lm, tmp_path_factory):
    """Three decoders with a task: the tied tiny LM, an untied copy of it, a tiny MoE trained a little."""
    root = tmp_path_factory.mktemp("stream")
    tied = load_checkpoint(tiny_lm)
    embedding = tied.state["ernie.embed_tokens.weight"]  # [vocab, hidden]
    untied = dict(tied.state, **{"lm_head.weight": np.ascontiguousarray(embedding.T) * 0.5})
    save_checkpoint(root / "untied", tied.config.replace(tie_word_embeddings=False), untied, tied.tokenizer(),
                    {"name": "untie"}, parent=tied)
    data = root / "lm"
    data.mkdir()
    for split, copies in (("train", 2), ("dev", 1), ("test", 1)):
        (data / f"{split}.txt").write_text("\n".join((POSITIVE + NEGATIVE) * copies), encoding="utf-8")
    cli_json(["train", "--task", "lm", "--data", str(data), "--preset", "ernie45-moe-tiny", "--out", str(root / "moe"),
              "--epochs", "1", "--batch-size", "8"])
    return {"tied": tiny_lm, "untied": root / "untied", "moe": root / "moe"}


@pytest.mark.parametrize("model", ["tied", "untied", "moe"])
@pytest.mark.parametrize("grid", [["int4", "--group-size", "16"], ["int8"], ["int8", "--head", "int4"]])
def test_streamed_rtn_writes_the_in_memory_tensors_byte_for_byte(parents, tmp_path, model, grid):
    parent = parents[model]
    memory = cli_json(["quantize", str(parent), "--weight-only", *grid, "--out", str(tmp_path / "memory")])
    streamed = cli_json(["quantize", str(parent), "--weight-only", *grid, "--stream", "--out", str(tmp_path / "s")])
    assert streamed["scheme"] == memory["scheme"] and streamed["delta_points"] is None
    shards = sorted(p.name for p in (tmp_path / "s").glob("model-*-of-*.safetensors"))
    layers = json.loads((parent / "config.json").read_text())["num_hidden_layers"]
    assert len(shards) == 1 + layers and not (tmp_path / "s" / "model.safetensors").exists()
    a, b = load_checkpoint(tmp_path / "memory"), load_checkpoint(tmp_path / "s")  # b: sha256 of index and shards
    assert sorted(a.state) == sorted(b.state)
    for name, value in a.state.items():
        assert value.dtype == b.state[name].dtype and value.tobytes() == b.state[name].tobytes(), name
    assert a.config.to_dict() == b.config.to_dict()
    assert (tmp_path / "s" / "vocab.txt").read_text() == (parent / "vocab.txt").read_text()


@pytest.mark.parametrize("model", ["tied", "moe"])
def test_a_streamed_save_in_another_layout_holds_the_in_memory_files_tensors(parents, tmp_path, model):
    args = ["quantize", str(parents[model]), "--weight-only", "int4", "--group-size", "16", "--layout", "hf"]
    cli_json([*args, "--out", str(tmp_path / "memory")])
    cli_json([*args, "--stream", "--out", str(tmp_path / "s")])
    from safetensors.numpy import load_file

    whole = load_file(str(tmp_path / "memory" / "model.safetensors"))
    index = json.loads((tmp_path / "s" / "model.safetensors.index.json").read_text())["weight_map"]
    assert sorted(index) == sorted(whole)
    for shard in set(index.values()):
        for name, value in load_file(str(tmp_path / "s" / shard)).items():
            assert value.tobytes() == whole[name].tobytes(), name
    keys = [json.loads((tmp_path / d / "config.json").read_text()) for d in ("memory", "s")]
    assert keys[0] == keys[1]


def test_the_linears_found_from_shapes_are_the_models(parents):
    for parent in parents.values():
        model = start_from(parent, None, splits=("test",)).model
        assert sorted(quantized_linears(open_checkpoint(parent))) == sorted(quantized_linear_names(model))


def _refused(args: list[str], out) -> str:
    res = CliRunner().invoke(app, [*args, "--out", str(out)])
    assert res.exit_code == 2, res.output
    assert len(res.output.strip().splitlines()) == 1 and not out.exists(), res.output
    return res.output


def test_what_streaming_cannot_do_is_refused_in_one_line(parents, tmp_path):
    lm = str(parents["tied"])
    assert "add --stream" in _refused(["quantize", lm, "--weight-only", "int4", "--max-memory", "4"], tmp_path / "b")
    line = _refused(["quantize", lm, "--weight-only", "int4", "--group-size", "16", "--stream", "--max-memory", "0.01"],
                    tmp_path / "c")
    assert "--max-memory 0.01 GiB is below what the largest group needs" in line
    encoder = _saved(tmp_path, "encoder", "ours")
    assert "quantizes decoders" in _refused(["quantize", str(encoder), "--weight-only", "int8", "--stream"],
                                            tmp_path / "d")


def test_a_changed_or_missing_shard_is_refused(parents, tmp_path):
    out = tmp_path / "s"
    cli_json(["quantize", str(parents["tied"]), "--weight-only", "int8", "--stream", "--out", str(out)])
    shard = out / "model-00002-of-00003.safetensors"
    data = bytearray(shard.read_bytes())
    data[-1] ^= 1
    shard.write_bytes(bytes(data))
    with pytest.raises(UserError, match="model-00002-of-00003.safetensors: sha256 .* does not match"):
        load_checkpoint(out)
    with pytest.raises(UserError, match="sha256"):
        open_checkpoint(out)
    shard.unlink()
    with pytest.raises(UserError, match="model-00002-of-00003.safetensors, which is missing"):
        load_checkpoint(out, ignore_integrity=True)
    with pytest.raises(UserError, match="missing"):
        load_checkpoint(out)


def test_too_little_disk_for_the_output_is_refused_before_any_weight_is_read(parents, tmp_path, monkeypatch):
    import shutil

    from ernie_compress.lazy_weights import SafetensorsWeights

    real = shutil.disk_usage
    monkeypatch.setattr(shutil, "disk_usage", lambda path: real(path)._replace(free=1000))
    monkeypatch.setattr(SafetensorsWeights, "read", lambda *a: pytest.fail("a weight was read"))
    line = _refused(["quantize", str(parents["tied"]), "--weight-only", "int8", "--stream"], tmp_path / "out")
    assert "GiB free; free space or choose another --out" in line
