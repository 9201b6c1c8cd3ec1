"""A short recipe with tiny presets runs end to end; re-running resumes; the report is consistent."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from ernie_compress.cli import app
from tests.helpers import write_text_task

runner = CliRunner()


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("pipeline")
    data = write_text_task(root / "data")
    recipe = root / "tiny.yaml"
    recipe.write_text(f"""\
name: tiny
task: text
data: {data}
stages:
  - train: {{name: teacher, preset: tiny, epochs: 4, lr: 0.003, batch_size: 8}}
  - distill: {{name: student, student: tiny, epochs: 1, batch_size: 8}}
  - prune: {{name: pruned, params: 0.15, recover_epochs: 1, batch_size: 8, max_steps: 3}}
  - quantize: {{name: int8, qat: int8, max_steps: 3, batch_size: 8}}
  - export: {{name: int8-onnx, format: onnx}}
  - evaluate: {{batch_sizes: [1, 4], seq_len: 16, iterations: 2, warmup: 1}}
""")
    out = root / "run"
    res = runner.invoke(app, ["--quiet", "--json", "run", str(recipe), "--out", str(out)])
    assert res.exit_code == 0, res.output
    return recipe, out, json.loads(res.stdout)


def test_every_stage_wrote_its_output(finished_run):
    _, out, result = finished_run
    for name in ("teacher", "student", "pruned", "int8", "int8-onnx"):
        assert (out / name).is_dir(), name
    assert (out / "recipe.yaml").is_file()
    assert list(result["stages"]) == ["teacher", "student", "pruned", "int8", "int8-onnx", "evaluate"]


def test_report_files_and_json_match_the_table(finished_run):
    _, out, result = finished_run
    for name in ("report.json", "report.md", "report.png"):
        assert (out / name).is_file()
    report = json.loads((out / "report.json").read_text())
    assert [r["stage"] for r in report["rows"]] == ["teacher", "student", "pruned", "int8"]
    md = (out / "report.md").read_text()
    for row in report["rows"]:
        assert f"{row['score']:.4f}" in md and row["variant"] in md
    assert report["rows"][-1]["runtime"].endswith("int8")
    assert "loss_interval" not in report["rows"][0] and "example_stats" not in report["rows"][0]
    for row in report["rows"][1:]:  # a 95% bootstrap interval around each variant's loss
        low, high = row["loss_interval"]
        assert low <= row["loss_points"] <= high
        assert f"{row['loss_points']:+.2f} ({low:+.2f} to {high:+.2f})" in md
    # context rows: majority class (the tiny test split is 4 pos / 4 neg) and naive Bayes, labelled
    context = {r["variant"]: r["score"] for r in report["context_rows"]}
    assert list(context) == ["majority class (not ERNIE, context)", "naive Bayes, char 1-3-grams (not ERNIE, context)"]
    assert context["majority class (not ERNIE, context)"] == 0.5
    assert all(f"| {name} |" in md for name in context)
    assert f"{report['machine']['cpu']}" in md and "paddlepaddle 3.3.1" in md
    shown = runner.invoke(app, ["report", str(out)])
    assert shown.exit_code == 0 and "int8" in shown.stdout


def test_rerun_skips_finished_stages(finished_run):
    recipe, out, _ = finished_run
    before = (out / "teacher" / "model.safetensors").stat().st_mtime_ns
    res = runner.invoke(app, ["run", str(recipe), "--out", str(out)])
    assert res.exit_code == 0, res.output
    assert "done earlier, skipped" in res.stderr
    assert (out / "teacher" / "model.safetensors").stat().st_mtime_ns == before


def test_report_of_a_missing_run(tmp_path):
    res = runner.invoke(app, ["report", str(tmp_path)])
    assert res.exit_code == 2 and "no report.json" in res.stderr


@pytest.mark.parametrize("task", ["qa", "ner", "lm"])
def test_recipes_run_for_every_task_kind(tmp_path, task):
    """QA (CMRC2018 file), NER (BIO files) and an ERNIE 4.5 causal LM run as recipes; the report
    names the task's metric."""
    from tests.helpers import NEGATIVE, POSITIVE, write_cmrc_task
    from tests.test_ner_path import _bio

    if task == "qa":
        data, name, preset, metric = write_cmrc_task(tmp_path / "data", paragraphs=8), "cmrc2018", "tiny", "f1"
    elif task == "ner":
        data = tmp_path / "data"
        data.mkdir()
        for split, repeat in (("train", 4), ("dev", 1), ("test", 1)):
            _bio(data / f"{split}.txt", repeat)
        name, preset, metric = "msra-ner", "tiny", "f1"
    else:
        data = tmp_path / "data"
        data.mkdir()
        for split in ("train", "dev", "test"):
            (data / f"{split}.txt").write_text("\n".join(POSITIVE + NEGATIVE), encoding="utf-8")
        name, preset, metric = "lm", "ernie45-tiny", "perplexity"
    recipe = tmp_path / f"{task}.yaml"
    recipe.write_text(f"""\
task: {name}
data: {data}
stages:
  - train: {{name: teacher, preset: {preset}, epochs: 2, lr: 0.003, batch_size: 8, max_seq_len: 32}}
  - quantize: {{name: int8, ptq: int8, calib_samples: 8}}
  - export: {{name: int8-onnx, format: onnx}}
  - evaluate: {{batch_sizes: [1], seq_len: 16, iterations: 2, warmup: 1}}
""")
    res = runner.invoke(app, ["--quiet", "--json", "run", str(recipe), "--out", str(tmp_path / "run")])
    assert res.exit_code == 0, res.output
    report = json.loads((tmp_path / "run" / "report.json").read_text())
    assert {r["metric"] for r in report["rows"]} == {metric}
    assert f"| {metric} |" in (tmp_path / "run" / "report.md").read_text()


def test_force_redoes_a_stage_that_left_a_training_state(tmp_path):
    """--force removes an interrupted stage's state before the stage looks for one to resume."""
    data = write_text_task(tmp_path / "data")
    recipe = tmp_path / "one.yaml"
    recipe.write_text(f"task: text\ndata: {data}\nstages:\n"
                      "  - train: {name: teacher, preset: tiny, epochs: 1, batch_size: 8}\n")
    out = tmp_path / "run"
    assert runner.invoke(app, ["--quiet", "run", str(recipe), "--out", str(out)]).exit_code == 0
    state = out / ".teacher.train-state" / "train_state.pdstate"
    state.parent.mkdir()
    state.write_bytes(b"left by an interrupted attempt")
    res = runner.invoke(app, ["--quiet", "run", str(recipe), "--out", str(out), "--force"])
    assert res.exit_code == 0, res.output
    assert not state.parent.exists() and (out / "teacher" / "model.safetensors").is_file()


def test_an_moe_recipe_prunes_experts_quantizes_exports_distils_and_reports_active_parameters(tmp_path):
    """The ERNIE 4.5 MoE chain as a recipe (tiny): the report has a row per checkpoint, with active
    parameters for the MoE ones, and the pruned and quantized exports run their experts as the
    export chose (QMoE for int4)."""
    from tests.helpers import NEGATIVE, POSITIVE

    data = tmp_path / "data"
    data.mkdir()
    for split in ("train", "dev", "test"):
        (data / f"{split}.txt").write_text("\n".join(POSITIVE + NEGATIVE), encoding="utf-8")
    recipe = tmp_path / "moe.yaml"
    recipe.write_text(f"""\
task: lm
data: {data}
stages:
  - train: {{name: moe, preset: ernie45-moe-tiny, epochs: 2, lr: 0.003, batch_size: 8, max_seq_len: 32}}
  - prune: {{name: experts, experts: 0.5, recover_epochs: 1, batch_size: 8}}
  - quantize: {{name: w4, weight_only: int4, group_size: 16}}
  - export: {{name: w4-onnx, format: onnx}}
  - distill: {{name: dense, teacher: moe, student: ernie45-tiny, epochs: 1, batch_size: 8}}
  - evaluate: {{batch_sizes: [1], seq_len: 16, iterations: 2, warmup: 1}}
""")
    res = runner.invoke(app, ["--quiet", "--json", "run", str(recipe), "--out", str(tmp_path / "run")])
    assert res.exit_code == 0, res.output
    report = json.loads((tmp_path / "run" / "report.json").read_text())
    rows = {r["stage"]: r for r in report["rows"]}
    assert set(rows) == {"moe", "experts", "w4", "dense"}
    assert rows["experts"]["active_parameters"] < rows["moe"]["active_parameters"] < rows["moe"]["parameters"]
    assert "active_parameters" not in rows["dense"]
    assert "active params" in (tmp_path / "run" / "report.md").read_text()
    manifest = json.loads((tmp_path / "run" / "w4-onnx" / "manifest.json").read_text())
    assert manifest["files"]["decoder"]["kernels"]["QMoE"] == 2
