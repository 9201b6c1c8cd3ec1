"""Head importance, physical pruning (exactly the masked model), selection, and the CLI stage."""

from __future__ import annotations

import json

import numpy as np
import pytest
from typer.testing import CliRunner

from ernie_compress.cli import app
from ernie_compress.data.batching import EncodedSplit
from ernie_compress.data.tasks import Example
from ernie_compress.data.tokenizer import ErnieTokenizer
from ernie_compress.errors import UserError
from ernie_compress.models import build_model, count_parameters, model_from_state, model_state
from ernie_compress.paddle_env import import_paddle
from ernie_compress.prune.importance import gradient_head_importance, magnitude_head_importance
from ernie_compress.prune.physical import prune_state
from ernie_compress.prune.selection import heads_to_keep_by_fraction, select_for_parameter_target
from tests.helpers import NEGATIVE, POSITIVE, random_ids, train_tiny_checkpoint

paddle = import_paddle()
runner = CliRunner()


def _zero_head(state, layer, head, d):
    prefix = f"ernie.encoder.layers.{layer}.self_attn."
    cols = slice(head * d, (head + 1) * d)
    for proj in ("q_proj", "k_proj", "v_proj"):
        state[prefix + proj + ".weight"][:, cols] = 0
        state[prefix + proj + ".bias"][cols] = 0
    state[prefix + "out_proj.weight"][cols, :] = 0


@pytest.fixture
def split_and_model(tiny_config, tiny_vocab):
    config = tiny_config.replace(vocab_size=len(tiny_vocab))
    tok = ErnieTokenizer(tiny_vocab)
    examples = [Example(t, None, "pos") for t in POSITIVE] + [Example(t, None, "neg") for t in NEGATIVE]
    split = EncodedSplit(examples, tok, ["neg", "pos"], 32)
    state = model_state(build_model(config))
    _zero_head(state, layer=1, head=2, d=config.head_dim)
    return split, config, state


@pytest.mark.parametrize("method", ["gradient", "magnitude"])
def test_importance_is_finite_and_ranks_a_useless_head_last(split_and_model, method):
    split, config, state = split_and_model
    model = model_from_state(config, state, "x")
    scores = (gradient_head_importance(model, split, samples=16) if method == "gradient"
              else magnitude_head_importance(state, config))
    assert [len(s) for s in scores] == [4, 4]
    assert all(np.isfinite(s).all() for s in scores)
    flat = [(float(s[h]), layer, h) for layer, s in enumerate(scores) for h in range(len(s))]
    assert min(flat)[1:] == (1, 2)


def test_pruning_reproduces_the_masked_model_exactly(split_and_model):
    _, config, state = split_and_model
    model = model_from_state(config, state, "x")
    keep = [[0, 2, 3], [1]]
    mask = [paddle.to_tensor([1.0 if h in k else 0.0 for h in range(4)]) for k in keep]
    ids = paddle.to_tensor(random_ids(3, 9, config.vocab_size))
    with paddle.no_grad():
        masked = model.ernie(ids, head_mask=mask)[0].numpy()  # [batch, seq, hidden], LayerNorm scale
    pruned_state, pruned_config = prune_state(state, config, keep)
    pruned = model_from_state(pruned_config, pruned_state, "pruned")
    with paddle.no_grad():
        np.testing.assert_allclose(pruned.ernie(ids)[0].numpy(), masked, atol=1e-5, rtol=0)
    assert pruned_config.heads_per_layer == [3, 1]
    before = count_parameters({k: v.shape for k, v in state.items()})["total"]
    after = count_parameters({k: v.shape for k, v in pruned_state.items()})["total"]
    assert before - after == 4 * (4 * 32 * 8 + 3 * 8)  # 4 heads of width 8: q/k/v/out weights, q/k/v biases


def _ffn_masked(state, neurons_to_keep):
    """The unpruned weights with every removed FFN neuron's output row of ``linear2`` zeroed: the
    masked model, whatever the activation gives for that neuron."""
    masked = dict(state)
    for i, keep in enumerate(neurons_to_keep):
        name = f"ernie.encoder.layers.{i}.linear2.weight"  # [ffn, hidden]
        drop = np.setdiff1d(np.arange(state[name].shape[0]), keep)
        masked[name] = state[name].copy()
        masked[name][drop, :] = 0
    return masked


@pytest.mark.parametrize("keep_heads, keep_neurons", [
    ([[0, 1, 2, 3], [0, 1, 2, 3]], [[0, 5, 7, 30, 63], list(range(1, 64, 2))]),  # FFN only
    ([[0, 2, 3], [1]], [[3, 4, 9], list(range(40))]),                          # heads and FFN
    ([[], [2, 3]], [list(range(64)), []]),                                     # a layer without attention, one without FFN
], ids=["ffn", "heads+ffn", "empty-blocks"])
def test_ffn_and_mixed_pruning_reproduce_the_masked_model(split_and_model, keep_heads, keep_neurons):
    _, config, state = split_and_model
    assert config.intermediate_size == 64
    model = model_from_state(config, _ffn_masked(state, keep_neurons), "masked")
    mask = [paddle.to_tensor([1.0 if h in k else 0.0 for h in range(4)]) for k in keep_heads]
    ids = paddle.to_tensor(random_ids(3, 9, config.vocab_size))
    with paddle.no_grad():  # the encoder's output (LayerNorm scale, ~1) shows what tiny logits hide
        masked = model.ernie(ids, head_mask=mask)[0].numpy()  # [batch, seq, hidden]
    pruned_state, pruned_config = prune_state(state, config, keep_heads, keep_neurons)
    assert pruned_config.ffn_per_layer == [len(k) for k in keep_neurons]
    pruned = model_from_state(pruned_config, pruned_state, "pruned")
    with paddle.no_grad():
        np.testing.assert_allclose(pruned.ernie(ids)[0].numpy(), masked, atol=1e-5, rtol=0)


def test_selection_keeps_a_head_per_layer_and_hits_parameter_targets(tiny_config):
    scores = [np.array([0.1, 0.2, 0.3, 0.4]), np.array([0.05, 0.9, 0.8, 0.7])]
    keep = heads_to_keep_by_fraction(scores, 0.25)
    assert keep == [[1, 2, 3], [1, 2, 3]]
    assert all(heads_to_keep_by_fraction(scores, 0.75))
    with pytest.raises(UserError, match="no heads"):
        heads_to_keep_by_fraction(scores, 0.9)
    ffn = [np.linspace(0, 1, 64), np.linspace(1, 0, 64)]
    heads, neurons, r = select_for_parameter_target(scores, ffn, tiny_config, 0.3, 18210)
    from ernie_compress.prune.selection import removed_fraction

    assert removed_fraction(tiny_config, heads, neurons, 18210) >= 0.3 and 0 < r < 1


def test_uniform_selection_removes_the_same_heads_count_from_every_layer(tiny_config):
    """--uniform: each layer loses its own least important heads, the same number everywhere, where the
    global ranking above would take three from the first layer and none from the second."""
    scores = [np.array([0.1, 0.2, 0.3, 0.4]), np.array([0.6, 0.9, 0.8, 0.7])]
    assert heads_to_keep_by_fraction(scores, 0.375) == [[3], [0, 1, 2, 3]]  # global: uneven
    assert heads_to_keep_by_fraction(scores, 0.5, uniform=True) == [[2, 3], [1, 2]]
    with pytest.raises(UserError, match="would leave none"):
        heads_to_keep_by_fraction(scores, 0.9, uniform=True)
    ffn = [np.linspace(0, 1, 64), np.linspace(1, 0, 64)]
    heads, neurons, _ = select_for_parameter_target(scores, ffn, tiny_config, 0.3, 18210, uniform=True)
    assert len({len(k) for k in heads}) == 1 and len({len(k) for k in neurons}) == 1


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    return train_tiny_checkpoint(tmp_path_factory.mktemp("prune"))[0]


def test_prune_cli_params_target_and_round_trip_to_runtime(trained, tmp_path):
    res = runner.invoke(app, ["--quiet", "--json", "prune", str(trained), "--params", "0.15", "--out",
                              str(tmp_path / "p"), "--max-steps", "4", "--batch-size", "8"])
    assert res.exit_code == 0, res.output
    result = json.loads(res.stdout)
    assert result["removed_fraction_non_embedding"] >= 0.15
    assert result["parameters_after"]["total"] < result["parameters_before"]["total"]
    assert set(result["latency"]) == {"parent", "pruned"}
    config = json.loads((tmp_path / "p" / "config.json").read_text())
    assert config["num_attention_heads_per_layer"] == result["heads_after"]
    res = runner.invoke(app, ["--quiet", "--json", "export", str(tmp_path / "p"), "--out", str(tmp_path / "x")])
    assert res.exit_code == 0, res.output
    for backend in ("onnxruntime", "paddle"):
        ev = runner.invoke(app, ["--quiet", "--json", "evaluate", str(tmp_path / "x"), "--backend", backend,
                                 "--batch-sizes", "1", "--iterations", "2", "--seq-len", "16"])
        assert ev.exit_code == 0, ev.output
        assert json.loads(ev.stdout)["delta_points"] == pytest.approx(0, abs=0.1)
    info = json.loads(runner.invoke(app, ["info", str(tmp_path / "p"), "--json"]).stdout)
    assert info["heads_per_layer"] == result["heads_after"] and info["head_importance"]


@pytest.mark.parametrize("args, message", [
    (["--heads", "1.5"], "--heads must be in (0, 1)"),
    (["--heads", "-0.1"], "--heads must be in (0, 1)"),
    (["--heads", "0.9"], "no heads"),
    ([], "say what to remove"),
    (["--params", "0.2", "--heads", "0.1"], "do not combine"),
    (["--heads", "0.2", "--importance", "random"], "--importance"),
    (["--experts", "0.5"], "--experts removes routed experts of a mixture-of-experts model; this ERNIE 3.0 model has none"),
    (["--heads", "0.2", "--importance", "reap"], "--importance reap scores routed experts"),
])
def test_bad_prune_options(trained, tmp_path, args, message):
    res = runner.invoke(app, ["--quiet", "prune", str(trained), "--out", str(tmp_path / "o"), "--no-latency"] + args)
    assert res.exit_code == 2, res.output
    assert len([line for line in res.stderr.splitlines() if line.strip()]) == 1, res.stderr
    assert message in res.stderr and not (tmp_path / "o").exists()


def test_pruning_a_quantized_checkpoint_is_refused(trained, tmp_path):
    res = runner.invoke(app, ["--quiet", "quantize", str(trained), "--ptq", "int8", "--calib-samples", "8",
                              "--out", str(tmp_path / "q")])
    assert res.exit_code == 0, res.output
    res = runner.invoke(app, ["--quiet", "prune", str(tmp_path / "q"), "--heads", "0.2", "--out", str(tmp_path / "o")])
    assert res.exit_code == 2 and "already quantized" in res.stderr
