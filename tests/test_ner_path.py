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


def test_ner_unsupported_stages_say_so(ner_ckpt, tmp_path):
    root, _ = ner_ckpt
    for args, message in ((["distill", "--teacher", str(root / "ckpt"), "--student", "tiny"], "not supported yet"),
                          (["prune", str(root / "ckpt"), "--heads", "0.2"], "sequence-classification models so far"),
                          (["quantize", str(root / "ckpt"), "--qat", "int8", "--distill-from-parent"], "not supported")):
        res = runner.invoke(app, ["--quiet", *args, "--out", str(tmp_path / "o")])
        assert res.exit_code == 2 and message in res.stderr, (args, res.stderr)


def test_ner_ptq_int8_export(ner_ckpt, tmp_path):
    root, _ = ner_ckpt
    res = runner.invoke(app, ["--quiet", "quantize", str(root / "ckpt"), "--ptq", "int8", "--calib-samples", "8",
                              "--out", str(tmp_path / "q")])
    assert res.exit_code == 0, res.output
    res = runner.invoke(app, ["--quiet", "--json", "export", str(tmp_path / "q"), "--format", "onnx",
                              "--out", str(tmp_path / "x")])
    assert res.exit_code == 0, res.output
    assert json.loads(res.stdout)["int8"]["runtime_ops"]
