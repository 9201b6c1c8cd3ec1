"""Distillation losses (zero for identical models, positive otherwise), layer maps, relation heads
across head counts, gradients only into the student, and the CLI stage."""

from __future__ import annotations

import json

import numpy as np
import pytest
from typer.testing import CliRunner

from ernie_compress.cli import app
from ernie_compress.distill.losses import (hidden_mse, parse_layer_map, relation_kl, relation_log_probs,
                                           uniform_layer_map)
from ernie_compress.errors import UserError
from ernie_compress.losses import soft_label_kd
from ernie_compress.models import build_model
from ernie_compress.paddle_env import import_paddle
from tests.helpers import random_ids, train_tiny_checkpoint, write_jsonl

paddle = import_paddle()
runner = CliRunner()


def _record(model, ids):
    record = {}
    logits = model(ids, record=record)
    return logits, record


def test_losses_are_zero_for_identical_models_and_positive_otherwise(tiny_config):
    ids = paddle.to_tensor(random_ids(3, 7, tiny_config.vocab_size))
    valid = paddle.cast(ids != 0, "float32")
    bias = paddle.unsqueeze((1.0 - valid) * -1e4, axis=[1, 2])
    a, b = build_model(tiny_config), build_model(tiny_config)
    b.set_state_dict(a.state_dict())
    c = build_model(tiny_config)  # clearly different: a's weights plus large noise
    rng = np.random.default_rng(0)
    c.set_state_dict({k: v.numpy() + rng.normal(0, 0.3, v.shape).astype("float32")
                      for k, v in a.state_dict().items()})
    for m in (a, b, c):
        m.eval()
    la, ra = _record(a, ids)
    lb, rb = _record(b, ids)
    lc, rc = _record(c, ids)
    identity = paddle.nn.Linear(32, 32)
    identity.weight.set_value(np.eye(32, dtype="float32"))
    identity.bias.set_value(np.zeros(32, dtype="float32"))

    def all_losses(lx, rx, ly, ry):
        q1, k1, v1 = rx["qkv"][-1]
        q2, k2, v2 = ry["qkv"][-1]
        return [float(soft_label_kd(ly, lx, 2.0)),
                float(hidden_mse(ry["hidden_states"][-1], rx["hidden_states"][-1], identity, valid)),
                float(relation_kl(relation_log_probs(q1, k1, 2, bias), relation_log_probs(q2, k2, 2, bias), valid)),
                float(relation_kl(relation_log_probs(v1, v1, 2, bias), relation_log_probs(v2, v2, 2, bias), valid))]

    assert all(abs(x) < 1e-5 for x in all_losses(la, ra, lb, rb))
    assert all(x > 1e-6 for x in all_losses(la, ra, lc, rc))


def test_relation_loss_across_different_head_counts_and_widths(tiny_config):
    teacher = build_model(tiny_config)  # 4 heads x 8
    student = build_model(tiny_config.replace(hidden_size=16, num_attention_heads=2, intermediate_size=32))
    ids = paddle.to_tensor(random_ids(2, 6, tiny_config.vocab_size))
    valid = paddle.cast(ids != 0, "float32")
    bias = paddle.unsqueeze((1.0 - valid) * -1e4, axis=[1, 2])
    _, rt = _record(teacher, ids)
    _, rs = _record(student, ids)
    tq, tk, _ = rt["qkv"][-1]
    sq, sk, _ = rs["qkv"][-1]
    t_rel, s_rel = relation_log_probs(tq, tk, 2, bias), relation_log_probs(sq, sk, 2, bias)
    assert t_rel.shape == s_rel.shape == [2, 2, 6, 6]
    loss = relation_kl(t_rel.detach(), s_rel, valid)
    loss.backward()
    assert float(loss) > 0
    assert student.ernie.encoder.layers[1].self_attn.q_proj.weight.grad is not None
    assert teacher.ernie.encoder.layers[1].self_attn.q_proj.weight.grad is None  # detached teacher


def test_layer_maps():
    assert uniform_layer_map(2, 4) == [(0, 1), (1, 3)]
    assert uniform_layer_map(3, 12) == [(0, 3), (1, 7), (2, 11)]
    assert uniform_layer_map(4, 4) == [(0, 0), (1, 1), (2, 2), (3, 3)]
    assert parse_layer_map("0:0,1:2", 2, 4) == [(0, 0), (1, 2)]
    with pytest.raises(UserError, match="outside"):
        parse_layer_map("0:9", 2, 4)
    with pytest.raises(UserError, match="student:teacher"):
        parse_layer_map("a-b", 2, 4)


@pytest.fixture(scope="module")
def teacher_ckpt(tmp_path_factory):
    return train_tiny_checkpoint(tmp_path_factory.mktemp("distill"), name="xxl")


def test_distill_cli_with_all_losses_and_baseline(teacher_ckpt, tmp_path):
    teacher, _ = teacher_ckpt
    res = runner.invoke(app, ["--quiet", "--json", "distill", "--teacher", "xxl", "--models-dir", str(teacher.parent),
                              "--student", "tiny", "--out", str(tmp_path / "s"), "--max-steps", "6",
                              "--batch-size", "8", "--hidden-weight", "1", "--attention-weight", "1",
                              "--baseline", "--no-latency"])
    assert res.exit_code == 0, res.output
    result = json.loads(res.stdout)
    assert result["baseline"]["steps"] == result["steps"] == 6
    assert result["layer_map"] == [[0, 0], [1, 1]] and result["relation_heads"] == 4
    lineage = json.loads((tmp_path / "s" / "compression.json").read_text())
    assert lineage["stages"][-1]["name"] == "distill"


def test_teacher_gets_no_gradients(teacher_ckpt, tmp_path, monkeypatch):
    """Only the student changes: the teacher's weights on disk are untouched by distillation."""
    teacher, _ = teacher_ckpt
    before = (teacher / "model.safetensors").read_bytes()
    res = runner.invoke(app, ["--quiet", "distill", "--teacher", str(teacher), "--student", "tiny",
                              "--out", str(tmp_path / "s"), "--max-steps", "3", "--batch-size", "8",
                              "--hidden-weight", "1", "--no-latency"])
    assert res.exit_code == 0, res.output
    assert (teacher / "model.safetensors").read_bytes() == before


def test_init_from_teacher_needs_equal_widths(teacher_ckpt, tmp_path):
    teacher, _ = teacher_ckpt
    res = runner.invoke(app, ["--quiet", "distill", "--teacher", str(teacher), "--student", "demo-mini",
                              "--init-from-teacher", "--out", str(tmp_path / "s"), "--no-latency"])
    assert res.exit_code == 2 and "equal widths" in res.stderr
    res = runner.invoke(app, ["--quiet", "--json", "distill", "--teacher", str(teacher), "--student", "tiny",
                              "--init-from-teacher", "--out", str(tmp_path / "t"), "--max-steps", "1",
                              "--batch-size", "8", "--no-latency"])
    assert res.exit_code == 0, res.output


def test_a_preset_student_is_resized_between_the_presets(teacher_ckpt, tmp_path):
    from ernie_compress.checkpoint import load_checkpoint

    teacher, _ = teacher_ckpt
    res = runner.invoke(app, ["--quiet", "--json", "distill", "--teacher", str(teacher), "--student", "tiny",
                              "--student-layers", "1", "--student-hidden", "48", "--out", str(tmp_path / "s"),
                              "--max-steps", "2", "--batch-size", "8", "--no-latency"])
    assert res.exit_code == 0, res.output
    config = load_checkpoint(tmp_path / "s").config  # tiny: 2 layers x 32, 4 heads of 8, FFN 2x
    assert (config.num_hidden_layers, config.hidden_size, config.num_attention_heads, config.intermediate_size) == \
        (1, 48, 6, 96)


def test_resized_presets_keep_head_size_kv_groups_and_ffn_ratio():
    from ernie_compress.models.presets import resize_preset, resolve_preset

    keys = resize_preset(resolve_preset("ernie45-mini"), "ernie45-mini", layers=3, hidden=96)  # 8 heads of 8, 2 KV
    assert {k: keys[k] for k in ("num_hidden_layers", "hidden_size", "num_attention_heads", "num_key_value_heads",
                                 "head_dim", "intermediate_size")} == {
        "num_hidden_layers": 3, "hidden_size": 96, "num_attention_heads": 12, "num_key_value_heads": 3,
        "head_dim": 8, "intermediate_size": 288}
    assert resize_preset(resolve_preset("tiny"), "tiny") == resolve_preset("tiny")  # nothing asked: unchanged
    for name, hidden, message in (("demo-mini", 48, "not a multiple of preset 'demo-mini''s head size 32"),
                                  ("ernie45-mini", 72, "9 heads, not a multiple"),
                                  ("ernie45-moe-tiny", 64, "mixture of experts")):
        with pytest.raises(UserError, match=message):
            resize_preset(resolve_preset(name), name, hidden=hidden)


def test_larger_student_warns(teacher_ckpt, tmp_path):
    teacher, _ = teacher_ckpt
    res = runner.invoke(app, ["distill", "--teacher", str(teacher), "--student", "demo-mini",
                              "--out", str(tmp_path / "s"), "--max-steps", "1", "--batch-size", "8", "--no-latency"])
    assert res.exit_code == 0, res.output
    assert "not smaller than its teacher" in res.stderr


def test_bad_distill_inputs(teacher_ckpt, tmp_path):
    teacher, data = teacher_ckpt
    cases = [
        (["--teacher", str(tmp_path / "missing"), "--student", "tiny"], "not found"),
        (["--teacher", str(teacher), "--student", "gigantic"], "neither a preset nor a checkpoint"),
        (["--teacher", str(teacher), "--student", "tiny", "--kd-weight", "0", "--ce-weight", "0"], "nothing to train"),
        (["--teacher", str(teacher), "--student", "tiny", "--layer-map", "0:7", "--hidden-weight", "1"], "outside"),
        (["--teacher", str(teacher), "--student", "tiny", "--student-hidden", "36"], "not a multiple"),
        (["--teacher", str(teacher), "--student", str(teacher), "--student-layers", "1"], "resize a preset"),
    ]
    # a student checkpoint with another vocabulary
    other = tmp_path / "other"
    other_data = tmp_path / "od"
    other_data.mkdir()
    write_jsonl(other_data / "train.jsonl", [{"text": "完全不同的词汇表", "label": "a"}, {"text": "别的字", "label": "b"}])
    write_jsonl(other_data / "dev.jsonl", [{"text": "别的字", "label": "b"}])
    assert runner.invoke(app, ["--quiet", "train", "--task", "text", "--data", str(other_data), "--preset", "tiny",
                               "--out", str(other), "--max-steps", "1"]).exit_code == 0
    cases.append((["--teacher", str(teacher), "--student", str(other)], "different vocabularies"))
    for args, message in cases:
        res = runner.invoke(app, ["--quiet", "distill", "--out", str(tmp_path / "o"), "--no-latency",
                                  "--max-steps", "1"] + args)
        assert res.exit_code == 2, (args, res.output)
        assert message in res.stderr, (message, res.stderr)
        assert not (tmp_path / "o").exists()
