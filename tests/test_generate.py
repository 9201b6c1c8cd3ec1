"""generate.py: KV-cache decoding equals recomputing the whole sequence; the cache keeps only the KV
heads; sampling is reproducible by seed; the command streams text and refuses bad input in one line."""

from __future__ import annotations

import json

import numpy as np
import pytest
from typer.testing import CliRunner

from ernie_compress.cli import app
from ernie_compress.models import build_model
from ernie_compress.models.ernie4_5 import CachedDecoder
from ernie_compress.models.families import config_from_dict
from ernie_compress.models.presets import resolve_preset
from ernie_compress.paddle_env import import_paddle
from ernie_compress.runtime.decoding import generate_tokens, pick_token
from tests.helpers import cli_json

paddle = import_paddle()
runner = CliRunner()


def decoder(**changes):
    keys = dict(resolve_preset("ernie45-tiny"), vocab_size=60, hidden_dropout_prob=0.0,
                attention_probs_dropout_prob=0.0)
    keys.update(changes)
    paddle.seed(3)
    model = build_model(config_from_dict(keys))
    model.eval()
    return model


@pytest.mark.parametrize("kv_heads", [1, 2, 4])  # MQA, GQA, MHA (4 query heads)
def test_cached_decoding_equals_recomputing_the_sequence(kv_heads):
    model = decoder(num_key_value_heads=kv_heads)
    prompt = [1, 7, 9, 23, 5, 41]
    cached = CachedDecoder(model)
    out = generate_tokens(cached, prompt, max_new_tokens=12, eos_id=-1)  # greedy, never stops early
    sequence = prompt + out["tokens"]
    with paddle.no_grad():
        full = model(paddle.to_tensor([sequence[:-1]])).numpy()[0]  # [len - 1, vocab]
    # the logits each step was chosen from = the full model's logits at the same position
    np.testing.assert_allclose(out["logits"], full[len(prompt) - 1:], atol=1e-4)
    assert out["tokens"] == [int(np.argmax(row)) for row in full[len(prompt) - 1:]]
    config = model.config
    for k, v in cached.cache:  # only the KV heads are cached, for every position but the last token
        assert k.shape == v.shape == [1, kv_heads, len(sequence) - 1, config.head_dim]


def test_sampling_is_reproducible_by_seed_and_top_p_keeps_the_nucleus():
    model = decoder()
    runs = [generate_tokens(CachedDecoder(model), [1, 7, 9], 10, -1, temperature=1.5, top_p=0.9, rng=np.random.default_rng(s))
            for s in (5, 5, 6)]
    assert runs[0]["tokens"] == runs[1]["tokens"] != runs[2]["tokens"]
    logits = np.log(np.array([0.5, 0.3, 0.15, 0.05]))
    picks = {pick_token(logits, 1.0, 0.7, np.random.default_rng(i)) for i in range(200)}
    assert picks == {0, 1}  # 0.5 + 0.3 reach 0.7: the 0.15 and 0.05 tokens are never drawn
    assert pick_token(logits, 0.0, 1.0, np.random.default_rng(0)) == 0


def test_generate_continues_a_training_sentence(tiny_lm):
    result = cli_json(["generate", str(tiny_lm), "--prompt", "质量太差", "--prompt", "服务态度很", "--max-new-tokens", "12"])
    texts = [r["prompt"] + r["text"] for r in result["results"]]
    assert all(r["time_to_first_token_ms"] > 0 and r["tokens"] for r in result["results"])
    # the training texts continue 质量太差 with 了 and 服务态度很 with 好 or 差; both end at end-of-text
    assert texts[0].startswith("质量太差了") and texts[1][5] in "好差", texts
    assert all(r["stopped_at_eos"] for r in result["results"]), texts


def test_generate_streams_text_to_stdout(tiny_lm):
    res = runner.invoke(app, ["--quiet", "generate", str(tiny_lm), "--prompt", "质量", "--max-new-tokens", "5",
                              "--temperature", "0.8", "--seed", "1"])
    assert res.exit_code == 0, res.output
    assert res.stdout.startswith("质量") and "tokens; first after" in res.stdout
    again = runner.invoke(app, ["--quiet", "generate", str(tiny_lm), "--prompt", "质量", "--max-new-tokens", "5",
                                "--temperature", "0.8", "--seed", "1"])
    assert again.stdout.splitlines()[0] == res.stdout.splitlines()[0]  # same seed, same text


@pytest.mark.parametrize("args, message", [
    (["--prompt", " "], "a prompt is empty"),
    ([], "pass --prompt TEXT or --prompts FILE"),
    (["--prompt", "质量" * 300], "exceed the model's context of 512 positions"),
    (["--prompt", "好", "--top-p", "0"], "--top-p must be in (0, 1]"),
    (["--prompt", "好", "--device", "gpu"], "export it to generate on --device gpu"),
])
def test_bad_input_is_one_line(tiny_lm, args, message):
    res = runner.invoke(app, ["--quiet", "generate", str(tiny_lm), *args])
    assert res.exit_code == 2 and message in res.stderr and len(res.stderr.strip().splitlines()) == 1, res.output


def test_generation_on_an_encoder_is_refused(tmp_path):
    from tests.helpers import train_tiny_checkpoint

    ckpt, _ = train_tiny_checkpoint(tmp_path, epochs=1)
    res = runner.invoke(app, ["--quiet", "generate", str(ckpt), "--prompt", "好"])
    assert res.exit_code == 2 and "needs a causal-LM checkpoint (Ernie4_5ForCausalLM, Ernie4_5_MoeForCausalLM)" in res.stderr
    assert "is ErnieForSequenceClassification" in res.stderr
    assert json.loads((ckpt / "config.json").read_text())["architectures"] == ["ErnieForSequenceClassification"]
