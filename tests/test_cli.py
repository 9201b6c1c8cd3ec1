"""The command line: --help for every command, one real run per command, bad input -> exit 2."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
from typer.testing import CliRunner

from ernie_compress.cli import app

runner = CliRunner()
COMMANDS = ["train", "evaluate", "info"]


@pytest.mark.parametrize("command", [None] + COMMANDS)
def test_help(command):
    args = ["--help"] if command is None else [command, "--help"]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    assert "Usage" in result.output


def test_help_does_not_import_paddle():
    code = ("import sys; from typer.testing import CliRunner; from ernie_compress.cli import app; "
            "r = CliRunner().invoke(app, ['train', '--help']); assert r.exit_code == 0; "
            "assert 'paddle' not in sys.modules and 'onnxruntime' not in sys.modules, 'imported'")
    subprocess.run([sys.executable, "-c", code], check=True)  # its time is measured in benchmarks/cli_startup.py


def test_the_command_list_imports_no_stage_module_nor_numpy():
    """`ernie-compress --help` lists the commands from the stage declarations alone: no stage module,
    NumPy, YAML or runtime is imported (what keeps it fast; benchmarks/cli_startup.py times it)."""
    code = ("import sys; from typer.testing import CliRunner; from ernie_compress.cli import app; "
            "r = CliRunner().invoke(app, ['--help']); assert r.exit_code == 0 and 'quantize' in r.output; "
            "heavy = ('numpy', 'yaml', 'paddle', 'onnx', 'onnxruntime', 'safetensors', 'ernie_compress.stages.train', "
            "'ernie_compress.runtime', 'ernie_compress.generate'); "
            "assert not [m for m in heavy if m in sys.modules], [m for m in heavy if m in sys.modules]")
    subprocess.run([sys.executable, "-c", code], check=True)


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """One real `train` run on a tiny task; later tests evaluate and inspect its checkpoint."""
    from tests.helpers import write_text_task

    root = tmp_path_factory.mktemp("cli")
    data = write_text_task(root / "data", train_repeats=4)
    out = root / "ckpt"
    result = runner.invoke(app, ["--quiet", "train", "--task", "text", "--data", str(data),
                                 "--preset", "tiny", "--out", str(out), "--epochs", "8",
                                 "--lr", "3e-3", "--batch-size", "8", "--json"])
    assert result.exit_code == 0, result.output
    return out, data, json.loads(result.stdout)


def test_train_writes_a_checkpoint_that_learned(trained):
    out, _, result = trained
    assert result["out"] == str(out)
    assert {"config.json", "model.safetensors", "vocab.txt", "compression.json"} <= {p.name for p in out.iterdir()}
    assert result["metrics"]["test"]["accuracy"] >= 0.75  # 8 held-out sentences made of the training words
    lineage = json.loads((out / "compression.json").read_text())
    assert lineage["stages"][0]["name"] == "train" and lineage["stages"][0]["config"]["type"] == "TrainConfig"


def test_evaluate_reproduces_the_training_metric(trained):
    out, _, result = trained
    ev = runner.invoke(app, ["--quiet", "evaluate", str(out), "--json"])
    assert ev.exit_code == 0, ev.output
    assert json.loads(ev.stdout)["metrics"]["accuracy"] == result["metrics"]["test"]["accuracy"]
    table = runner.invoke(app, ["evaluate", str(out)])
    assert table.exit_code == 0 and "accuracy" in table.stdout


def test_info_reports_parameters_and_lineage(trained):
    out, _, result = trained
    res = runner.invoke(app, ["info", str(out), "--json"])
    assert res.exit_code == 0, res.output
    info = json.loads(res.stdout)
    assert info["heads_per_layer"] == [4, 4] and info["parameters"] == result["parameters"]
    assert info["lineage"][0]["name"] == "train"
    assert runner.invoke(app, ["info", str(out)]).exit_code == 0


def test_fine_tune_from_checkpoint_keeps_lineage(trained, tmp_path):
    out, data, _ = trained
    res = runner.invoke(app, ["--quiet", "--json", "train", "--from", str(out), "--out", str(tmp_path / "ft"),
                              "--max-steps", "2", "--batch-size", "8"])
    assert res.exit_code == 0, res.output
    lineage = json.loads((tmp_path / "ft" / "compression.json").read_text())
    assert [s["name"] for s in lineage["stages"]] == ["train", "train"]
    assert lineage["stages"][1]["parent"]["path"] == str(out)


def _corrupt_weights(ckpt, tmp_path):
    import shutil

    bad = tmp_path / "bad"
    shutil.copytree(ckpt, bad)
    data = (bad / "model.safetensors").read_bytes()
    (bad / "model.safetensors").write_bytes(data[: len(data) // 2])
    return bad


def _wrong_config(ckpt, tmp_path):
    import shutil

    bad = tmp_path / "badcfg"
    shutil.copytree(ckpt, bad)
    cfg = json.loads((bad / "config.json").read_text())
    cfg["hidden_size"] = 64
    (bad / "config.json").write_text(json.dumps(cfg))
    return bad


@pytest.mark.parametrize("case", [
    "missing_path", "corrupt_weights", "wrong_config", "empty_data", "unknown_label", "existing_out",
    "unknown_preset", "unknown_task", "bad_epochs",
])
def test_bad_input_gives_one_line_and_exit_2(trained, tmp_path, case):
    out, data, _ = trained
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "train.jsonl").write_text("")
    (empty / "dev.jsonl").write_text("")
    odd = tmp_path / "odd"
    odd.mkdir()
    (odd / "train.jsonl").write_text('{"text": "好", "label": "pos"}\n{"text": "差", "label": "neg"}\n')
    (odd / "dev.jsonl").write_text('{"text": "好", "label": "weird"}\n')
    new = str(tmp_path / "new")
    args = {
        "missing_path": ["evaluate", str(tmp_path / "nope")],
        "corrupt_weights": ["evaluate", str(_corrupt_weights(out, tmp_path)), "--ignore-integrity"]
        if False else ["info", str(_corrupt_weights(out, tmp_path))],
        "wrong_config": ["evaluate", str(_wrong_config(out, tmp_path))],
        "empty_data": ["train", "--task", "text", "--data", str(empty), "--preset", "tiny", "--out", new],
        "unknown_label": ["train", "--task", "text", "--data", str(odd), "--preset", "tiny", "--out", new],
        "existing_out": ["train", "--task", "text", "--data", str(data), "--preset", "tiny", "--out", str(out)],
        "unknown_preset": ["train", "--task", "text", "--data", str(data), "--preset", "huge", "--out", new],
        "unknown_task": ["evaluate", str(out), "--task", "nosuch"],
        "bad_epochs": ["train", "--task", "text", "--data", str(data), "--preset", "tiny", "--out", new,
                       "--epochs", "-1"],
    }[case]
    result = runner.invoke(app, ["--quiet"] + args)
    assert result.exit_code == 2, result.output
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    assert "Traceback" not in result.output
    assert not (tmp_path / "new").exists()
    assert not [p for p in tmp_path.iterdir() if ".tmp-" in p.name]


def test_integrity_mismatch_is_refused_unless_ignored(trained, tmp_path):
    import shutil

    from safetensors.numpy import load_file, save_file

    out, _, _ = trained
    changed = tmp_path / "changed"
    shutil.copytree(out, changed)
    state = load_file(str(changed / "model.safetensors"))
    state["classifier.bias"] = state["classifier.bias"] + 1.0
    save_file(state, str(changed / "model.safetensors"))
    res = runner.invoke(app, ["--quiet", "info", str(changed)])
    assert res.exit_code == 2 and "does not match" in res.stderr and "--ignore-integrity" in res.stderr
    res = runner.invoke(app, ["--quiet", "--ignore-integrity", "info", str(changed)])
    assert res.exit_code == 0, res.output


def test_trust_pickle_loads_a_pickle_with_other_globals(trained, tmp_path):
    import fractions
    import pickle

    from safetensors.numpy import load_file

    out, _, _ = trained
    legacy = tmp_path / "legacy"
    legacy.mkdir()
    for name in ("config.json", "vocab.txt"):
        (legacy / name).write_bytes((out / name).read_bytes())
    state = dict(load_file(str(out / "model.safetensors")))
    state["note"] = fractions.Fraction(1, 3)  # a harmless non-numpy global
    (legacy / "model_state.pdparams").write_bytes(pickle.dumps(state))
    res = runner.invoke(app, ["--quiet", "info", str(legacy)])
    assert res.exit_code == 2 and "--trust-pickle" in res.stderr
    res = runner.invoke(app, ["--quiet", "--trust-pickle", "evaluate", str(legacy), "--json"])
    assert res.exit_code == 0, res.output


def test_global_options_work_after_the_command_too(trained):
    out, _, _ = trained
    before = runner.invoke(app, ["--quiet", "--json", "info", str(out)])
    after = runner.invoke(app, ["info", str(out), "--quiet", "--json"])
    assert after.exit_code == 0, after.output
    assert json.loads(after.stdout) == json.loads(before.stdout)
    debug = runner.invoke(app, ["info", str(out / "missing"), "--debug"])
    assert debug.exit_code != 2 and debug.exception is not None  # --debug after the command: the traceback
    plain = runner.invoke(app, ["info", str(out / "missing")])
    assert plain.exit_code == 2 and plain.stderr.startswith("error: ")


def test_option_errors_name_the_flag_the_user_typed(tmp_path):
    res = runner.invoke(app, ["train", "--preset", "tiny", "--from", str(tmp_path), "--out", str(tmp_path / "o"),
                              "--task", "demo:sentiment"])
    assert res.exit_code == 2 and "pass exactly one of --preset (a fresh model) and --from" in res.stderr
    res = runner.invoke(app, ["train", "--preset", "tiny", "--out", str(tmp_path / "o"), "--epochs", "-1"])
    assert res.exit_code == 2 and res.stderr.strip() == "error: --epochs must be >= 0, got -1"
    assert not (tmp_path / "o").exists()
