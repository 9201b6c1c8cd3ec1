"""``ernie-compress search`` end to end on tiny presets: a real 3-trial search writes a frontier whose
recipes rebuild their models, a failing trial is recorded and the search goes on, the median rule stops
a poor student at the first rung, an interrupted search resumes, two workers share a PostgreSQL study,
and bad input (an objective we cannot measure, a budget no candidate meets, an unreachable storage) is
one line and exit code 2."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
from typer.testing import CliRunner

from ernie_compress.cli import app
from tests.helpers import cli_json, write_text_task

runner = CliRunner()
ROOT = Path(__file__).resolve().parents[2]
SMALL = ["--students", "tiny", "--epochs", "1,2", "--prune-params", "0,0.2", "--precisions", "fp32,int8-ptq",
         "--iterations", "3", "--seq-len", "16", "--threads", "1"]


@pytest.fixture(scope="module")
def teacher(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("search")
    data = write_text_task(root / "data")
    cli_json(["train", "--task", "text", "--data", str(data), "--preset", "demo-mini", "--out", str(root / "t"),
              "--epochs", "4", "--lr", "3e-3", "--batch-size", "8"])
    return root / "t"


def _search(teacher: Path, out: Path, *extra: str) -> list[str]:
    return ["search", str(teacher), "--out", str(out), *SMALL, *extra]


def _dominated(point: dict, others: list[dict]) -> bool:
    return any(o["accuracy"] >= point["accuracy"] and o["latency"] <= point["latency"]
               and (o["accuracy"], o["latency"]) != (point["accuracy"], point["latency"]) for o in others)


def _logits(model: Path) -> np.ndarray:
    session = ort.InferenceSession(str(model), providers=["CPUExecutionProvider"])
    ids = np.tile(np.arange(1, 13, dtype=np.int64) % 7 + 1, (2, 1))
    feeds = {i.name: ids if i.name == "input_ids" else np.zeros_like(ids) for i in session.get_inputs()}
    return session.run(None, feeds)[0]


def test_a_search_writes_a_frontier_whose_recipes_rebuild_their_models(teacher, tmp_path):
    result = cli_json(_search(teacher, tmp_path / "s", "--trials", "3"))
    report = json.loads((tmp_path / "s" / "report.json").read_text())
    complete = [t for t in report["trials"] if t["state"] == "complete"]
    assert result["trials"]["complete"] == len(complete) >= 2 and sum(result["trials"].values()) == 3
    frontier = report["frontier"]
    assert frontier and all(not _dominated(p, complete) for p in frontier)
    assert all(_dominated(t, frontier) or t["number"] in {p["number"] for p in frontier} for t in complete)
    for name in ("report.md", "report.png"):
        assert (tmp_path / "s" / name).stat().st_size > 0
    chosen = result["chosen"]
    assert chosen["number"] in {p["number"] for p in frontier}  # no budget: the most accurate point
    assert chosen["accuracy"] == max(p["accuracy"] for p in complete)
    chosen_dir = tmp_path / "s" / "chosen"
    assert json.loads((chosen_dir / "export" / "manifest.json").read_text())["verification"]
    rebuilt = cli_json(["run", str(chosen_dir / "recipe.yaml"), "--out", str(tmp_path / "rebuilt")])
    assert rebuilt["stages"]["export"]["verification"]
    np.testing.assert_array_equal(_logits(tmp_path / "rebuilt" / "export" / "onnx" / "model.onnx"),
                                  _logits(chosen_dir / "export" / "onnx" / "model.onnx"))
    for point in frontier:
        assert Path(point["frontier_recipe"]).read_text(encoding="utf-8") == point["recipe_text"]
        assert "test" in point  # scored on the held-out split after the search
    again = cli_json(_search(teacher, tmp_path / "s", "--trials", "3"))  # a finished study: nothing more runs
    assert again["trials"] == result["trials"]


def test_a_failing_trial_is_recorded_and_the_search_goes_on(teacher, tmp_path, monkeypatch):
    from ernie_compress.search import trial

    real = trial.run_trial

    def planted(target, values, run_dir, peers):
        if run_dir.name == "0001":
            raise RuntimeError("planted failure")
        return real(target, values, run_dir, peers)

    monkeypatch.setattr(trial, "run_trial", planted)
    result = cli_json(_search(teacher, tmp_path / "s", "--trials", "3"))
    report = json.loads((tmp_path / "s" / "report.json").read_text())
    failed = [t for t in report["trials"] if t["state"] == "fail"]
    assert [t["number"] for t in failed] == [1] and "planted failure" in failed[0]["error"]
    assert result["trials"]["complete"] + result["trials"]["pruned"] == 2
    assert "planted failure" in (tmp_path / "s" / "report.md").read_text()


def test_the_median_rule_stops_a_poor_student_before_it_is_exported(teacher, tmp_path):
    from ernie_compress.runtime.backends import RuntimeConfig
    from ernie_compress.search.trial import RungStopped, SearchTarget, run_trial

    data = str(teacher.parent / "data")
    target = SearchTarget(teacher=teacher, task="text", data=data, metric="accuracy", runtime=RuntimeConfig(threads=1))
    values = {"distill": {"student": "tiny", "epochs": 1}, "prune": {"params": None}, "quantize": {"precision": "fp32"}}
    with pytest.raises(RungStopped, match="below the median") as stopped:
        run_trial(target, values, tmp_path / "0000", rung_peers=[100.0, 100.0])
    assert 0 <= stopped.value.student_dev <= 100
    assert (tmp_path / "0000" / "student").is_dir() and not (tmp_path / "0000" / "export").exists()
    kept = run_trial(target, values, tmp_path / "0001", rung_peers=[0.0, 0.0])  # above the median: runs on
    assert Path(kept.export).is_dir() and kept.latency > 0 and kept.size > 0


def test_an_interrupted_search_resumes_and_runs_the_interrupted_trial_again(teacher, tmp_path):
    command = [sys.executable, "-m", "ernie_compress", "--quiet", *_search(teacher, tmp_path / "s", "--trials", "3")]
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    worker = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env, cwd=ROOT)
    deadline = time.time() + 300
    while not (tmp_path / "s" / "trials" / "0001").exists() and time.time() < deadline and worker.poll() is None:
        time.sleep(0.2)
    worker.send_signal(signal.SIGTERM)
    _, err = worker.communicate(timeout=300)
    assert worker.returncode == 2 and "interrupted" in err and "resume" in err, err
    resumed = subprocess.run(command, capture_output=True, text=True, env=env, cwd=ROOT, timeout=600)
    assert resumed.returncode == 0, resumed.stderr
    report = json.loads((tmp_path / "s" / "report.json").read_text())
    interrupted = [t for t in report["trials"] if t.get("interrupted")]
    retried = [t for t in report["trials"] if "retry_of" in t]
    assert len(interrupted) == 1 and [t["retry_of"] for t in retried] == [interrupted[0]["number"]]
    assert retried[0]["params"] == interrupted[0]["params"] and retried[0]["state"] != "fail"
    counted = [t for t in report["trials"] if t["state"] in ("complete", "pruned", "fail") and not t.get("interrupted")]
    assert len(counted) == 3


def test_an_interrupt_that_leaves_the_report_unwritable_is_still_one_line_and_exit_2(teacher, tmp_path, monkeypatch):
    """SIGTERM can land inside a module's first import (CI saw it in matplotlib's, under paddleslim's): the
    half-imported module then breaks the interrupted search's report; the search still says how to resume."""
    from ernie_compress.search import report, trial

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    def half_imported(*args, **kwargs):
        raise AttributeError("module 'matplotlib' has no attribute 'get_data_path'")

    monkeypatch.setattr(trial, "run_trial", interrupted)
    monkeypatch.setattr(report, "write", half_imported)
    res = runner.invoke(app, ["--quiet", *_search(teacher, tmp_path / "s", "--trials", "1")])
    assert res.exit_code == 2 and "interrupted" in res.stderr and "resume" in res.stderr, res.output
    assert len(res.stderr.strip().splitlines()) == 1


def test_two_workers_share_a_postgresql_study(teacher, tmp_path, postgres_url):
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    workers = [subprocess.Popen([sys.executable, "-m", "ernie_compress", "--quiet", "--json",
                                 *_search(teacher, tmp_path / f"w{i}", "--trials", "4", "--storage", postgres_url,
                                          "--study", "shared")],
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env, cwd=ROOT)
               for i in range(2)]
    outputs = [w.communicate(timeout=600) for w in workers]
    assert [w.returncode for w in workers] == [0, 0], [o[1][-2000:] for o in outputs]
    reports = [json.loads((tmp_path / f"w{i}" / "report.json").read_text()) for i in range(2)]
    numbers = [t["number"] for t in reports[1]["trials"]]  # surplus trials (started by a race) are left out
    assert numbers == sorted(set(numbers)) and len(numbers) == 4  # K trials, none run twice
    ran_here = [sorted(int(p.name) for p in (tmp_path / f"w{i}" / "trials").iterdir()) for i in range(2)]
    assert sorted(ran_here[0] + ran_here[1]) == numbers and all(ran_here)  # each worker ran some
    assert [p["number"] for p in reports[0]["frontier"]] == [p["number"] for p in reports[1]["frontier"]]
    assert set(reports[0]) == set(reports[1])  # the same report format as one worker's


def test_bad_search_requests_are_one_line_and_exit_2(teacher, tmp_path):
    cases = [(["--objective", "accuracy,speed", "--trials", "1"], "objective"),
             ([], "--trials or --budget-minutes"),
             (["--precisions", "int3", "--trials", "1"], "precisions"),
             (["--trials", "1", "--storage", "postgresql+psycopg://nobody@127.0.0.1:9/none"],
              "cannot open the study storage"),
             (["--widths", "36", "--trials", "1"], "not a multiple of preset 'tiny''s head size 8"),
             (["--trials", "1", "--latency-ms", "0.000001"], "no candidate meets the budget")]
    for i, (extra, message) in enumerate(cases):
        res = runner.invoke(app, ["--quiet", *_search(teacher, tmp_path / f"bad{i}", *extra)])
        assert res.exit_code == 2 and message in res.stderr, (extra, res.output)
        assert len(res.stderr.strip().splitlines()) == 1, res.stderr
    report = json.loads((tmp_path / "bad5" / "report.json").read_text())  # the budget case still reports
    assert report["closest"]["number"] == 0 and "closest is trial 0" in res.stderr


def test_search_is_a_recipe_stage_reading_the_teacher_the_recipe_trained(teacher, tmp_path):
    data = teacher.parent / "data"
    recipe = tmp_path / "r.yaml"
    recipe.write_text(f"""name: searched
task: text
data: {data}
stages:
  - train: {{name: teacher, preset: demo-mini, epochs: 2, lr: 0.003, batch_size: 8}}
  - search: {{students: [tiny], depths: [1], widths: [48], epochs: [1], prune_params: [0],
              precisions: [fp32, int8-ptq], trials: 2, iterations: 2, seq_len: 16, threads: 1}}
""", encoding="utf-8")
    result = cli_json(["run", str(recipe), "--out", str(tmp_path / "run")])
    searched = result["stages"]["search"]
    assert searched["trials"]["complete"] == 2 and searched["chosen"] is not None
    report = json.loads((tmp_path / "run" / "search" / "report.json").read_text())
    assert report["teacher"] == str((tmp_path / "run" / "teacher").resolve())
    # students between the presets: tiny resized to 1 layer x 48 (depths, widths)
    assert all(t["params"]["distill.student_layers"] == 1 and t["params"]["distill.student_hidden"] == 48
               for t in report["trials"])
    student = json.loads((tmp_path / "run" / "search" / "trials" / "0000" / "student" / "config.json").read_text())
    assert (student["num_hidden_layers"], student["hidden_size"]) == (1, 48)
