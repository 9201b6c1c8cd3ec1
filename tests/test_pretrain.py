"""Masked-LM pre-training: masking rules, a real run, and fine-tuning from its checkpoint."""

from __future__ import annotations

import json

import numpy as np
from typer.testing import CliRunner

from ernie_compress.cli import app
from ernie_compress.data.tokenizer import ErnieTokenizer, build_vocab
from ernie_compress.stages.pretrain import mask_tokens
from tests.helpers import NEGATIVE, POSITIVE, write_jsonl

runner = CliRunner()


def test_masking_never_touches_specials_and_keeps_targets():
    tok = ErnieTokenizer(build_vocab(POSITIVE + NEGATIVE, min_frequency=1))
    enc = tok.encode_batch(POSITIVE, max_length=16)
    masked, positions, targets = mask_tokens(enc.input_ids, tok, 0.5, np.random.default_rng(0))
    flat = enc.input_ids.reshape(-1)
    assert len(positions) > 0
    assert not np.isin(flat[positions], [tok.pad_id, tok.cls_id, tok.sep_id]).any()
    np.testing.assert_array_equal(flat[positions], targets)
    untouched = np.setdiff1d(np.arange(flat.size), positions)
    np.testing.assert_array_equal(masked.reshape(-1)[untouched], flat[untouched])
    assert (masked.reshape(-1)[positions] == tok.mask_id).mean() > 0.5  # ~80% become [MASK]


def test_pretrain_then_fine_tune(tmp_path):
    corpus = tmp_path / "corpus.txt"
    corpus.write_text("\n".join(POSITIVE + NEGATIVE) + "\n", encoding="utf-8")
    res = runner.invoke(app, ["--quiet", "--json", "pretrain", "--corpus", str(corpus), "--preset", "tiny",
                              "--steps", "6", "--batch-size", "4", "--out", str(tmp_path / "pt")])
    assert res.exit_code == 0, res.output
    result = json.loads(res.stdout)
    assert result["steps"] == 6 and np.isfinite(result["final_loss"])
    config = json.loads((tmp_path / "pt" / "config.json").read_text())
    assert config["architectures"] == ["ErnieForMaskedLM"]

    data = tmp_path / "data"
    data.mkdir()
    rows = [{"text": t, "label": "pos"} for t in POSITIVE] + [{"text": t, "label": "neg"} for t in NEGATIVE]
    for split in ("train", "dev"):
        write_jsonl(data / f"{split}.jsonl", rows)
    res = runner.invoke(app, ["--quiet", "--json", "train", "--from", str(tmp_path / "pt"), "--task", "text",
                              "--data", str(data), "--out", str(tmp_path / "ft"), "--max-steps", "3",
                              "--batch-size", "8"])
    assert res.exit_code == 0, res.output
    ft = json.loads((tmp_path / "ft" / "config.json").read_text())
    assert ft["architectures"] == ["ErnieForSequenceClassification"] and ft["id2label"] == {"0": "neg", "1": "pos"}
    lineage = json.loads((tmp_path / "ft" / "compression.json").read_text())
    assert [s["name"] for s in lineage["stages"]] == ["pretrain", "train"]

    # a stage that needs a task model refuses the masked-LM model in one line, pointing to train --from
    res = runner.invoke(app, ["--quiet", "prune", str(tmp_path / "pt"), "--task", "text", "--data", str(data),
                              "--heads", "0.5", "--out", str(tmp_path / "pruned")])
    assert res.exit_code == 2 and "is a pre-trained (masked-LM) model" in res.stderr and "train --from" in res.stderr


def test_unknown_corpus_is_an_error(tmp_path):
    res = runner.invoke(app, ["--quiet", "pretrain", "--corpus", "nosuch.txt", "--out", str(tmp_path / "x")])
    assert res.exit_code == 2 and "neither built in nor a file" in res.stderr


def test_the_same_seed_gives_the_same_model(tmp_path):
    """Initial weights included: two runs in one process (the second starts from whatever global
    random state the first left) must write identical weights."""
    from safetensors.numpy import load_file

    corpus = tmp_path / "corpus.txt"
    corpus.write_text("\n".join(POSITIVE + NEGATIVE) + "\n", encoding="utf-8")
    for name in ("a", "b"):
        res = runner.invoke(app, ["--quiet", "pretrain", "--corpus", str(corpus), "--preset", "tiny", "--steps", "2",
                                  "--batch-size", "4", "--out", str(tmp_path / name)])
        assert res.exit_code == 0, res.output
    a, b = (load_file(str(tmp_path / name / "model.safetensors")) for name in ("a", "b"))
    assert a.keys() == b.keys()
    for key in a:
        np.testing.assert_array_equal(a[key], b[key], err_msg=key)
