"""Lazy checkpoints (lazy_checkpoint.py, lazy_weights.py): every layout we read gives, group by group,
exactly the tensors load_checkpoint gives; shapes come from the headers alone; BF16 and sharded saves
read; the tokenizer is checked before any weight is touched."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
from safetensors.numpy import load_file, save_file

from ernie_compress.checkpoint import WEIGHTS_FILE, load_checkpoint, read_safetensors, save_checkpoint
from ernie_compress.data.tokenizer import ErnieTokenizer
from ernie_compress.errors import UserError
from ernie_compress.lazy_checkpoint import REST, group_names, open_checkpoint
from ernie_compress.lazy_weights import SafetensorsWeights, bf16_to_float32
from ernie_compress.models import build_model, model_state
from ernie_compress.models.families import config_from_dict
from ernie_compress.models.presets import resolve_preset

VOCAB = ["[PAD]", "[CLS]", "[SEP]", "[MASK]", "[UNK]"] + [chr(0x4e00 + i) for i in range(45)]
PRESETS = {"encoder": ("tiny", dict(id2label={0: "neg", 1: "pos"})),
           "decoder-tied": ("ernie45-tiny", dict(tie_word_embeddings=True)),
           "decoder-untied": ("ernie45-tiny", dict(tie_word_embeddings=False)),
           "moe": ("ernie45-moe-tiny", dict(tie_word_embeddings=False, moe_num_shared_experts=1))}
CASES = [("encoder", "ours"), ("encoder", "paddlenlp"), ("decoder-tied", "ours"), ("decoder-tied", "paddleformers"),
         ("decoder-tied", "hf"), ("decoder-untied", "hf"), ("moe", "ours"), ("moe", "hf")]


def _saved(root, kind: str, layout: str):
    preset, changes = PRESETS[kind]
    config = config_from_dict(dict(resolve_preset(preset), vocab_size=len(VOCAB), **changes))
    state = model_state(build_model(config))
    return save_checkpoint(root / f"{kind}-{layout}", config, state, ErnieTokenizer(VOCAB), {"name": "test"},
                           layout=layout)


def _lazy_state(lazy) -> dict[str, np.ndarray]:
    state = {}
    for _, tensors in lazy.iter_groups():
        assert not set(tensors) & set(state), "a tensor came in two groups"
        state.update(tensors)
    return state


def _assert_same(lazy, eager) -> None:
    state = _lazy_state(lazy)
    assert sorted(state) == sorted(eager.state)
    for name, value in eager.state.items():
        assert state[name].dtype == value.dtype and state[name].shape == value.shape, name
        assert state[name].tobytes() == np.ascontiguousarray(value).tobytes(), name
    assert lazy.shapes() == {name: tuple(value.shape) for name, value in eager.state.items()}
    assert lazy.config.to_dict() == eager.config.to_dict()


@pytest.mark.parametrize("kind, layout", CASES)
def test_every_layout_reads_group_by_group_as_load_checkpoint_reads_it(tmp_path, kind, layout):
    out = _saved(tmp_path, kind, layout)
    lazy = open_checkpoint(out)
    assert lazy.lazy and list(lazy.groups)[0] == REST and len(lazy.groups) == 1 + lazy.config.num_hidden_layers
    _assert_same(lazy, load_checkpoint(out))


def _as_bf16(path) -> dict[str, np.ndarray]:
    """Rewrite ``path``'s float32 tensors as BF16 (truncated bit patterns) by hand; return what a
    reader must give back (the truncated values as float32)."""
    state = load_file(str(path))
    bits = {k: (v.view(np.uint32) >> 16).astype(np.uint16) for k, v in state.items()}  # [same shape]
    header, offset = {"__metadata__": {"format": "pt"}}, 0
    for name, value in bits.items():
        header[name] = {"dtype": "BF16", "shape": list(value.shape), "data_offsets": [offset, offset + value.nbytes]}
        offset += value.nbytes
    blob = json.dumps(header).encode()
    with open(path, "wb") as f:
        f.write(len(blob).to_bytes(8, "little") + blob)
        for value in bits.values():
            f.write(value.tobytes())
    return {k: (v.astype(np.uint32) << 16).view(np.float32) for k, v in bits.items()}


def test_bf16_weights_read_widened_to_float32(tmp_path):
    out = _saved(tmp_path, "decoder-untied", "hf")
    (out / "compression.json").unlink()  # a release's folder: no lineage, its own bytes
    expected = _as_bf16(out / WEIGHTS_FILE)
    weights = SafetensorsWeights.open(out / WEIGHTS_FILE)
    for name, value in expected.items():
        assert weights.dtype(name) == np.float32
        np.testing.assert_array_equal(weights.read(name), value)
    assert read_safetensors(out / WEIGHTS_FILE).keys() == expected.keys()
    _assert_same(open_checkpoint(out), load_checkpoint(out))


def test_bf16_widening_matches_ml_dtypes_on_every_bit_pattern():
    ml_dtypes = pytest.importorskip("ml_dtypes")  # an independent bfloat16 implementation
    bits = np.arange(1 << 16, dtype=np.uint16)  # every bfloat16 value, infinities and NaNs included
    np.testing.assert_array_equal(bf16_to_float32(bits), bits.view(ml_dtypes.bfloat16).astype(np.float32))


def test_a_sharded_save_reads_lazily_tensor_by_tensor(tmp_path):
    out = _saved(tmp_path, "moe", "hf")
    (out / "compression.json").unlink()
    state = load_file(str(out / WEIGHTS_FILE))
    names = sorted(state)
    shards = {"model-00001-of-00002.safetensors": names[::2], "model-00002-of-00002.safetensors": names[1::2]}
    for shard, part in shards.items():
        save_file({n: state[n] for n in part}, str(out / shard))
    (out / WEIGHTS_FILE).unlink()
    (out / (WEIGHTS_FILE + ".index.json")).write_text(json.dumps(
        {"weight_map": {n: shard for shard, part in shards.items() for n in part}}))
    lazy = open_checkpoint(out)
    assert lazy.lazy and {e.file.name for e in lazy.weights.entries.values()} == set(shards)
    _assert_same(lazy, load_checkpoint(out))


def test_a_truncated_file_is_refused_in_one_line_when_its_tensor_is_read(tmp_path):
    out = _saved(tmp_path, "decoder-untied", "ours")
    weights = out / WEIGHTS_FILE
    with open(weights, "r+b") as f:
        f.truncate(weights.stat().st_size - 64)
    with pytest.raises(UserError, match="truncated or corrupt"):
        SafetensorsWeights.open(weights)
    with pytest.raises(UserError, match="truncated or corrupt"):
        open_checkpoint(out, ignore_integrity=True)


def test_shapes_read_no_weight(tmp_path, monkeypatch):
    out = _saved(tmp_path, "decoder-tied", "hf")
    eager = load_checkpoint(out)
    lazy = open_checkpoint(out)
    monkeypatch.setattr(SafetensorsWeights, "read", lambda *a: pytest.fail("a weight was read"))
    assert lazy.shapes() == {k: tuple(v.shape) for k, v in eager.state.items()}


def test_the_tokenizer_is_checked_before_any_weight_and_can_come_from_elsewhere(tmp_path):
    out = _saved(tmp_path, "decoder-untied", "ours")
    elsewhere = tmp_path / "tokenizer"
    elsewhere.mkdir()
    shutil.move(str(out / "vocab.txt"), str(elsewhere / "vocab.txt"))
    for name in ("tokenizer_config.json",):
        if (out / name).exists():
            shutil.move(str(out / name), str(elsewhere / name))
    (out / WEIGHTS_FILE).write_bytes(b"not weights")  # reading them would fail otherwise
    for load in (load_checkpoint, open_checkpoint):
        with pytest.raises(UserError, match="vocab") as refused:
            load(out, check_tokenizer=True)
        assert "weights" not in str(refused.value)
        with pytest.raises(UserError, match="sha256"):  # the tokenizer passes; then the integrity check
            load(out, tokenizer=elsewhere, check_tokenizer=True)
    (tmp_path / "short").mkdir()
    (tmp_path / "short" / "vocab.txt").write_text("\n".join(VOCAB[:-1]) + "\n")
    with pytest.raises(UserError, match="does not belong to these weights"):
        open_checkpoint(out, tokenizer=tmp_path / "short", check_tokenizer=True)


def test_a_pdparams_checkpoint_is_read_whole_and_served_by_group(tmp_path):
    paddle = pytest.importorskip("paddle")
    out = _saved(tmp_path, "encoder", "paddlenlp")
    state = load_file(str(out / WEIGHTS_FILE))
    paddle.save({k: v for k, v in state.items()}, str(out / "model_state.pdparams"))
    (out / WEIGHTS_FILE).unlink()
    (out / "compression.json").unlink()
    lazy = open_checkpoint(out)
    assert not lazy.lazy
    _assert_same(lazy, load_checkpoint(out))


def test_names_group_by_layer_index_whatever_the_root():
    groups = group_names(["model.embed_tokens.weight", "model.layers.10.mlp.down_proj.weight",
                          "model.layers.2.input_layernorm.weight", "ernie.encoder.layers.0.linear1.weight",
                          "lm_head.weight"])
    assert groups == {REST: ["model.embed_tokens.weight", "lm_head.weight"],
                      "layers.0": ["ernie.encoder.layers.0.linear1.weight"],
                      "layers.2": ["model.layers.2.input_layernorm.weight"],
                      "layers.10": ["model.layers.10.mlp.down_proj.weight"]}


def _without_tokenizer(tiny_lm, tmp_path):
    """A copy of ``tiny_lm`` holding weights and config only; its tokenizer moved to ``tmp_path/tok``."""
    bare, tok = tmp_path / "bare", tmp_path / "tok"
    shutil.copytree(tiny_lm, bare)
    tok.mkdir()
    for name in ("vocab.txt", "tokenizer_config.json"):
        shutil.move(str(bare / name), str(tok / name))
    return bare, tok


@pytest.mark.parametrize("command", [["quantize", "--weight-only", "int8"], ["export", "--format", "onnx"]])
def test_a_checkpoint_without_tokenizer_is_refused_before_its_weights_or_pointed_to_one(tiny_lm, tmp_path, command):
    from typer.testing import CliRunner

    from ernie_compress.cli import app

    bare, tok = _without_tokenizer(tiny_lm, tmp_path)
    weights = (bare / WEIGHTS_FILE).read_bytes()
    (bare / WEIGHTS_FILE).write_bytes(b"not weights")  # any read of them would fail
    args = [command[0], str(bare), *command[1:], "--out", str(tmp_path / "out")]
    res = CliRunner().invoke(app, args)
    assert res.exit_code == 2 and "no vocab.txt" in res.output and "--tokenizer DIR" in res.output, res.output
    assert len(res.output.strip().splitlines()) == 1 and not (tmp_path / "out").exists()
    (bare / WEIGHTS_FILE).write_bytes(weights)
    res = CliRunner().invoke(app, [*args, "--tokenizer", str(tok)])
    assert res.exit_code == 0, res.output
    assert (tmp_path / "out" / "vocab.txt").read_text() == (tok / "vocab.txt").read_text()


@pytest.mark.parametrize("drop", [0, 1])
def test_a_checkpoint_missing_a_layer_is_refused_before_any_weight(tmp_path, drop, monkeypatch):
    """A partial download (a layer's tensors absent) is refused when opened, naming the layer, and
    ``info`` refuses it in one line rather than counting it short."""
    out = _saved(tmp_path, "decoder-untied", "hf")
    (out / "compression.json").unlink()
    state = load_file(str(out / WEIGHTS_FILE))
    save_file({k: v for k, v in state.items() if f".layers.{drop}." not in k}, str(out / WEIGHTS_FILE))
    monkeypatch.setattr(SafetensorsWeights, "read", lambda *a: pytest.fail("a weight was read"))
    with pytest.raises(UserError, match=rf"says 2 layers but the checkpoint has no weights for layer\(s\) \[{drop}\]"):
        open_checkpoint(out)
    from typer.testing import CliRunner

    from ernie_compress.cli import app

    res = CliRunner().invoke(app, ["info", str(out)])
    assert res.exit_code == 2 and "the save is incomplete" in res.output and len(res.output.strip().splitlines()) == 1


def test_projections_whose_widths_do_not_fit_together_are_refused_in_one_line(tmp_path):
    """q/k/v of an HF save fused into qkv_proj: a k_proj with another input width (a corrupt or
    mismatched file) is a one-line refusal, lazily (info) and eagerly, not numpy's traceback."""
    from typer.testing import CliRunner

    from ernie_compress.cli import app

    out = _saved(tmp_path, "decoder-untied", "hf")
    (out / "compression.json").unlink()
    state = load_file(str(out / WEIGHTS_FILE))
    name = "model.layers.1.self_attn.k_proj.weight"
    state[name] = np.zeros((state[name].shape[0], state[name].shape[1] + 8), np.float32)
    save_file(state, str(out / WEIGHTS_FILE))
    with pytest.raises(UserError, match="do not fit together"):
        load_checkpoint(out)
    res = CliRunner().invoke(app, ["info", str(out)])
    assert res.exit_code == 2 and "do not fit together" in res.output and len(res.output.strip().splitlines()) == 1


def test_weights_swapped_for_another_file_kind_are_refused_by_the_integrity_check(tmp_path):
    """A lineage that records one model.safetensors, in a folder now holding a sharded save (or the
    other way round), is refused like a changed file, lazily and eagerly; --ignore-integrity loads it."""
    out = _saved(tmp_path, "decoder-untied", "ours")
    state = load_file(str(out / WEIGHTS_FILE))
    (out / WEIGHTS_FILE).unlink()
    save_file(state, str(out / "model-00001-of-00001.safetensors"))
    (out / (WEIGHTS_FILE + ".index.json")).write_text(json.dumps(
        {"weight_map": {n: "model-00001-of-00001.safetensors" for n in state}}))
    for opened in (open_checkpoint, load_checkpoint):
        with pytest.raises(UserError, match="records the sha256 of model.safetensors, which this folder does not hold"):
            opened(out)
    assert sorted(load_checkpoint(out, ignore_integrity=True).state) == sorted(state)
