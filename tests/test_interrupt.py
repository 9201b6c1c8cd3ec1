"""A real SIGTERM to a real training subprocess leaves no output; --resume runs only the steps that
were left and reaches the same weights as an uninterrupted run with the same seed."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
from safetensors.numpy import load_file

from tests.helpers import write_text_task

ARGS = ["--quiet", "--json", "train", "--task", "text", "--preset", "tiny", "--epochs", "60",
        "--batch-size", "8", "--lr", "3e-3", "--save-every", "7", "--seed", "5"]


def _cli(*args):
    return [sys.executable, "-m", "ernie_compress.cli", *args]


def _run_full_then_cut(args, tmp_path):
    """Run ``args`` to the end into ``full``; run it again into ``cut`` and SIGTERM it once its
    first training state is saved; return (full run, cut run's stderr, cut run's exit code, cut dir)."""
    env = dict(os.environ, PYTHONPATH=os.getcwd())
    full = subprocess.run(_cli(*args, "--out", str(tmp_path / "full")), capture_output=True, text=True, env=env)
    assert full.returncode == 0, full.stderr
    out = tmp_path / "cut"
    state = tmp_path / ".cut.train-state" / "train_state.pdstate"
    proc = subprocess.Popen(_cli(*args, "--out", str(out)), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, env=env)
    deadline = time.time() + 120
    while not state.exists() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.01)
    proc.send_signal(signal.SIGTERM)
    _, stderr = proc.communicate(timeout=60)
    return full, stderr, proc.returncode, out


def _saved_step(tmp_path) -> int:
    """The step at which the cut run's training state was saved."""
    from ernie_compress.paddle_env import import_paddle

    return int(import_paddle().load(str(tmp_path / ".cut.train-state" / "train_state.pdstate"))["step"])


def _resume_and_compare(args, tmp_path, out, full):
    """Resume the cut run: it executes only the steps after the saved one (counted by the loop, so a
    resume that restarted from step 0 fails here even though training is deterministic), its weights
    equal the uninterrupted run's, and the state is removed."""
    env = dict(os.environ, PYTHONPATH=os.getcwd())
    saved_step = _saved_step(tmp_path)
    resumed = subprocess.run(_cli(*args, "--out", str(out), "--resume"), capture_output=True, text=True, env=env)
    assert resumed.returncode == 0, resumed.stderr
    total = json.loads(full.stdout)["steps"]
    assert json.loads(full.stdout)["steps_run"] == total
    assert 0 < saved_step < total
    assert json.loads(resumed.stdout)["steps"] == total
    assert json.loads(resumed.stdout)["steps_run"] == total - saved_step
    a, b = load_file(str(tmp_path / "full" / "model.safetensors")), load_file(str(out / "model.safetensors"))
    for name in a:
        np.testing.assert_allclose(a[name], b[name], atol=1e-5, err_msg=name)
    assert not (tmp_path / ".cut.train-state").exists()  # removed once the run finished
    return resumed


@pytest.mark.multiprocess
def test_sigterm_then_resume_matches_uninterrupted(tmp_path):
    data = write_text_task(tmp_path / "data")
    args = ARGS + ["--data", str(data)]
    full, stderr, code, out = _run_full_then_cut(args, tmp_path)
    assert code == 130, stderr
    assert "--resume" in stderr and stderr.count("\n") == 1
    assert not out.exists()
    assert not [p for p in tmp_path.iterdir() if ".tmp-" in p.name]  # no half-written output
    resumed = _resume_and_compare(args, tmp_path, out, full)
    assert json.loads(resumed.stdout)["metrics"] == json.loads(full.stdout)["metrics"]


def test_resume_without_state_is_an_error(tmp_path):
    data = write_text_task(tmp_path / "data")
    res = subprocess.run(_cli(*ARGS, "--data", str(data), "--out", str(tmp_path / "x"), "--resume"),
                         capture_output=True, text=True, env=dict(os.environ, PYTHONPATH=os.getcwd()))
    assert res.returncode == 2 and "nothing to resume" in res.stderr


def test_same_seed_same_metrics(tmp_path):
    """Determinism: the same command twice gives the same result."""
    data = write_text_task(tmp_path / "data")
    env = dict(os.environ, PYTHONPATH=os.getcwd())
    runs = [subprocess.run(_cli(*ARGS[:-4], "--max-steps", "20", "--seed", "3", "--data", str(data),
                                "--out", str(tmp_path / f"r{i}")), capture_output=True, text=True, env=env)
            for i in range(2)]
    assert all(r.returncode == 0 for r in runs), runs[0].stderr
    a, b = (load_file(str(tmp_path / f"r{i}" / "model.safetensors")) for i in range(2))
    assert all(np.array_equal(a[k], b[k]) for k in a)


STAGES = {  # stage arguments after the parent checkpoint; each trains long enough to be cut
    "distill": lambda parent: ["distill", "--teacher", str(parent), "--student", "tiny", "--hidden-weight", "1",
                               "--epochs", "30", "--no-latency"],
    "prune": lambda parent: ["prune", str(parent), "--heads", "0.25", "--recover-epochs", "30", "--no-latency"],
    "qat": lambda parent: ["quantize", str(parent), "--qat", "int8", "--epochs", "30"],
}


@pytest.mark.multiprocess
@pytest.mark.parametrize("stage", sorted(STAGES))
def test_training_stages_resume_after_sigterm(tmp_path, stage):
    """distill (with its hidden-state projection), prune recovery and QAT save and resume too."""
    from tests.helpers import train_tiny_checkpoint

    parent, _ = train_tiny_checkpoint(tmp_path, epochs=2)
    args = ["--quiet", "--json", *STAGES[stage](parent), "--batch-size", "8", "--lr", "1e-3",
            "--save-every", "5", "--seed", "9"]
    full, stderr, code, out = _run_full_then_cut(args, tmp_path)
    assert code == 130 and "--resume" in stderr, stderr
    assert not out.exists()
    _resume_and_compare(args, tmp_path, out, full)
