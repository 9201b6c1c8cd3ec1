"""Every stage from the CLI on the checkpoints users have: a PaddleNLP 2-label classifier (default labels,
no id2label in config.json) and a PaddleFormers ERNIE 4.5 save (sharded, Hugging Face layout); what we
hand back loads in the library again (``prune --uniform --layout paddlenlp``, ``export --layout
paddleformers``) with our logits."""

from __future__ import annotations

import json

import numpy as np
import pytest
from tests.interop.helpers import assert_close, run_reference
from ours import REAL, outputs, vocab_tokenizer

pytestmark = pytest.mark.interop

CHARS = [chr(0x4E00 + i) for i in range(40)]


def _texts(n: int, seed: int) -> list[str]:
    rng = np.random.default_rng(seed)
    return ["".join(rng.choice(CHARS, size=int(rng.integers(4, 12)))) for _ in range(n)]


def _cli(args):
    from typer.testing import CliRunner

    from ernie_compress.cli import app

    res = CliRunner().invoke(app, ["--quiet", "--json", *args])
    assert res.exit_code == 0, res.output
    return json.loads(res.stdout)


def test_every_stage_runs_on_a_paddlenlp_two_label_classifier(tmp_path):
    run_reference("paddlenlp", "save", "paddlenlp", "cls2_default_labels", str(tmp_path / "ref"))
    model = tmp_path / "ref" / "model"
    vocab_tokenizer(100).save(model)  # vocab.txt, as the library's tokenizer save_pretrained leaves it
    data = tmp_path / "data"
    data.mkdir()
    for split, seed in (("train", 0), ("dev", 1), ("test", 2)):  # the labels PaddleNLP's defaults name
        rows = [{"text": t, "label": f"LABEL_{i % 2}"} for i, t in enumerate(_texts(24, seed))]
        (data / f"{split}.jsonl").write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))
    task = ["--task", "text", "--data", str(data)]
    short = ["--batch-size", "8", "--max-steps", "3"]
    _cli(["train", "--from", str(model), *task, "--out", str(tmp_path / "ft"), "--epochs", "1", *short])
    _cli(["distill", "--teacher", str(model), "--student", "tiny", *task, "--out", str(tmp_path / "st"),
          "--epochs", "1", "--no-latency", *short])
    _cli(["quantize", str(model), "--qat", "int8", *task, "--out", str(tmp_path / "q"), *short])
    _cli(["export", str(model), "--format", "onnx", "--out", str(tmp_path / "x")])
    pruned = _cli(["prune", str(model), "--ffn", "0.25", "--uniform", "--layout", "paddlenlp", *task,
                   "--recover-epochs", "1", "--no-latency", "--out", str(tmp_path / "p"), *short])
    assert pruned["ffn_after"] == [48, 48]
    saved = json.loads((tmp_path / "p" / "config.json").read_text())
    assert saved["intermediate_size"] == 48 and "intermediate_size_per_layer" not in saved
    ours, _ = outputs(tmp_path / "p")
    run_reference("paddlenlp", "load", "paddlenlp", "ErnieForSequenceClassification", str(tmp_path / "p"),
                  str(tmp_path / "theirs.npy"))
    assert_close(ours, np.load(tmp_path / "theirs.npy"))


def test_every_stage_runs_on_a_paddleformers_ernie45_save(tmp_path):
    run_reference("paddleformers", "save", "paddleformers", "gqa_tied_sharded", str(tmp_path / "ref"))
    model = tmp_path / "ref" / "model"
    vocab_tokenizer(64).save(model)
    data = tmp_path / "lm"
    data.mkdir()
    for split, seed in (("train", 0), ("dev", 1), ("test", 2)):
        (data / f"{split}.txt").write_text("\n".join(_texts(24, seed)) + "\n", encoding="utf-8")
    task = ["--task", "lm", "--data", str(data)]
    short = ["--batch-size", "8", "--max-steps", "3"]
    _cli(["train", "--from", str(model), *task, "--out", str(tmp_path / "ft"), "--epochs", "1", *short])
    _cli(["distill", "--teacher", str(model), "--student", "ernie45-tiny", *task, "--out", str(tmp_path / "st"),
          "--epochs", "1", "--no-latency", *short])
    _cli(["quantize", str(model), "--ptq", "int8", "--calib-samples", "8", *task, "--out", str(tmp_path / "q")])
    _cli(["prune", str(model), "--heads", "0.5", *task, "--recover-epochs", "1", "--no-latency",
          "--layout", "paddleformers", "--out", str(tmp_path / "p"), *short])
    _cli(["export", str(tmp_path / "p"), "--format", "onnx", "--layout", "paddleformers", "--out", str(tmp_path / "x")])
    manifest = json.loads((tmp_path / "x" / "manifest.json").read_text())
    assert manifest["files"]["checkpoint"]["layout"] == "paddleformers"
    ours, config = outputs(tmp_path / "p")
    assert config.num_attention_heads == 2
    for served in (tmp_path / "p", tmp_path / "x" / "checkpoint"):
        run_reference("paddleformers", "load", "paddleformers", "Ernie4_5ForCausalLM", str(served),
                      str(tmp_path / "theirs.npy"))
        assert_close(ours, np.load(tmp_path / "theirs.npy"), REAL)
