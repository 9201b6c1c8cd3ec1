"""Distillation with an ERNIE 4.5 mixture-of-experts teacher (stages/distill.py): into a dense ERNIE 4.5
student and into an MoE student from the CLI, the MoE student's router auxiliary loss inside the KD
loss, the hidden-state projection between different widths, which families teach which
(``Distillation.students``), the one-line refusals, and two data-parallel processes with an MoE
teacher and student ending with the weights of one."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from safetensors.numpy import load_file
from typer.testing import CliRunner

from ernie_compress.checkpoint import load_checkpoint
from ernie_compress.cli import app
from ernie_compress.data.encoding import encode_split
from ernie_compress.data.types import Example
from ernie_compress.losses import IGNORE_INDEX
from ernie_compress.models import build_model, model_from_state
from ernie_compress.models.families import FAMILIES, config_from_dict
from ernie_compress.models.presets import resolve_preset
from ernie_compress.paddle_env import import_paddle
from ernie_compress.stages.distill import DistillConfig, _alignment, _distill_loss
from ernie_compress.training_loop import TensorBatch
from tests.helpers import NEGATIVE, POSITIVE, cli_json, train_tiny_checkpoint

paddle = import_paddle()
runner = CliRunner()
CLI = str(Path(sys.executable).with_name("ernie-compress"))


def _write_lm(data: Path, texts: list[str], copies: int = 4) -> Path:
    data.mkdir(parents=True)
    for split, n in (("train", copies), ("dev", 1), ("test", 1)):
        (data / f"{split}.txt").write_text("\n".join(texts * n), encoding="utf-8")
    return data


@pytest.fixture(scope="module")
def teacher(tmp_path_factory) -> Path:
    """ernie45-moe-tiny trained a few steps on a tiny causal-LM task (layer 0 dense, 4 experts, top-2)."""
    root = tmp_path_factory.mktemp("moe-teacher")
    data = _write_lm(root / "lm", POSITIVE + NEGATIVE)
    cli_json(["train", "--task", "lm", "--data", str(data), "--preset", "ernie45-moe-tiny", "--out", str(root / "t"),
              "--epochs", "2", "--lr", "5e-3", "--batch-size", "8"])
    return root / "t"


def _distill(teacher: Path, out: Path, *args: str) -> list[str]:
    return ["distill", "--teacher", str(teacher), "--out", str(out), "--batch-size", "8", "--no-latency", *args]


def test_an_moe_teacher_distils_into_a_dense_student(teacher, tmp_path):
    result = cli_json(_distill(teacher, tmp_path / "s", "--student", "ernie45-tiny", "--hidden-weight", "1",
                               "--max-steps", "4"))
    t, s = result["parameters"]["teacher"], result["parameters"]["student"]
    assert t["active"] < t["total"] and "active" not in s and s["non_embedding"] < t["non_embedding"]
    assert result["aux_loss"] is None  # a dense student has no router
    assert result["metric"] == "perplexity" and 1 < result["student_metrics"]["perplexity"] < float("inf")
    assert result["layer_map"] == [[0, 1], [1, 2]]
    saved = load_checkpoint(tmp_path / "s")
    parent = json.loads((teacher / "config.json").read_text())
    assert saved.config.model_type == "ernie4_5" and saved.config.architectures == ["Ernie4_5ForCausalLM"]
    assert (saved.config.vocab_size, saved.config.bos_token_id, saved.config.eos_token_id) == (
        parent["vocab_size"], parent["bos_token_id"], parent["eos_token_id"])
    assert saved.tokenizer().vocab == load_checkpoint(teacher).tokenizer().vocab
    model_from_state(saved.config, saved.state, "the student")  # its weights are the dense model's


def test_an_moe_teacher_distils_into_an_moe_student_and_reports_its_aux_loss(teacher, tmp_path):
    res = runner.invoke(app, _distill(teacher, tmp_path / "s", "--student", "ernie45-moe-tiny", "--epochs", "2"))
    assert res.exit_code == 0, res.output
    assert "parameters (total / active per token): teacher 33,384 / 27,240" in res.stdout
    assert "student's router auxiliary loss:" in res.stdout
    report = json.loads((tmp_path / "s" / "compression.json").read_text())["stages"][-1]["report"]
    assert report["aux_loss"]["steps"] == 16 and 0 < report["aux_loss"]["last"] < 1
    assert report["parameters"]["student"]["active"] < report["parameters"]["student"]["total"]
    assert load_checkpoint(tmp_path / "s").config.architectures == ["Ernie4_5_MoeForCausalLM"]


# --- the loss, in process -------------------------------------------------------------------------
def _config(preset: str, **changes):
    return config_from_dict(dict(resolve_preset(preset), vocab_size=40, hidden_dropout_prob=0.0,
                                 attention_probs_dropout_prob=0.0, **changes))


def _batch() -> TensorBatch:
    """Two rows of 9 tokens (the second padded after 5), next-token labels (ignored after the last real)."""
    rng = np.random.default_rng(0)
    ids = rng.integers(3, 40, size=(2, 9)).astype("int64")
    ids[1, 5:] = 0
    labels = np.full_like(ids, IGNORE_INDEX)
    labels[:, :-1] = ids[:, 1:]
    labels[1, 4:] = IGNORE_INDEX
    return TensorBatch(paddle.to_tensor(ids), paddle.to_tensor(np.zeros_like(ids)), paddle.to_tensor(labels),
                       np.arange(2))


def _loss(student_preset: str, hidden_weight: float = 0.0, **student_changes):
    """(loss, parts, student, projection) of one distillation step from a random MoE teacher."""
    paddle.seed(0)
    teacher = build_model(_config("ernie45-moe-tiny"))
    teacher.eval()
    student = build_model(_config(student_preset, **student_changes))
    student.train()
    cfg = DistillConfig(teacher="t", student="s", out=Path("unused"), hidden_weight=hidden_weight)
    projection = paddle.nn.Linear(student.config.hidden_size, teacher.config.hidden_size)
    loss_fn = _distill_loss(cfg, teacher, 0, projection, _alignment(cfg, teacher.config, student.config))
    loss, parts = loss_fn(student, _batch())
    return loss, parts, student, projection


def test_the_kd_loss_of_an_moe_student_adds_its_router_auxiliary_loss():
    loss, parts, student, _ = _loss("ernie45-moe-tiny")
    aux = student.auxiliary_loss()  # the student's own term, from the forward inside the loss
    assert aux is not None and float(aux) > 0
    assert float(parts["aux"]) == pytest.approx(float(aux), rel=1e-6)
    assert float(loss) == pytest.approx(0.5 * float(parts["ce"]) + 0.5 * float(parts["kd"]) + float(aux), rel=1e-6)
    loss.backward()
    assert np.abs(student.moe_blocks()[0].gate.weight.grad.numpy()).max() > 0
    dense_loss, dense_parts, _, _ = _loss("ernie45-tiny")
    assert "aux" not in dense_parts  # a dense student: cross-entropy and KD only
    assert float(dense_loss) == pytest.approx(0.5 * float(dense_parts["ce"]) + 0.5 * float(dense_parts["kd"]),
                                              rel=1e-6)


def test_hidden_states_of_a_narrower_student_reach_the_teacher_through_the_projection():
    """A 16-wide dense student, the 32-wide MoE teacher: the hidden term is the mean over real tokens
    of |W s + b - t|^2 / 32 (computed here in numpy from both models' hidden states) and trains W."""
    loss, parts, student, projection = _loss("ernie45-tiny", hidden_weight=1.0, hidden_size=16)
    assert projection.weight.shape == [16, 32]
    batch = _batch()
    paddle.seed(0)
    teacher = build_model(_config("ernie45-moe-tiny"))
    teacher.eval()
    t_record, s_record = {}, {}
    with paddle.no_grad():
        teacher(batch.input_ids, record=t_record)
        student(batch.input_ids, record=s_record)
    valid = batch.input_ids.numpy() != 0  # [b, s]
    w, b = projection.weight.numpy(), projection.bias.numpy()
    expected = np.mean([((s_record["hidden_states"][s].numpy() @ w + b - t_record["hidden_states"][t].numpy()) ** 2)
                        .mean(-1)[valid].mean() for s, t in ((0, 1), (1, 2))])
    assert float(parts["hidden"]) == pytest.approx(float(expected), rel=1e-4)
    loss.backward()
    assert np.abs(projection.weight.grad.numpy()).max() > 0


def test_the_families_say_who_teaches_whom():
    ernie3, dense, moe = FAMILIES["ernie"], FAMILIES["ernie4_5"], FAMILIES["ernie4_5_moe"]
    assert moe.teaches(dense) and moe.teaches(moe) and dense.teaches(moe) and dense.teaches(dense)
    assert not any(f.teaches(ernie3) for f in (dense, moe)) and not any(ernie3.teaches(f) for f in (dense, moe))


# --- refusals -------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def foreign(tmp_path_factory) -> dict[str, Path]:
    """An ERNIE 3.0 classifier and an ERNIE 4.5 causal LM with another vocabulary, one step each."""
    root = tmp_path_factory.mktemp("foreign")
    ernie3, _ = train_tiny_checkpoint(root, epochs=1)
    data = _write_lm(root / "other-lm", ["完全不同的词汇表", "别的字"], copies=2)
    cli_json(["train", "--task", "lm", "--data", str(data), "--preset", "ernie45-tiny", "--out", str(root / "v"),
              "--max-steps", "1"])
    return {"ernie3": ernie3, "other vocab": root / "v"}


@pytest.mark.parametrize("teacher_is, student, extra, message", [
    ("moe", "tiny", [], "the student preset 'tiny' is from the ernie family but the teacher is ernie4_5_moe; "
                        "distill within one family or a family that shares its vocabulary"),
    ("ernie3", "ernie45-tiny", [], "the student preset 'ernie45-tiny' is from the ernie4_5 family but the teacher "
                                   "is ernie; distill within one family"),
    ("moe", "other vocab", [], "have different vocabularies"),
    ("moe", "ernie45-tiny", ["--init-from-teacher"], "--init-from-teacher copies the teacher's layers"),
])
def test_refusals_are_one_line_and_write_nothing(teacher, foreign, tmp_path, teacher_is, student, extra, message):
    teacher_dir = teacher if teacher_is == "moe" else foreign[teacher_is]
    res = runner.invoke(app, ["--quiet", *_distill(teacher_dir, tmp_path / "o", "--student",
                                                   str(foreign.get(student, student)), "--max-steps", "1", *extra)])
    lines = [line for line in res.stderr.splitlines() if line.strip()]
    assert res.exit_code == 2 and len(lines) == 1 and message in lines[0], res.output
    assert list(tmp_path.iterdir()) == []


# --- data parallel ------------------------------------------------------------------------------
LONG, SHORT = "这个东西很好用，推荐购买", "好"


def _experts_with_tokens(student: Path) -> list[list[set[int]]]:
    """Per row of the first training batch of LONG and SHORT (one row per rank at --nproc 2), per MoE
    layer: the experts its tokens (padding included: the batch pads the short row) are routed to."""
    ckpt = load_checkpoint(student)
    split = encode_split("causal_lm", [Example(t, None, None) for t in (LONG, SHORT)], ckpt.tokenizer(), [], 128)
    ids = split.rows([1, 0]).input_ids  # [2, seq]: sorted by length, as the training batches are
    model = model_from_state(ckpt.config, ckpt.state, "the student")
    model.eval()
    for block in model.moe_blocks():
        block.keep_dispatch = True
    routed = []
    for row in ids:
        model(paddle.to_tensor(row[None]))
        routed.append([{e for e, rows in enumerate(b.dispatch.rows) if len(rows)} for b in model.moe_blocks()])
    return routed


@pytest.mark.multiprocess
def test_two_processes_with_an_moe_teacher_and_student_end_with_the_weights_of_one(teacher, tmp_path):
    """At the first step one rank's row sends no token to an expert the other rank's row uses: the
    student gives it a zero gradient there, so both ranks all-reduce the same parameters (without that
    term the run aborts in the all-reduce). The student (a copy of the teacher) has dropout off and no
    router auxiliary loss: that term balances each rank's share on its own (as Megatron's default
    per-micro-batch aux loss), so with it N processes are not the same step as one."""
    student = tmp_path / "student"
    shutil.copytree(teacher, student)
    config = json.loads((student / "config.json").read_text())
    config.update(hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0, router_aux_loss_coef=0.0)
    (student / "config.json").write_text(json.dumps(config))
    short, long = _experts_with_tokens(student)
    assert any(a != b for a, b in zip(short, long)), (short, long)  # an expert idle on one rank only
    data = _write_lm(tmp_path / "lm", [LONG, SHORT], copies=1)
    args = ["distill", "--teacher", str(teacher), "--student", str(student), "--task", "lm", "--data", str(data),
            "--epochs", "3", "--lr", "1e-3", "--hidden-weight", "1", "--batch-size", "2", "--no-latency"]
    outs = {}
    for n in (1, 2):
        out = tmp_path / f"nproc{n}"
        done = subprocess.run([CLI, "--quiet", "--json", *args, "--out", str(out), "--nproc", str(n)],
                              capture_output=True, text=True, timeout=300)
        assert done.returncode == 0, done.stderr
        outs[n] = (json.loads(done.stdout), load_file(str(out / "model.safetensors")))
    (one, w1), (two, w2) = outs[1], outs[2]
    assert one["steps"] == two["steps"] == 3
    assert max(float(np.abs(w1[k] - w2[k]).max()) for k in w1) <= 1e-5
    assert two["student_metrics"]["perplexity"] == pytest.approx(one["student_metrics"]["perplexity"], rel=1e-5)
