"""Token classification (NER) through train -> evaluate -> export -> runtime on a tiny BIO task."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from ernie_compress.cli import app

runner = CliRunner()

SENTENCES = [("江泽民访问北京", ["B-PER", "I-PER", "I-PER", "O", "O", "B-LOC", "I-LOC"]),
             ("李鹏在上海", ["B-PER", "I-PER", "O", "B-LOC", "I-LOC"]),
             ("新华社报道", ["B-ORG", "I-ORG", "I-ORG", "O", "O"])]


def _bio(path, repeat=1):
    lines = []
    for _ in range(repeat):
        for text, tags in SENTENCES:
            lines += [f"{c} {t}" for c, t in zip(text, tags)] + [""]
    path.write_text("\n".join(lines), encoding="utf-8")


@pytest.fixture(scope="module")
def ner_ckpt(tmp_path_factory):
    root = tmp_path_factory.mktemp("ner")
    data = root / "data"
    data.mkdir()
    _bio(data / "train.txt", repeat=8)
    _bio(data / "dev.txt")
    _bio(data / "test.txt")
    res = runner.invoke(app, ["--quiet", "--json", "train", "--task", "msra-ner", "--data", str(data),
                              "--preset", "tiny", "--out", str(root / "ckpt"), "--epochs", "30",
                              "--lr", "5e-3", "--batch-size", "8"])
    assert res.exit_code == 0, res.output
    return root, json.loads(res.stdout)


def test_ner_trains_and_reports_entity_f1(ner_ckpt):
    _, result = ner_ckpt
    test = result["metrics"]["test"]
    assert set(test) >= {"precision", "recall", "f1", "entities"} and test["entities"] == 5
    assert test["f1"] > 0.5  # memorised three sentences


def test_ner_export_matches_dygraph(ner_ckpt):
    root, result = ner_ckpt
    res = runner.invoke(app, ["--quiet", "--json", "export", str(root / "ckpt"), "--out", str(root / "x")])
    assert res.exit_code == 0, res.output
    for backend in ("onnxruntime", "paddle"):
        ev = runner.invoke(app, ["--quiet", "--json", "evaluate", str(root / "x"), "--backend", backend,
                                 "--batch-sizes", "1", "--iterations", "2", "--seq-len", "8"])
        assert ev.exit_code == 0, ev.output
        out = json.loads(ev.stdout)
        assert out["primary_metric"] == "f1"
        assert out["metrics"]["f1"] == pytest.approx(result["metrics"]["test"]["f1"])
    bench = runner.invoke(app, ["--quiet", "--json", "bench", str(root / "x"), "--concurrency", "2", "--requests", "12"])
    assert bench.exit_code == 0, bench.output
    served = json.loads(bench.stdout)  # per-token outputs are cut back to each request's length
    assert served["predictions_agree"] == 1.0 and served["outputs_max_abs_diff"] < 1e-4


def test_ner_distill_prune_qat_chain(ner_ckpt, tmp_path):
    """Logit KD on token logits, importance on the tagging loss, QAT with KD from the parent."""
    root, result = ner_ckpt
    common = ["--epochs", "3", "--lr", "3e-3", "--batch-size", "8"]
    res = runner.invoke(app, ["--quiet", "--json", "distill", "--teacher", str(root / "ckpt"), "--student", "tiny",
                              "--init-from-teacher", "--hidden-weight", "1", "--out", str(tmp_path / "s"), *common])
    assert res.exit_code == 0, res.output
    distilled = json.loads(res.stdout)
    assert distilled["metric"] == "f1" and distilled["student_metrics"]["entities"] == 5
    res = runner.invoke(app, ["--quiet", "--json", "prune", str(tmp_path / "s"), "--heads", "0.25",
                              "--recover-epochs", "2", "--out", str(tmp_path / "p")])
    assert res.exit_code == 0, res.output
    pruned = json.loads(res.stdout)
    assert pruned["parameters_after"]["non_embedding"] < pruned["parameters_before"]["non_embedding"]
    res = runner.invoke(app, ["--quiet", "--json", "quantize", str(tmp_path / "p"), "--qat", "int8",
                              "--distill-from-parent", "--out", str(tmp_path / "q"), *common])
    assert res.exit_code == 0, res.output
    assert "f1" in json.dumps(json.loads(res.stdout))
    res = runner.invoke(app, ["--quiet", "--json", "export", str(tmp_path / "q"), "--format", "onnx",
                              "--out", str(tmp_path / "x")])
    assert res.exit_code == 0, res.output
    manifest = json.loads((tmp_path / "x" / "manifest.json").read_text())
    assert manifest["outputs"] == ["token_logits"] and manifest["task_kind"] == "token_classification"


def test_ner_ptq_int8_export(ner_ckpt, tmp_path):
    root, _ = ner_ckpt
    res = runner.invoke(app, ["--quiet", "quantize", str(root / "ckpt"), "--ptq", "int8", "--calib-samples", "8",
                              "--out", str(tmp_path / "q")])
    assert res.exit_code == 0, res.output
    res = runner.invoke(app, ["--quiet", "--json", "export", str(tmp_path / "q"), "--format", "onnx",
                              "--out", str(tmp_path / "x")])
    assert res.exit_code == 0, res.output
    assert json.loads(res.stdout)["int8"]["runtime_ops"]
