"""demo:ner (People's Daily 1998) through a short chain on the real data: train a tagger for 300
steps, post-training INT8, ONNX export, evaluation through ONNX Runtime (about 3 minutes)."""

from __future__ import annotations

import pytest

from tests.slow.helpers import cli


@pytest.fixture(scope="module")
def chain(tmp_path_factory):
    root = tmp_path_factory.mktemp("ner")
    trained = cli("train", "--task", "demo:ner", "--preset", "demo-teacher", "--max-steps", "300",
                  "--batch-size", "32", "--lr", "5e-4", "--out", str(root / "teacher"))
    quantized = cli("quantize", str(root / "teacher"), "--ptq", "int8", "--out", str(root / "int8"))
    exported = cli("export", str(root / "int8"), "--format", "onnx", "--out", str(root / "int8-onnx"))
    evaluated = cli("evaluate", str(root / "int8-onnx"), "--batch-sizes", "32", "--iterations", "5")
    return trained, quantized, exported, evaluated


def test_the_tagger_learned_entities(chain):
    trained, _, _, _ = chain
    test = trained["metrics"]["test"]
    assert test["examples"] == 4273 and test["entities"] == 4920  # the held-out numbers docs/data.md states
    assert test["f1"] >= 0.12  # 0.177 measured after 300 steps; tagging every character O gives 0


def test_int8_keeps_the_fp32_f1(chain):
    trained, quantized, _, evaluated = chain
    fp32 = trained["metrics"]["test"]["f1"]
    assert abs(quantized["metrics"]["test"]["f1"] - fp32) <= 0.02
    assert evaluated["precision"] == "int8" and evaluated["backend"] == "onnxruntime"
    assert abs(evaluated["delta_points"]) <= 0.5  # ONNX Runtime's integer kernels vs fake-quant Paddle


def test_the_int8_export_is_verified_on_token_logits(chain):
    _, _, exported, _ = chain
    for model in ("onnx", "onnx_qdq"):
        assert exported["verification"][model]["max_relative_diff"] <= 0.02
