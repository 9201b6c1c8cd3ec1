"""`ernie-compress demo` end to end on demo:sentiment (about 7 minutes on 2 cores): every stage's
output is there, every variant stays within a stated band of the teacher, the INT8 export is verified on logits, and
the report holds its context rows. INT8's speed against its FP32 parent is a benchmark's claim
(`benchmarks/quantization.py`, at ERNIE 3.0 base size), not this test's: at the demo's size both
run in about 4 ms at batch 32 and a shared CI machine's noise swapped them (CI, stop 34).

The bands (docs/benchmarks.md states them): every compressed variant >= teacher - 1.5 accuracy points (the
demo measures +0.8 to +1.4: the student learns from labels and soft labels); the teacher between
0.79 and 0.84 (training is seeded; runs on other CPUs differ by float rounding only)."""

from __future__ import annotations

import json

import pytest

from tests.slow.helpers import cli

VARIANTS = ["teacher", "student", "pruned", "int8"]
BAND_POINTS = 1.5


@pytest.fixture(scope="module")
def demo_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("demo") / "runs" / "demo"
    result = cli("demo", "--out", str(out))
    return out, result, json.loads((out / "report.json").read_text())


def test_every_stage_wrote_its_output(demo_run):
    out, result, _ = demo_run
    assert list(result["stages"]) == ["pretrain", "teacher", "teacher-export", "student", "pruned", "int8",
                                      "int8-onnx", "evaluate"]
    for name in ["pretrain", *VARIANTS]:
        assert (out / name / "model.safetensors").is_file() and (out / name / "compression.json").is_file(), name
    assert (out / "int8" / "quantization_scales.json").is_file()
    for path in ("teacher-export/paddle/model.json", "teacher-export/onnx/model.onnx", "int8-onnx/onnx/model.onnx",
                 "int8-onnx/onnx/model_qdq.onnx", "report.md", "report.json", "report.png"):
        assert (out / path).is_file(), path
    assert not list(out.parent.glob("*.tmp-*")) and not list(out.glob(".*train-state"))


def test_variants_stay_within_the_band_of_the_teacher(demo_run):
    _, _, report = demo_run
    rows = {r["stage"]: r for r in report["rows"]}
    assert list(rows) == VARIANTS
    teacher = rows["teacher"]["score"]
    assert 0.79 <= teacher <= 0.84
    for name in VARIANTS[1:]:
        assert rows[name]["score"] >= teacher - BAND_POINTS / 100, (name, rows[name]["score"], teacher)
    assert rows["int8"]["runtime"] == "onnxruntime/cpu/int8"
    assert rows["pruned"]["non_embedding_parameters"] <= 0.85 * rows["student"]["non_embedding_parameters"]


def test_int8_export_is_verified_on_logits(demo_run):
    out, _, _ = demo_run
    verification = json.loads((out / "int8-onnx" / "manifest.json").read_text())["verification"]
    for model in ("onnx", "onnx_qdq"):
        assert verification[model]["max_relative_diff"] <= 0.02
        assert verification[model]["prediction_agreement"] >= 0.95
    assert verification["samples_from"] == "demo:sentiment:test"


def test_report_shows_the_context_rows(demo_run):
    out, _, report = demo_run
    context = {r["variant"]: r["score"] for r in report["context_rows"]}
    assert context["majority class (not ERNIE, context)"] == pytest.approx(0.5204, abs=1e-4)
    assert context["naive Bayes, char 1-3-grams (not ERNIE, context)"] == pytest.approx(0.8227, abs=1e-4)
    md = (out / "report.md").read_text()
    assert "not ERNIE" in md and "Machine:" in md
