"""Expert pruning (prune/experts.py, models/ernie4_5_moe_pruning.py): physical removal equals the parent
with the removed experts masked out of the routing, REAP and frequency scores against numpy (pad tokens
left out), recovery's loss, and ``prune --experts`` from the CLI with its one-line refusals."""

from __future__ import annotations

import json

import numpy as np
import pytest
from typer.testing import CliRunner

from ernie_compress.cli import app
from ernie_compress.losses import logit_kd_loss
from ernie_compress.models import build_model, model_from_state, model_state
from ernie_compress.models.ernie4_5_moe_pruning import remove_experts
from ernie_compress.models.families import config_from_dict
from ernie_compress.models.presets import resolve_preset
from ernie_compress.paddle_env import import_paddle
from ernie_compress.prune.experts import expert_importance, experts_to_keep
from tests.helpers import NEGATIVE, POSITIVE, cli_json

paddle = import_paddle()
runner = CliRunner()
PAD = 0


def _config(**changes):
    keys = dict(resolve_preset("ernie45-moe-tiny"), vocab_size=40, hidden_dropout_prob=0.0,
                attention_probs_dropout_prob=0.0, pad_token_id=PAD)
    return config_from_dict(dict(keys, **changes))


def _random_moe(seed: int = 0, **changes):
    """A tiny MoE causal LM with random weights, routers sharp enough and correction biases large
    enough (N(0, 0.3)) that the bias changes which experts are chosen."""
    paddle.seed(seed)
    model = build_model(_config(**changes))
    rng = np.random.default_rng(seed)
    for block in model.moe_blocks():
        block.gate.weight.set_value(rng.normal(0, 1, block.gate.weight.shape).astype(np.float32))
        bias = block.moe_statics.e_score_correction_bias
        bias.set_value(rng.normal(0, 0.3, bias.shape).astype(np.float32))
    model.eval()
    return model


def _ids(seed: int = 1) -> np.ndarray:
    ids = np.random.default_rng(seed).integers(3, 40, (3, 9))  # [b, s]
    ids[1, 6:] = PAD  # right padding on two rows
    ids[2, 4:] = PAD
    return ids


def _masked_parent_logits(model, keep: dict[int, list[int]], ids: np.ndarray) -> np.ndarray:
    """The parent's logits with every removed expert's router logit at -inf (its softmax probability 0,
    so the kept experts' probabilities are the pruned router's) and its biased score at -1e9 (never
    chosen before a kept expert)."""
    handles, saved = [], []
    for layer, block in zip(model.config.moe_layers, model.moe_blocks()):
        removed = np.setdiff1d(np.arange(len(block.experts)), keep[layer])
        mask = np.zeros(len(block.experts), np.float32)
        mask[removed] = -np.inf
        handles.append(block.gate.register_forward_post_hook(
            lambda layer_, inputs, out, m=paddle.to_tensor(mask): out + m))  # [T, E] logits
        bias = block.moe_statics.e_score_correction_bias
        saved.append((bias, bias.numpy().copy()))
        masked = bias.numpy().copy()
        masked[0, removed] = -1e9
        bias.set_value(masked)
    try:
        with paddle.no_grad():
            return model(paddle.to_tensor(ids)).numpy()
    finally:
        for handle in handles:
            handle.remove()
        for bias, value in saved:
            bias.set_value(value)


@pytest.mark.parametrize("keep", [{1: [0, 2, 3], 2: [1, 2, 3]}, {1: [1, 3], 2: [0, 2]}, {1: [2], 2: [0]}],
                         ids=["3-of-4", "2-of-4", "1-of-4-clamps-k"])
def test_removal_equals_the_parent_with_the_removed_experts_masked_out_of_the_routing(keep):
    model = _random_moe()
    state, config = model_state(model), model.config
    ids = _ids()
    expected = _masked_parent_logits(model, keep, ids)  # [b, s, vocab]
    pruned_state, pruned_config = remove_experts(state, config, keep)
    n = len(keep[1])
    assert pruned_config.moe_num_experts == n and pruned_config.moe_k == min(2, n)
    assert pruned_config.experts_per_layer == [0, n, n]
    pruned = model_from_state(pruned_config, pruned_state, "pruned")  # names and shapes checked
    with paddle.no_grad():
        logits = pruned(paddle.to_tensor(ids)).numpy()
    scale = np.abs(expected).max()
    np.testing.assert_allclose(logits, expected, atol=1e-5 * scale, rtol=0)
    unpruned = [name for name in state if ".layers.0." in name or "shared_experts" in name or "self_attn" in name]
    assert all(pruned_state[name] is state[name] for name in unpruned)  # dense layer, attention, shared experts
    with paddle.no_grad():  # the parent itself differs: the masking is what the test checks
        assert np.abs(model(paddle.to_tensor(ids)).numpy() - expected).max() > 1e-3 * scale


def test_the_data_makes_a_wrongly_sliced_correction_bias_visible():
    """The planted bug the test above must catch: the bias cut to its first n entries instead of the
    kept experts' (or not renumbered with them) changes which experts the pruned model picks."""
    model = _random_moe()
    keep = {1: [1, 2, 3], 2: [0, 1, 3]}
    pruned_state, pruned_config = remove_experts(model_state(model), model.config, keep)
    for layer in (1, 2):
        name = next(n for n in pruned_state if n.endswith(f"{layer}.mlp.moe_statics.e_score_correction_bias"))
        pruned_state[name] = model_state(model)[name][:, :3].copy()
    wrong = model_from_state(pruned_config, pruned_state, "planted")
    expected = _masked_parent_logits(model, keep, _ids())
    with paddle.no_grad():
        logits = wrong(paddle.to_tensor(_ids())).numpy()
    assert np.abs(logits - expected).max() > 1e-3 * np.abs(expected).max()


@pytest.mark.parametrize("keep", [{1: [0, 1], 2: [0]}, {1: [1, 0], 2: [0, 1]}, {1: [0, 4], 2: [0, 1]}, {1: [0, 1]}])
def test_uneven_unsorted_or_out_of_range_keep_lists_are_refused(keep):
    model = _random_moe()
    with pytest.raises(ValueError):
        remove_experts(model_state(model), model.config, keep)


# --- importance against numpy ----------------------------------------------------------------
class _Split:
    """The part of an encoded split that calibration reads: id rows, their lengths, the pad id."""

    def __init__(self, ids: np.ndarray):
        self.input_ids, self.pad_id = ids, PAD
        self.lengths = (ids != PAD).sum(axis=1)

    def __len__(self) -> int:
        return len(self.input_ids)


def _swiglu(x, up_gate, down):
    gate, up = np.split(x @ up_gate, 2, axis=-1)
    return (gate / (1 + np.exp(-gate)) * up) @ down


def _numpy_scores(block, x: np.ndarray, real: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """(REAP, frequency) of each expert of ``block`` on its input tokens ``x`` [T, h], over the tokens
    where ``real`` [T] is True: the routing of ERNIE 4.5 (top-k on softmax + bias, weights the unbiased
    softmax renormalised), then the mean of weight x ||expert output|| over each expert's tokens."""
    logits = x @ block.gate.weight.numpy().astype(np.float64)  # [T, E]
    probs = np.exp(logits - logits.max(-1, keepdims=True))
    probs /= probs.sum(-1, keepdims=True)
    chosen = np.argsort(-(probs + block.moe_statics.e_score_correction_bias.numpy()), axis=-1)[:, :k]  # [T, k]
    picked = np.take_along_axis(probs, chosen, -1)
    weights = picked / picked.sum(-1, keepdims=True)  # [T, k]
    experts = len(block.experts)
    reap, frequency = np.zeros(experts), np.zeros(experts)
    for e, expert in enumerate(block.experts):
        tokens, slot = np.nonzero((chosen == e) & real[:, None])  # real tokens routed to e
        frequency[e] = len(tokens)
        if len(tokens):
            out = _swiglu(x[tokens], expert.up_gate_proj.weight.numpy(), expert.down_proj.weight.numpy())
            reap[e] = np.mean(weights[tokens, slot] * np.linalg.norm(out, axis=-1))
    return reap, frequency


def test_reap_and_frequency_scores_match_numpy_and_leave_pad_tokens_out():
    model = _random_moe(seed=3)
    ids = np.random.default_rng(5).integers(3, 40, (6, 12))
    for row, length in enumerate((12, 3, 5, 12, 2, 7)):
        ids[row, length:] = PAD
    inputs = {}
    handles = [block.register_forward_pre_hook(lambda layer, args, i=i: inputs.__setitem__(i, args[0].numpy()))
               for i, block in enumerate(model.moe_blocks())]
    reap = expert_importance("reap", model, _Split(ids), samples=64)
    frequency = expert_importance("frequency", model, _Split(ids), samples=64)
    for handle in handles:
        handle.remove()
    real = (ids != PAD).reshape(-1)
    assert (~real).sum() >= 20  # the pad positions route somewhere too: leaving them in would show
    for i, block in enumerate(model.moe_blocks()):
        x = inputs[i].reshape(-1, inputs[i].shape[-1]).astype(np.float64)  # [b*s, h]
        want_reap, want_frequency = _numpy_scores(block, x, real, k=2)
        np.testing.assert_allclose(reap[i], want_reap, rtol=1e-4)
        np.testing.assert_array_equal(frequency[i], want_frequency)
        with_pads_reap, with_pads = _numpy_scores(block, x, np.ones_like(real), k=2)
        assert np.abs(with_pads - want_frequency).sum() >= 20
        assert np.abs(with_pads_reap - want_reap).max() > 0.1 * want_reap.max()  # far beyond rtol 1e-4
    assert not any(block.keep_dispatch or block.dispatch for block in model.moe_blocks())


def test_the_lowest_scores_go_and_ties_keep_the_lower_index():
    scores = [np.array([0.3, 0.1, 0.2, 0.4]), np.array([2.0, 0.0, 0.0, 1.0])]
    assert experts_to_keep(scores, 2) == [[0, 3], [0, 3]]
    assert experts_to_keep(scores, 3) == [[3], [0]]
    assert experts_to_keep([np.array([1.0, 1.0, 1.0, 1.0])], 1) == [[0, 1, 2]]


def test_recovery_with_distillation_adds_the_students_router_loss():
    teacher = _random_moe()
    student = _random_moe(seed=1)
    student.train()
    rows = _ids()

    class Batch:
        input_ids = paddle.to_tensor(rows)
        token_type_ids = paddle.zeros_like(input_ids)
        labels = paddle.to_tensor(np.where(rows == PAD, -100, np.roll(rows, -1, axis=1)))
        index = np.arange(len(rows))

    loss, parts = logit_kd_loss(teacher, 0.5, 2.0, PAD)(student, Batch)
    assert float(parts["aux"]) > 0
    assert float(loss) == pytest.approx(0.5 * float(parts["ce"]) + 0.5 * float(parts["kd"]) + float(parts["aux"]),
                                        rel=1e-5)


# --- the CLI -----------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    root = tmp_path_factory.mktemp("moe-prune")
    data = root / "lm"
    data.mkdir()
    texts = POSITIVE + NEGATIVE
    for split, copies in (("train", 2), ("dev", 1), ("test", 1)):
        (data / f"{split}.txt").write_text("\n".join(texts * copies), encoding="utf-8")
    cli_json(["train", "--task", "lm", "--data", str(data), "--preset", "ernie45-moe-tiny",
              "--out", str(root / "m"), "--epochs", "3", "--lr", "5e-3", "--batch-size", "8"])
    return root / "m"


def test_prune_experts_from_the_cli_halves_the_experts_and_info_shows_them(trained, tmp_path):
    args = ["prune", str(trained), "--experts", "0.5", "--out", str(tmp_path / "p"), "--max-steps", "3",
            "--batch-size", "8", "--no-latency"]
    result = cli_json(args)
    experts = result["experts"]
    assert experts["experts_before"] == [0, 4, 4] and experts["experts_after"] == [0, 2, 2]
    assert experts["importance"] == "reap" and experts["moe_k"] == {"before": 2, "after": 2, "clamped": False}
    assert all(len(kept) == 2 for kept in experts["kept"].values())
    before, after = result["parameters_before"], result["parameters_after"]
    expert = 3 * 32 * 16  # an expert's three [32 x 16] Linears
    assert before["total"] - after["total"] == 2 * (2 * expert + 2 * 32 + 2)  # + router columns, bias entries
    assert before["active"] - after["active"] == 2 * (2 * 32 + 2)  # still 2 experts per token
    accuracy = result["accuracy"]
    assert {"parent", "before_recovery", "after_recovery"} <= set(accuracy)
    assert all(accuracy[k]["perplexity"] > 1 for k in accuracy) and result["steps"] == 3
    info = cli_json(["info", str(tmp_path / "p")])
    assert info["experts_per_layer"] == [0, 2, 2] and info["experts_per_token"] == 2
    text = runner.invoke(app, ["--quiet", "info", str(tmp_path / "p")]).stdout
    assert "route each token to 2 of 2 experts" in text


def test_pruning_below_moe_k_clamps_it_and_the_table_says_so(trained, tmp_path):
    res = runner.invoke(app, ["--quiet", "prune", str(trained), "--experts", "0.75", "--importance", "frequency",
                              "--recover-epochs", "0", "--out", str(tmp_path / "p"), "--no-latency"])
    assert res.exit_code == 0, res.output
    assert "experts after" in res.stdout and "moe_k clamped 2 -> 1" in res.stdout and "frequency" in res.stdout
    config = json.loads((tmp_path / "p" / "config.json").read_text())
    assert config["moe_num_experts"] == 1 and config["moe_k"] == 1


@pytest.mark.parametrize("args, message", [
    (["--experts", "0.9"], "would remove 4 of the 4 routed experts"),
    (["--experts", "0.1"], "would remove 0 of the 4 routed experts"),
    (["--heads", "0.5"], "ERNIE 4.5 MoE models are pruned by --experts only for now"),
    (["--experts", "0.5", "--heads", "0.5"], "--experts prunes mixture-of-experts models and is not combined"),
    (["--experts", "0.5", "--importance", "gradient"], "--importance gradient scores heads"),
    (["--experts", "0.5", "--importance", "random"], "--importance must be one of"),
])
def test_bad_expert_pruning_is_refused_in_one_line(trained, tmp_path, args, message):
    res = runner.invoke(app, ["--quiet", "prune", str(trained), "--out", str(tmp_path / "o"), "--no-latency", *args])
    lines = [line for line in res.stderr.splitlines() if line.strip()]
    assert res.exit_code == 2 and len(lines) == 1 and message in lines[0], res.output
    assert not (tmp_path / "o").exists()
