"""ERNIE 4.5 (dense decoder) through every stage from the CLI on tiny models: classification
(train -> distill -> GQA prune -> QAT -> export -> runtimes) and causal LM (perplexity)."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from ernie_compress.cli import app
from tests.helpers import NEGATIVE, POSITIVE, cli_json, write_text_task

runner = CliRunner()


@pytest.fixture(scope="module")
def decoder(tmp_path_factory):
    root = tmp_path_factory.mktemp("e45")
    data = write_text_task(root / "data")
    result = cli_json(["train", "--task", "text", "--data", str(data), "--preset", "ernie45-tiny", "--out", str(root / "t"),
                      "--epochs", "8", "--lr", "5e-3", "--batch-size", "8"])
    return root, data, result


def test_decoder_classifier_trains_exports_and_runs_on_both_runtimes(decoder):
    root, _, result = decoder
    assert result["metrics"]["test"]["accuracy"] >= 0.75
    info = cli_json(["info", str(root / "t")])
    assert info["model_type"] == "ernie4_5" and info["architecture"] == "Ernie4_5ForSequenceClassification"
    cli_json(["export", str(root / "t"), "--out", str(root / "x")])
    manifest = json.loads((root / "x" / "manifest.json").read_text())
    assert manifest["inputs"] == ["input_ids"] and manifest["files"]["paddle"]["onednn"] is False
    for backend in ("onnxruntime", "paddle"):
        out = cli_json(["evaluate", str(root / "x"), "--backend", backend, "--batch-sizes", "1", "--iterations", "2"])
        assert out["metrics"]["accuracy"] == pytest.approx(result["metrics"]["test"]["accuracy"])


def test_decoder_distill_prune_qat_chain(decoder, tmp_path):
    root, _, _ = decoder
    common = ["--epochs", "2", "--lr", "3e-3", "--batch-size", "8"]
    distilled = cli_json(["distill", "--teacher", str(root / "t"), "--student", "ernie45-tiny", "--init-from-teacher",
                         "--hidden-weight", "1", "--out", str(tmp_path / "s"), *common])
    assert distilled["losses"]["hidden"] == 1.0
    pruned = cli_json(["prune", str(tmp_path / "s"), "--heads", "0.5", "--gqa", "queries", "--recover-epochs", "1",
                      "--out", str(tmp_path / "p")])
    assert pruned["gqa"]["queries_per_group"] == [2, 1] and pruned["gqa"]["kv_heads"] == [2, 2]
    assert pruned["parameters_after"]["non_embedding"] < pruned["parameters_before"]["non_embedding"]
    groups = cli_json(["prune", str(tmp_path / "s"), "--heads", "0.5", "--gqa", "groups", "--recover-epochs", "0",
                      "--out", str(tmp_path / "g")])
    assert groups["gqa"]["kv_heads"] == [2, 1] and groups["heads_after"] == [2, 2]
    config = json.loads((tmp_path / "p" / "config.json").read_text())  # still the standard layout
    assert (config["num_attention_heads"], config["num_key_value_heads"]) == (2, 2)
    assert "num_attention_heads_per_layer" not in config
    cli_json(["quantize", str(tmp_path / "p"), "--qat", "int8", "--distill-from-parent", "--out", str(tmp_path / "q"),
             *common])
    exported = cli_json(["export", str(tmp_path / "q"), "--format", "onnx", "--out", str(tmp_path / "x")])
    assert exported["int8"]["runtime_ops"]
    out = cli_json(["evaluate", str(tmp_path / "x"), "--batch-sizes", "1", "--iterations", "2"])
    assert out["precision"] == "int8" and out["delta_points"] == 0  # ONNX Runtime's integers predict as fake-quant Paddle


def test_decoder_refusals(decoder, tmp_path):
    root, _, _ = decoder
    for args, message in (
            (["distill", "--teacher", str(root / "t"), "--student", "tiny"], "family"),
            (["distill", "--teacher", str(root / "t"), "--student", "ernie45-tiny", "--attention-weight", "1"],
             "MiniLM"),
            (["prune", str(root / "t"), "--heads", "0.1", "--gqa", "groups"], "steps of 1/2"),
            (["pretrain", "--preset", "ernie45-tiny", "--corpus", "demo:sentiment"], "decoder preset")):
        res = runner.invoke(app, ["--quiet", *args, "--out", str(tmp_path / "o")])
        assert res.exit_code == 2 and message in res.stderr, (args, res.stderr)
        assert not (tmp_path / "o").exists()


def test_causal_lm_perplexity_through_export_and_ptq(tmp_path):
    data = tmp_path / "lm"
    data.mkdir()
    texts = POSITIVE + NEGATIVE
    (data / "train.txt").write_text("\n".join(texts * 4), encoding="utf-8")
    (data / "dev.txt").write_text("\n".join(texts), encoding="utf-8")
    (data / "test.txt").write_text("\n".join(texts), encoding="utf-8")
    result = cli_json(["train", "--task", "lm", "--data", str(data), "--preset", "ernie45-tiny", "--out", str(tmp_path / "m"),
                      "--epochs", "8", "--lr", "5e-3", "--batch-size", "8"])
    test = result["metrics"]["test"]
    vocab = len((tmp_path / "m" / "vocab.txt").read_text(encoding="utf-8").split())
    assert test["perplexity"] < vocab / 4  # far better than guessing, on texts it has seen
    cli_json(["quantize", str(tmp_path / "m"), "--ptq", "int8", "--calib-samples", "16", "--out", str(tmp_path / "q")])
    cli_json(["quantize", str(tmp_path / "m"), "--fp16", "--out", str(tmp_path / "h")])
    for ckpt in ("m", "q", "h"):
        exported = cli_json(["export", str(tmp_path / ckpt), "--format", "onnx", "--out", str(tmp_path / f"{ckpt}x")])
        manifest = json.loads((tmp_path / f"{ckpt}x" / "manifest.json").read_text())
        assert manifest["outputs"] == ["lm_logits"]
        out = cli_json(["evaluate", str(tmp_path / f"{ckpt}x"), "--batch-sizes", "1", "--iterations", "2"])
        assert out["primary_metric"] == "perplexity"
        assert out["metrics"]["perplexity"] == pytest.approx(exported["reference_metrics"]["perplexity"], rel=0.02)


def _sentencepiece_model(texts) -> bytes:
    """Train a tiny sentencepiece model offline (the release ships its own tokenizer.model)."""
    import io

    import sentencepiece as spm

    proto = io.BytesIO()
    spm.SentencePieceTrainer.train(sentence_iterator=iter(texts * 20), model_writer=proto, vocab_size=72,
                                   character_coverage=1.0, model_type="unigram", bos_id=1, eos_id=2, unk_id=0,
                                   pad_id=-1, minloglevel=2)
    return proto.getvalue()


def test_published_checkpoint_with_sentencepiece_tokenizer_fine_tunes_and_deploys(tmp_path):
    """A checkpoint as the release ships it (tokenizer.model, padded embedding, causal-LM head)
    is fine-tuned into a classifier, evaluated, exported and run on ONNX Runtime."""
    from safetensors.numpy import save_file

    from ernie_compress.data.sp_tokenizer import SentencePieceTokenizer
    from ernie_compress.models import build_model, model_state
    from ernie_compress.models.families import config_from_dict
    from ernie_compress.models.presets import resolve_preset

    published = tmp_path / "ERNIE-4.5-tiny-Paddle"
    published.mkdir()
    proto = _sentencepiece_model(POSITIVE + NEGATIVE)
    tokenizer = SentencePieceTokenizer(proto)
    assert (tokenizer.cls_id, tokenizer.sep_id, tokenizer.pad_id) == (1, 2, 0)
    config = config_from_dict(dict(resolve_preset("ernie45-tiny"), vocab_size=tokenizer.vocab_size + 8))
    state = model_state(build_model(config))
    save_file(state, str(published / "model.safetensors"))
    (published / "config.json").write_text(json.dumps(dict(config.to_dict(), architectures=["Ernie4_5_ForCausalLM"])))
    (published / "tokenizer.model").write_bytes(proto)  # the release's spelling of the architecture, above
    data = write_text_task(tmp_path / "data")
    result = cli_json(["train", "--from", str(published), "--task", "text", "--data", str(data), "--out", str(tmp_path / "c"),
                      "--epochs", "6", "--lr", "5e-3", "--batch-size", "8"])
    assert result["metrics"]["test"]["accuracy"] >= 0.75
    assert (tmp_path / "c" / "tokenizer.model").read_bytes() == proto
    cli_json(["export", str(tmp_path / "c"), "--format", "onnx", "--out", str(tmp_path / "x")])
    out = cli_json(["evaluate", str(tmp_path / "x"), "--batch-sizes", "1", "--iterations", "2"])
    assert out["metrics"]["accuracy"] == pytest.approx(result["metrics"]["test"]["accuracy"])
