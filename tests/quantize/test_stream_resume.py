"""``quantize --weight-only ... --stream --resume`` (shard_progress.py, sequential.SavedWalk): a streamed
run interrupted after some shards continues from the last recorded one and writes the tensors of an
uninterrupted run byte for byte (RTN and GPTQ, whose calibration hidden states and rounding records are
restored); a damaged shard is written again; other settings, nothing to resume, --resume without --stream
are refused in one line."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

import ernie_compress.stages.quantize as quantize_stage
from ernie_compress.checkpoint import load_checkpoint
from ernie_compress.cli import app
from ernie_compress.shard_progress import PROGRESS_FILE
from ernie_compress.training_loop import has_train_state, train_state_dir
from tests.helpers import NEGATIVE, POSITIVE, cli_json
from tests.quantize.test_streaming import _refused, parents  # noqa: F401  (the fixture: tied, untied, moe)

METHODS = {"rtn": [], "gptq": ["--method", "gptq", "--calib-samples", "40"]}


def _args(parent, out, method: str, *extra: str) -> list[str]:
    """The command; without ``--out`` when ``out`` is None (``_refused`` adds it)."""
    return ["quantize", str(parent), "--weight-only", "int4", "--group-size", "16", "--stream", *METHODS[method],
            *(["--out", str(out)] if out is not None else []), *extra]


def _interrupted(monkeypatch, args: list[str], after: int) -> str:
    """Run ``args`` in process, interrupted (as SIGTERM does: KeyboardInterrupt) once ``after`` shards were
    handed to the writer; its one error line."""
    real = quantize_stage.save_sharded_checkpoint

    def cut(out, config, groups, *rest, **kwargs):
        def some():
            for i, group in enumerate(groups):
                if i == after:
                    raise KeyboardInterrupt
                yield group
        return real(out, config, some(), *rest, **kwargs)

    monkeypatch.setattr(quantize_stage, "save_sharded_checkpoint", cut)
    res = CliRunner().invoke(app, ["--quiet", *args])
    monkeypatch.setattr(quantize_stage, "save_sharded_checkpoint", real)
    assert res.exit_code == 130, res.output
    return res.output.strip()


def _shards(out) -> list[str]:
    return [s["name"] for s in json.loads((train_state_dir(out) / PROGRESS_FILE).read_text())["shards"]]


def _assert_same(a, b) -> None:
    one, two = load_checkpoint(a), load_checkpoint(b)  # b's index and shards checked against its lineage
    assert sorted(one.state) == sorted(two.state)
    for name, value in one.state.items():
        assert value.tobytes() == two.state[name].tobytes(), name
    assert one.config.to_dict() == two.config.to_dict()  # the scheme, with GPTQ's rounding record


@pytest.mark.parametrize(("model", "method"), [("tied", "rtn"), ("untied", "gptq"), ("moe", "gptq")])
def test_an_interrupted_stream_resumes_to_the_uninterrupted_result(parents, tmp_path, monkeypatch, model, method):  # noqa: F811
    full = cli_json(_args(parents[model], tmp_path / "full", method))
    line = _interrupted(monkeypatch, _args(parents[model], tmp_path / "cut", method), after=2)
    assert "continue with --resume" in line and len(line.splitlines()) == 1, line
    assert not (tmp_path / "cut").exists() and has_train_state(tmp_path / "cut")
    assert len(_shards(tmp_path / "cut")) == 2  # the rest and layer 0
    resumed = cli_json(_args(parents[model], tmp_path / "cut", method, "--resume"))
    assert resumed["scheme"] == full["scheme"]
    _assert_same(tmp_path / "full", tmp_path / "cut")
    assert not train_state_dir(tmp_path / "cut").exists()


def test_a_damaged_shard_and_those_after_it_are_written_again(parents, tmp_path, monkeypatch):  # noqa: F811
    cli_json(_args(parents["moe"], tmp_path / "full", "rtn"))
    _interrupted(monkeypatch, _args(parents["moe"], tmp_path / "cut", "rtn"), after=2)
    _damage(train_state_dir(tmp_path / "cut") / _shards(tmp_path / "cut")[0])
    cli_json(_args(parents["moe"], tmp_path / "cut", "rtn", "--resume"))
    _assert_same(tmp_path / "full", tmp_path / "cut")


def test_gptq_cannot_go_back_before_the_hidden_states_it_kept(parents, tmp_path, monkeypatch):  # noqa: F811
    """The walk keeps the inputs of the layer after the last recorded shard (and of the one it was working
    on): a damaged earlier shard would need layers it no longer has the inputs of."""
    _interrupted(monkeypatch, _args(parents["moe"], tmp_path / "cut", "gptq"), after=2)
    _damage(train_state_dir(tmp_path / "cut") / _shards(tmp_path / "cut")[1])
    line = _refused(_args(parents["moe"], None, "gptq", "--resume"), tmp_path / "cut")
    assert "cannot resume: the calibration hidden states after shard 1 are missing" in line
    assert "start again without --resume" in line


def _damage(shard) -> None:
    data = bytearray(shard.read_bytes())
    data[-1] ^= 0xFF
    shard.write_bytes(bytes(data))


def test_resuming_with_other_settings_or_nothing_to_resume_is_refused(parents, tmp_path, monkeypatch):  # noqa: F811
    lm = parents["tied"]
    assert "nothing to resume" in _refused(_args(lm, None, "rtn", "--resume"), tmp_path / "a")
    _interrupted(monkeypatch, _args(lm, tmp_path / "cut", "rtn"), after=1)
    other = _args(lm, tmp_path / "cut", "rtn", "--resume")
    other[other.index("16")] = "32"
    res = CliRunner().invoke(app, other)
    assert res.exit_code == 2 and "from a run with other settings (group_size differ)" in res.output, res.output
    assert len(res.output.strip().splitlines()) == 1 and not (tmp_path / "cut").exists()
    assert has_train_state(tmp_path / "cut")  # kept: the right settings still resume it
    assert "continues a streamed run (add --stream)" in _refused(
        ["quantize", str(lm), "--weight-only", "int4", "--resume"], tmp_path / "b")


def test_a_fresh_run_clears_an_old_interrupted_one(parents, tmp_path, monkeypatch):  # noqa: F811
    _interrupted(monkeypatch, _args(parents["tied"], tmp_path / "cut", "gptq"), after=2)
    cli_json(_args(parents["tied"], tmp_path / "cut", "gptq"))
    cli_json(_args(parents["tied"], tmp_path / "full", "gptq"))
    _assert_same(tmp_path / "full", tmp_path / "cut")
    assert not train_state_dir(tmp_path / "cut").exists()


@pytest.mark.multiprocess
def test_sigterm_to_a_rank_of_a_divided_calibration_then_resume(tmp_path):
    """Two processes (--nproc 2), a real SIGTERM to one rank once a few shards are recorded: every rank
    kept its own calibration hidden states, the resumed run equals the uninterrupted one."""
    import os
    import signal
    import subprocess
    import time

    from tests.quantize.test_streaming_memory import _write_decoder
    from tests.test_distributed import CLI, rank_processes

    _write_decoder(tmp_path / "deep", layers=16, hidden=256, ffn=768)
    data = tmp_path / "lm"
    data.mkdir()
    (data / "train.txt").write_text("\n".join((POSITIVE + NEGATIVE) * 4), encoding="utf-8")
    for split in ("dev", "test"):  # texts of their own (not the training texts, which a warning would name)
        (data / f"{split}.txt").write_text("\n".join(t[::-1] + split for t in POSITIVE), encoding="utf-8")
    args = [CLI, "--quiet", "--json", *_args(tmp_path / "deep", None, "gptq"), "--calib-samples", "64", "--task", "lm",
            "--data", str(data), "--nproc", "2", "--threads", "1"]
    full = subprocess.run([*args, "--out", str(tmp_path / "full")], capture_output=True, text=True, timeout=300)
    assert full.returncode == 0, full.stderr
    progress = train_state_dir(tmp_path / "cut") / PROGRESS_FILE
    proc = subprocess.Popen([*args, "--out", str(tmp_path / "cut")], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)
    deadline = time.time() + 120
    while proc.poll() is None and time.time() < deadline:
        if progress.is_file() and len(json.loads(progress.read_text())["shards"]) >= 3:
            break
        time.sleep(0.01)
    ranks = rank_processes(proc.pid)
    assert len(ranks) == 2, ranks
    os.kill(ranks[-1], signal.SIGTERM)
    _, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 130 and "continue with --resume" in stderr, stderr
    assert len(stderr.strip().splitlines()) == 1 and not (tmp_path / "cut").exists(), stderr
    recorded = len(_shards(tmp_path / "cut"))
    assert 3 <= recorded < 17, recorded
    resumed = subprocess.run([*args, "--out", str(tmp_path / "cut"), "--resume"], capture_output=True, text=True,
                             timeout=300)
    assert resumed.returncode == 0, resumed.stderr
    _assert_same(tmp_path / "full", tmp_path / "cut")
    assert not train_state_dir(tmp_path / "cut").exists()
