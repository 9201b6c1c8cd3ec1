"""Extractive QA (CMRC2018 format) through every stage on a tiny model and a tiny file.

The contexts (21 characters) do not fit the 24-token window beside their question, so every stage
also runs the document striding and the across-window answer choice.
"""

from __future__ import annotations

import json

import pytest

from tests.helpers import cli_json, write_cmrc_task


@pytest.fixture(scope="module")
def qa_ckpt(tmp_path_factory):
    root = tmp_path_factory.mktemp("qa")
    data = write_cmrc_task(root / "data")
    result = cli_json(["train", "--task", "cmrc2018", "--data", str(data), "--preset", "tiny", "--max-seq-len", "24",
                      "--out", str(root / "ckpt"), "--epochs", "12", "--lr", "5e-3", "--batch-size", "16"])
    return root, result


def test_qa_trains_and_reports_em_and_f1(qa_ckpt):
    _, result = qa_ckpt
    test = result["metrics"]["test"]
    assert set(test) == {"exact_match", "f1", "questions"} and test["questions"] == 12
    assert test["f1"] >= test["exact_match"] and test["f1"] > 0.3  # learned where people live


def test_qa_export_runs_the_task_metric_on_both_runtimes(qa_ckpt):
    root, result = qa_ckpt
    cli_json(["export", str(root / "ckpt"), "--out", str(root / "x")])
    manifest = json.loads((root / "x" / "manifest.json").read_text())
    assert manifest["outputs"] == ["span_logits"] and manifest["task_kind"] == "question_answering"
    for backend in ("onnxruntime", "paddle"):
        out = cli_json(["evaluate", str(root / "x"), "--backend", backend, "--batch-sizes", "1", "--iterations", "2",
                       "--seq-len", "16"])
        assert out["primary_metric"] == "f1"
        assert out["metrics"]["f1"] == pytest.approx(result["metrics"]["test"]["f1"])
        assert out["metrics"]["exact_match"] == pytest.approx(result["metrics"]["test"]["exact_match"])


def test_qa_distill_prune_quantize_export_chain(qa_ckpt, tmp_path):
    root, _ = qa_ckpt
    common = ["--epochs", "2", "--lr", "3e-3", "--batch-size", "16"]
    distilled = cli_json(["distill", "--teacher", str(root / "ckpt"), "--student", "tiny", "--init-from-teacher",
                         "--attention-weight", "1", "--out", str(tmp_path / "s"), *common])
    assert distilled["metric"] == "f1" and "exact_match" in distilled["student_metrics"]
    pruned = cli_json(["prune", str(tmp_path / "s"), "--heads", "0.25", "--recover-epochs", "1",
                      "--out", str(tmp_path / "p")])
    assert pruned["parameters_after"]["non_embedding"] < pruned["parameters_before"]["non_embedding"]
    cli_json(["quantize", str(tmp_path / "p"), "--qat", "int8", "--distill-from-parent", "--out", str(tmp_path / "q"),
             *common])
    exported = cli_json(["export", str(tmp_path / "q"), "--format", "onnx", "--out", str(tmp_path / "x")])
    assert exported["int8"]["runtime_ops"]
    out = cli_json(["evaluate", str(tmp_path / "x"), "--batch-sizes", "1", "--iterations", "2", "--seq-len", "16"])
    assert out["precision"] == "int8" and out["delta_points"] == 0  # the same answers as fake-quant Paddle


def test_qa_ptq_and_fp16(qa_ckpt, tmp_path):
    root, _ = qa_ckpt
    cli_json(["quantize", str(root / "ckpt"), "--ptq", "int8", "--calib-samples", "16", "--out", str(tmp_path / "q")])
    cli_json(["quantize", str(root / "ckpt"), "--fp16", "--out", str(tmp_path / "h")])
    exported = cli_json(["export", str(tmp_path / "h"), "--format", "onnx", "--out", str(tmp_path / "x")])
    assert exported["verification"]["onnx"]["passed"]
