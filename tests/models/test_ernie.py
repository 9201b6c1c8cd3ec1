"""The ERNIE encoder: shapes, per-layer heads/FFN, PaddleNLP names, save -> load equality."""

from __future__ import annotations

import json

import numpy as np
import pytest

from ernie_compress.checkpoint import load_checkpoint, save_checkpoint
from ernie_compress.data.tokenizer import ErnieTokenizer
from ernie_compress.errors import UserError
from ernie_compress.models import build_model, count_parameters, model_from_state, model_state
from ernie_compress.models.config import ErnieConfig
from ernie_compress.models.families import config_from_dict
from ernie_compress.models.presets import PRESETS, resolve_preset
from ernie_compress.paddle_env import import_paddle
from tests.helpers import random_ids

paddle = import_paddle()


def _logits(model, ids):
    model.eval()
    with paddle.no_grad():
        return model(paddle.to_tensor(ids)).numpy()


def test_shapes_and_paddlenlp_names(tiny_config):
    model = build_model(tiny_config)
    out = _logits(model, random_ids(3, 7, tiny_config.vocab_size))
    assert out.shape == (3, 2)
    names = set(model.state_dict())
    for expected in ("ernie.embeddings.word_embeddings.weight", "ernie.embeddings.layer_norm.weight",
                     "ernie.encoder.layers.1.self_attn.q_proj.weight",
                     "ernie.encoder.layers.0.self_attn.out_proj.bias", "ernie.encoder.layers.0.linear1.weight",
                     "ernie.encoder.layers.0.norm2.bias", "ernie.pooler.dense.weight", "classifier.weight"):
        assert expected in names
    # Paddle Linear weights are [in, out]
    assert list(model.state_dict()["ernie.encoder.layers.0.linear1.weight"].shape) == [32, 64]


def test_per_layer_heads_and_ffn(tiny_config):
    config = tiny_config.replace(num_attention_heads_per_layer=[1, 3], intermediate_size_per_layer=[16, 0])
    model = build_model(config)
    state = model.state_dict()
    head_dim = config.head_dim
    assert list(state["ernie.encoder.layers.0.self_attn.q_proj.weight"].shape) == [32, 1 * head_dim]
    assert list(state["ernie.encoder.layers.1.self_attn.out_proj.weight"].shape) == [3 * head_dim, 32]
    assert list(state["ernie.encoder.layers.0.linear1.weight"].shape) == [32, 16]
    assert "ernie.encoder.layers.1.linear1.weight" not in state
    assert _logits(model, random_ids(2, 5, config.vocab_size)).shape == (2, 2)
    zero_heads = tiny_config.replace(num_attention_heads_per_layer=[0, 4])
    assert _logits(build_model(zero_heads), random_ids(2, 5, 60)).shape == (2, 2)


def test_padding_does_not_change_outputs(tiny_config):
    model = build_model(tiny_config)
    ids = random_ids(1, 6, tiny_config.vocab_size)
    padded = np.concatenate([ids, np.zeros((1, 4), dtype=np.int64)], axis=1)
    np.testing.assert_allclose(_logits(model, ids), _logits(model, padded), atol=1e-5)


def test_head_mask_of_ones_is_identity_and_zero_changes(tiny_config):
    model = build_model(tiny_config)
    model.eval()
    ids = paddle.to_tensor(random_ids(2, 6, tiny_config.vocab_size))
    with paddle.no_grad():
        base = model(ids).numpy()
        ones = model(ids, head_mask=paddle.ones([2, 4])).numpy()
        zero = model(ids, head_mask=paddle.zeros([2, 4])).numpy()
    np.testing.assert_allclose(base, ones, atol=1e-6)
    assert np.abs(base - zero).max() > 1e-4


def test_save_load_round_trip_is_exact(tmp_path, tiny_config, tiny_vocab):
    config = tiny_config.replace(vocab_size=len(tiny_vocab), num_attention_heads_per_layer=[2, 4])
    model = build_model(config)
    ids = random_ids(2, 6, config.vocab_size)
    out = save_checkpoint(tmp_path / "ckpt", config, model_state(model), ErnieTokenizer(tiny_vocab),
                          {"name": "init"})
    ckpt = load_checkpoint(out)
    assert ckpt.config.heads_per_layer == [2, 4]
    for name, value in model_state(model).items():
        np.testing.assert_array_equal(ckpt.state[name], value)
    np.testing.assert_array_equal(_logits(model, ids), _logits(model_from_state(ckpt.config, ckpt.state, "x"), ids))
    assert ckpt.stages[0]["name"] == "init" and len(ckpt.weights_sha256) == 64


def test_paddlenlp_checkpoint_loads_identically(tmp_path, tiny_config, tiny_vocab):
    """A directory as PaddleNLP writes it: config.json + model_state.pdparams (paddle.save) + vocab.txt."""
    config = tiny_config.replace(vocab_size=len(tiny_vocab), use_task_id=True, task_type_vocab_size=3)
    model = build_model(config)
    d = tmp_path / "paddlenlp"
    d.mkdir()
    data = {k: v for k, v in config.to_dict().items() if k not in ("id2label", "label2id")}
    data.update(id2label={"0": "neg", "1": "pos"}, init_class="ErnieForSequenceClassification")
    (d / "config.json").write_text(json.dumps(data))
    paddle.save(model.state_dict(), str(d / "model_state.pdparams"))
    (d / "vocab.txt").write_text("\n".join(tiny_vocab) + "\n")
    ckpt = load_checkpoint(d)
    assert "ernie.embeddings.task_type_embeddings.weight" in ckpt.state
    ids = random_ids(2, 6, config.vocab_size)
    np.testing.assert_array_equal(_logits(model, ids), _logits(model_from_state(ckpt.config, ckpt.state, "x"), ids))
    assert ckpt.config.extra["init_class"] == "ErnieForSequenceClassification"  # unknown keys kept


def test_pdparams_with_code_is_refused(tmp_path, tiny_config):
    import os
    import pickle

    class Evil:
        def __reduce__(self):
            return (os.system, ("echo pwned",))

    d = tmp_path / "evil"
    d.mkdir()
    (d / "config.json").write_text(json.dumps(tiny_config.to_dict()))
    (d / "model_state.pdparams").write_bytes(pickle.dumps({"x": Evil()}))
    with pytest.raises(UserError, match="refusing to load posix.system|refusing to load os.system"):
        load_checkpoint(d)


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_presets_are_valid_configs(name):
    keys = resolve_preset(name)
    keys.setdefault("vocab_size", 100)
    config = config_from_dict(keys)
    assert config.model_type == (keys["model_type"] if name.startswith("ernie45") else "ernie")
    assert config.model_type.startswith("ernie4_5") == name.startswith("ernie45")
    if config.model_type == "ernie":
        assert config.hidden_size % config.num_attention_heads == 0


def test_real_preset_parameter_count_matches_ernie3_base():
    """ERNIE 3.0 base: ~118M parameters with its 40k vocabulary (counted layer by layer)."""
    config = ErnieConfig.from_dict(dict(resolve_preset("base"), id2label={0: "a", 1: "b"}))
    counts = count_parameters({k: v.shape for k, v in build_model(config).state_dict().items()})
    h, ffn = 768, 3072
    per_layer = 4 * (h * h + h) + (h * ffn + ffn) + (ffn * h + h) + 4 * h
    embeddings = (40000 + 2048 + 4 + 16) * h + 2 * h  # task types: 16, as PaddleNLP's ERNIE 3.0
    assert counts["embeddings"] == embeddings
    assert counts["total"] == embeddings + 12 * per_layer + (h * h + h) + (h * 2 + 2)
    assert counts["total"] / 1e6 == pytest.approx(117.9, abs=0.3)


@pytest.mark.parametrize("bad, message", [
    ({"hidden_size": 30, "num_attention_heads": 4}, "not divisible"),
    ({"hidden_act": "swish"}, "not supported"),
    ({"num_attention_heads_per_layer": [1]}, "entries"),
    ({"vocab_size": 0}, "positive integer"),
])
def test_bad_configs_are_refused(tiny_config, bad, message):
    with pytest.raises(UserError, match=message):
        ErnieConfig.from_dict({**tiny_config.to_dict(), **bad})


def test_count_parameters_splits_embeddings(tiny_config):
    model = build_model(tiny_config)
    counts = count_parameters({k: v.shape for k, v in model.state_dict().items()})
    assert counts["total"] == sum(int(np.prod(p.shape)) for p in model.parameters())
    assert counts["embeddings"] == 60 * 32 + 512 * 32 + 2 * 32 + 2 * 32


def test_token_classification_and_span_heads(tiny_config):
    ids = paddle.to_tensor(random_ids(3, 7, tiny_config.vocab_size))
    tagger = build_model(tiny_config.replace(architectures=["ErnieForTokenClassification"],
                                             id2label={0: "O", 1: "B-PER", 2: "I-PER"}))
    tagger.eval()
    assert tagger(ids).shape == [3, 7, 3]
    assert "classifier.weight" in tagger.state_dict()
    reader = build_model(tiny_config.replace(architectures=["ErnieForQuestionAnswering"], id2label={}))
    reader.eval()
    span = reader(ids)
    assert span.shape == [3, 7, 2]  # start, end per position
    ids_np = ids.numpy().copy()
    ids_np[0, 5:] = tiny_config.pad_token_id
    padded = reader(paddle.to_tensor(ids_np)).numpy()
    assert (padded[0, 5:] < -1e3).all() and (padded[0, :5] > -1e3).all()  # padding is never a span
