"""ERNIE 4.5 mixture of experts (models/ernie4_5_moe*.py): the MoE layer against a numpy reference of
the routing and mixing, dense and MoE layers where the config puts them, the load-balancing loss,
parameter counts, a tiny MoE causal LM through the CLI, and the one-line refusals."""

from __future__ import annotations

import json

import numpy as np
import pytest
from typer.testing import CliRunner

from ernie_compress.cli import app
from ernie_compress.errors import UserError
from ernie_compress.losses import hard_label_loss
from ernie_compress.models import build_model, count_parameters
from ernie_compress.models.ernie4_5_moe import Ernie45MoeBlock, Ernie45MoeForCausalLM
from ernie_compress.models.ernie4_5_moe_config import UNSUPPORTED, Ernie45MoeConfig
from ernie_compress.models.families import FAMILIES, config_from_dict, family_of
from ernie_compress.models.presets import resolve_preset
from ernie_compress.paddle_env import import_paddle
from tests.helpers import NEGATIVE, POSITIVE, cli_json

paddle = import_paddle()
runner = CliRunner()


def _config(**changes) -> Ernie45MoeConfig:
    keys = dict(resolve_preset("ernie45-moe-tiny"), vocab_size=40, hidden_dropout_prob=0.0,
                attention_probs_dropout_prob=0.0)
    return config_from_dict(dict(keys, **changes))


# --- the MoE layer against numpy ---------------------------------------------------------------
def _swiglu(x, up_gate, down):
    gate, up = np.split(x @ up_gate, 2, axis=-1)
    return (gate / (1 + np.exp(-gate)) * up) @ down


def _reference(x, w, *, biased_weights=False, unbiased_choice=False):
    """The routing of PaddleFormers / transformers in numpy (the flags plant the two classic bugs)."""
    logits = x @ w["gate"]  # [T, E]
    probs = np.exp(logits - logits.max(-1, keepdims=True))
    probs /= probs.sum(-1, keepdims=True)
    scores = probs + w["bias"]
    chosen = np.argsort(-(probs if unbiased_choice else scores), axis=-1, kind="stable")[:, :w["k"]]  # [T, k]
    picked = np.take_along_axis(scores if biased_weights else probs, chosen, axis=-1)
    weights = picked / np.maximum(picked.sum(-1, keepdims=True), w["norm_min"])
    out = np.zeros_like(x)
    for t in range(len(x)):
        for j, e in enumerate(chosen[t]):
            out[t] += weights[t, j] * _swiglu(x[t:t + 1], *w["experts"][e])[0]
    return out + _swiglu(x, *w["shared"]), chosen, picked.sum(-1)


def _block_with_random_weights(norm_min: float, seed: int = 0):
    config = _config(hidden_size=16, moe_num_experts=6, moe_k=2, moe_intermediate_size=8,
                     moe_num_shared_experts=2, moe_norm_min=norm_min)
    block = Ernie45MoeBlock(config)
    block.eval()
    rng = np.random.default_rng(seed)
    h, f, e = 16, 8, 6
    w = {"gate": rng.normal(0, 1, (h, e)), "bias": rng.normal(0, 0.3, (1, e)), "k": 2, "norm_min": norm_min,
         "experts": [(rng.normal(0, 0.3, (h, 2 * f)), rng.normal(0, 0.3, (f, h))) for _ in range(e)],
         "shared": (rng.normal(0, 0.3, (h, 4 * f)), rng.normal(0, 0.3, (2 * f, h)))}
    w = {k: (v.astype(np.float32) if isinstance(v, np.ndarray) else v) for k, v in w.items()}
    block.gate.weight.set_value(w["gate"])
    block.moe_statics.e_score_correction_bias.set_value(w["bias"])
    for expert, (up_gate, down) in zip(block.experts, w["experts"]):
        expert.up_gate_proj.weight.set_value(up_gate.astype(np.float32))
        expert.down_proj.weight.set_value(down.astype(np.float32))
    block.shared_experts.up_gate_proj.weight.set_value(w["shared"][0].astype(np.float32))
    block.shared_experts.down_proj.weight.set_value(w["shared"][1].astype(np.float32))
    return block, w


@pytest.mark.parametrize("norm_min", [1e-12, 0.9])
def test_moe_layer_routes_and_mixes_as_the_numpy_reference(norm_min):
    """Top-k on softmax + correction bias, weights from the unbiased softmax renormalised with the
    clamped sum, plus the shared experts. The data makes the planted bugs visible: the bias changes
    the choice on some tokens, and (norm_min 0.9) the clamp is active."""
    block, w = _block_with_random_weights(norm_min)
    x = np.random.default_rng(1).normal(0, 1, (3, 8, 16)).astype(np.float32)
    with paddle.no_grad():
        out = block(paddle.to_tensor(x)).numpy().reshape(-1, 16)
    tokens = x.reshape(-1, 16)
    expected, chosen, sums = _reference(tokens, w)
    np.testing.assert_allclose(out, expected, rtol=1e-5, atol=1e-5)
    scale = np.abs(expected).max()
    _, unbiased, _ = _reference(tokens, w, unbiased_choice=True)
    assert (np.sort(chosen, -1) != np.sort(unbiased, -1)).any(axis=-1).sum() >= 4  # the bias changes choices
    for bug in ({"biased_weights": True}, {"unbiased_choice": True}):
        planted = _reference(tokens, w, **bug)[0]
        assert np.abs(planted - out).max() > 100 * 1e-5 * scale, bug
    if norm_min > 1e-6:
        assert (sums < norm_min).sum() >= 4  # the clamp decides these tokens' weights


def test_without_aux_free_bias_the_top_k_is_on_the_softmax():
    config = _config(moe_use_aux_free=False)
    block = Ernie45MoeBlock(config)
    assert block.moe_statics is None
    assert not any("e_score_correction_bias" in name for name in config.causal_lm_shapes())
    x = paddle.to_tensor(np.random.default_rng(2).normal(0, 1, (20, 32)).astype(np.float32))
    probs, chosen, weights = block.route(x)
    np.testing.assert_array_equal(np.sort(chosen.numpy(), -1), np.sort(np.argsort(-probs.numpy(), -1)[:, :2], -1))
    picked = np.take_along_axis(probs.numpy(), chosen.numpy(), -1)
    np.testing.assert_allclose(weights.numpy(), picked / picked.sum(-1, keepdims=True), rtol=1e-6)


def test_an_expert_without_tokens_gets_zero_gradients_in_training():
    """Every rank must hold a gradient for every parameter (all_reduce_gradients concatenates them):
    an expert no token reached gets zeros, not None."""
    block, _ = _block_with_random_weights(1e-12)
    block.moe_statics.e_score_correction_bias.set_value(np.array([[9.0, 9.0, 0, 0, 0, 0]], dtype=np.float32))
    block.train()
    out = block(paddle.to_tensor(np.random.default_rng(3).normal(0, 1, (2, 5, 16)).astype(np.float32)))
    paddle.sum(out * out).backward()
    assert np.abs(block.experts[0].down_proj.weight.grad.numpy()).max() > 0
    for expert in block.experts[2:]:
        assert expert.down_proj.weight.grad is not None
        assert np.abs(expert.down_proj.weight.grad.numpy()).max() == 0


# --- layers, names, shapes ---------------------------------------------------------------------
@pytest.mark.parametrize("layers, start, end, interval, moe", [
    (3, 1, -1, 1, [1, 2]), (4, 2, None, 1, [2, 3]), (5, 1, 2, 2, [1]), (4, 0, -1, 2, [1, 3]), (2, 5, -1, 1, [])])
def test_moe_layers_sit_where_the_config_says(layers, start, end, interval, moe):
    config = _config(num_hidden_layers=layers, moe_layer_start_index=start, moe_layer_end_index=end,
                     moe_layer_interval=interval)
    model = build_model(config)
    assert [i for i, layer in enumerate(model.ernie.layers) if isinstance(layer.mlp, Ernie45MoeBlock)] == moe
    assert config.experts_per_layer == [4 if i in moe else 0 for i in range(layers)]
    state = model.state_dict()
    for i in range(layers):
        assert (f"ernie.layers.{i}.mlp.up_gate_proj.weight" in state) == (i not in moe)
        assert (f"ernie.layers.{i}.mlp.gate.weight" in state) == (i in moe)


@pytest.mark.parametrize("changes", [{}, {"tie_word_embeddings": False, "use_bias": True},
                                     {"moe_num_shared_experts": 0, "moe_use_aux_free": False, "moe_layer_interval": 2}])
def test_parameter_names_and_shapes_are_the_documented_ones(changes):
    config = _config(**changes)
    model = build_model(config)
    state = {name: tuple(value.shape) for name, value in model.state_dict().items()}
    assert state == {name: tuple(shape) for name, shape in config.causal_lm_shapes().items()}
    h, f, e = config.hidden_size, config.moe_intermediate_size, config.moe_num_experts
    layer = config.moe_layers[0]
    mlp = f"ernie.layers.{layer}.mlp."
    assert state[f"{mlp}gate.weight"] == (h, e)
    assert state[f"{mlp}experts.{e - 1}.up_gate_proj.weight"] == (h, 2 * f)
    assert state[f"{mlp}experts.0.down_proj.weight"] == (f, h)
    if config.moe_num_shared_experts:
        assert state[f"{mlp}shared_experts.up_gate_proj.weight"] == (h, 2 * config.moe_num_shared_experts * f)
        assert state[f"{mlp}moe_statics.e_score_correction_bias"] == (1, e)
    assert str(model.state_dict()[f"{mlp}gate.weight"].dtype).endswith("float32")


def test_published_presets_count_their_total_and_active_parameters():
    """ERNIE-4.5-21B-A3B and -300B-A47B, counted by hand: 21.8B / 3.35B and 299.5B / 47.9B (the
    active count reads the embedding table and every non-expert weight, and moe_k experts per layer)."""
    def count(layers, h, heads, kv, ffn, experts, k, expert_ffn, shared, start, tied):
        attention = h * (heads + 2 * kv) * 128 + heads * 128 * h + 2 * h
        moe_layer = experts * 3 * h * expert_ffn + 3 * h * shared * expert_ffn + h * experts + experts
        dense = start * (attention + 3 * h * ffn) + (layers - start) * (attention + moe_layer) + h
        embeddings = 103424 * h * (1 if tied else 2)
        active = dense - (layers - start) * (experts - k) * 3 * h * expert_ffn + embeddings
        return dense + embeddings, active

    for preset, expected in (("ernie45-21b-a3b", count(28, 2560, 20, 4, 12288, 64, 6, 1536, 2, 1, True)),
                             ("ernie45-300b-a47b", count(54, 8192, 64, 8, 28672, 64, 8, 3584, 0, 3, False))):
        config = config_from_dict(resolve_preset(preset))
        counts = count_parameters(config.causal_lm_shapes(), config)
        assert (counts["total"], counts["active"]) == expected, preset
    assert round(expected[0] / 1e9) == 299 and round(expected[1] / 1e9) == 48


def test_config_keeps_multi_token_prediction_keys_and_drops_its_weights():
    config = _config(num_nextn_predict_layers=1, mtp_loss_scaling_factor=0.1, moe_capacity=[64, 64, 64])
    assert config.to_dict()["num_nextn_predict_layers"] == 1 and config.to_dict()["moe_capacity"] == [64, 64, 64]
    model = {name: np.ones(shape, np.float32) for name, shape in config.causal_lm_shapes().items()}
    state = {**model, "ernie.mtp_block.0.input_layernorm.weight": np.ones(32),
             "ernie.mtp_linear_proj.0.weight": np.ones((64, 32))}
    _, kept = family_of(config).normalize(config, state, config.to_dict(), True)
    assert sorted(kept) == sorted(model)


# --- training loss -----------------------------------------------------------------------------
def _loss_batch(model, rows):
    class Batch:
        input_ids = paddle.to_tensor(rows)
        token_type_ids = paddle.zeros_like(input_ids)
        labels = paddle.to_tensor(np.where(rows == 0, -100, np.roll(rows, -1, axis=1)))
    return Batch


def test_load_balancing_loss_is_the_switch_loss_over_real_tokens():
    """router_aux_loss_coef * sum over MoE layers of E * sum_e f_e P_e, f from the unbiased top-k,
    padding left out; hard_label_loss adds it to the cross-entropy and reports it as 'aux'."""
    model = build_model(_config(router_aux_loss_coef=0.5))
    for block in model.moe_blocks():  # a bias that moves the choice: f must still count the unbiased top-k
        block.moe_statics.e_score_correction_bias.set_value(np.array([[0.3, 0, 0, -0.3]], dtype=np.float32))
    rows = np.array([[5, 6, 7, 8, 9, 0, 0], [11, 12, 13, 14, 15, 16, 17]])
    model.train()
    loss, parts = hard_label_loss(model, _loss_batch(model, rows))
    real = (rows.reshape(-1) != 0).astype(np.float32)
    expected = 0.0
    for block in model.moe_blocks():
        probs = block.routing[0].numpy()  # [T, E]
        picked = np.zeros_like(probs)
        np.put_along_axis(picked, np.argsort(-probs, -1)[:, :2], 1.0, -1)
        share = (picked * real[:, None]).sum(0) / real.sum()
        expected += 4 * np.sum(share * (probs * real[:, None]).sum(0) / real.sum())
    assert float(parts["aux"]) == pytest.approx(0.5 * expected, rel=1e-5)
    assert float(loss) == pytest.approx(float(parts["ce"]) + float(parts["aux"]), rel=1e-6)
    loss.backward()
    assert np.abs(model.moe_blocks()[0].gate.weight.grad.numpy()).max() > 0


def test_a_uniform_router_gives_k_per_layer_and_eval_gives_none():
    """All-zero router weights: p = 1/E everywhere, so each layer's loss is exactly k."""
    model = build_model(_config(router_aux_loss_coef=0.25))
    for block in model.moe_blocks():
        block.gate.weight.set_value(np.zeros(block.gate.weight.shape, np.float32))
    model.train()
    model(paddle.to_tensor([[3, 4, 5, 6]]))
    assert float(model.auxiliary_loss()) == pytest.approx(0.25 * 2 * len(model.moe_blocks()), rel=1e-6)
    model.eval()
    model(paddle.to_tensor([[3, 4, 5, 6]]))
    assert model.auxiliary_loss() is None


def test_cached_decoding_matches_the_full_forward():
    model = build_model(_config())
    model.eval()
    ids = np.random.default_rng(4).integers(3, 40, (1, 9))
    with paddle.no_grad():
        full = model(paddle.to_tensor(ids)).numpy()
    decoder = family_of(model.config).cached_decoder(model)
    first = decoder.prefill([ids[0, :5].tolist()])
    steps = [decoder.step([t]) for t in ids[0, 5:]]
    np.testing.assert_allclose(np.concatenate([first, *steps]), full[0, 4:], atol=1e-5)


# --- the CLI -----------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    root = tmp_path_factory.mktemp("moe")
    data = root / "lm"
    data.mkdir()
    texts = POSITIVE + NEGATIVE
    for split, copies in (("train", 4), ("dev", 1), ("test", 1)):
        (data / f"{split}.txt").write_text("\n".join(texts * copies), encoding="utf-8")
    result = cli_json(["train", "--task", "lm", "--data", str(data), "--preset", "ernie45-moe-tiny",
                       "--out", str(root / "m"), "--epochs", "10", "--lr", "5e-3", "--batch-size", "8"])
    return root, result


def test_tiny_moe_lm_trains_from_the_cli_and_info_shows_its_experts(trained):
    root, result = trained
    vocab = len((root / "m" / "vocab.txt").read_text(encoding="utf-8").split())
    assert result["metrics"]["test"]["perplexity"] < vocab / 4
    info = cli_json(["info", str(root / "m")])
    assert info["architecture"] == "Ernie4_5_MoeForCausalLM" and info["experts_per_layer"] == [0, 4, 4]
    assert info["experts_per_token"] == 2 and info["ffn_per_layer"] == [64, 16, 16]
    p = info["parameters"]
    assert p["total"] - p["active"] == 2 * 2 * 3 * 32 * 16  # two idle experts of 3 [32 x 16] Linears per layer
    text = runner.invoke(app, ["info", str(root / "m")]).stdout
    assert "active per token" in text and "2 of 3 layers route each token to 2 of 4 experts" in text
    generated = cli_json(["generate", str(root / "m"), "--prompt", "质量太差", "--max-new-tokens", "4"])
    assert len(generated["results"][0]["tokens"]) == 4


def test_info_describes_a_preset_and_a_config_without_weights(tmp_path):
    preset = cli_json(["info", "ernie45-21b-a3b"])
    assert preset["config_only"] and preset["experts_per_layer"] == [0] + [64] * 27
    (tmp_path / "config.json").write_text(json.dumps(resolve_preset("ernie45-300b-a47b")))
    folder = cli_json(["info", str(tmp_path)])
    assert folder["parameters"]["active"] == pytest.approx(47.9e9, rel=1e-3) and folder["experts_per_token"] == 8


def _refused(args: list[str], tmp_path) -> str:
    res = runner.invoke(app, ["--quiet", *args])
    lines = [line for line in res.stderr.splitlines() if line.strip()]
    assert res.exit_code == 2 and len(lines) == 1 and lines[0].startswith("error: "), (args, res.output)
    assert not (tmp_path / "out").exists()
    return lines[0]


@pytest.mark.parametrize("changes, named", [
    *[({key: value}, key) for key, value in (("sinkhorn_2gate", True), ("moe_group_experts", True),
                                              ("scoring_func", "sigmoid"), ("moe_norm_gate_logits", False),
                                              ("n_group", 8))],
    ({"moe_gate": "top2"}, "moe_gate"), ({"moe_k": 5}, "moe_k 5 is more than moe_num_experts 4"),
    ({"moe_num_experts": [64, 64]}, "moe_num_experts"), ({"moe_layer_end_index": 7}, "moe_layer_end_index")])
def test_unsupported_configs_are_refused_in_one_line_naming_the_key(tmp_path, changes, named):
    keys = dict(resolve_preset("ernie45-moe-tiny"), vocab_size=40, **changes)
    (tmp_path / "config.json").write_text(json.dumps(keys))
    assert named in _refused(["info", str(tmp_path)], tmp_path)


def test_every_unsupported_key_is_refused():
    for key, (asks, _) in UNSUPPORTED.items():
        value = next(v for v in (True, False, "sigmoid", 8) if asks(v))
        with pytest.raises(UserError, match=key):
            _config(**{key: value})
    _config(sinkhorn_2gate=False, moe_group_experts=False, scoring_func="softmax", moe_gate="top2_fused", n_group=1)


def test_paddle_export_head_pruning_and_classification_of_an_moe_model_are_refused(trained, tmp_path):
    root, _ = trained
    assert "no Paddle static-graph export" in _refused(
        ["export", str(root / "m"), "--format", "paddle", "--out", str(tmp_path / "out")], tmp_path)
    assert "ERNIE 4.5 MoE models are pruned by --experts only for now" in _refused(
        ["prune", str(root / "m"), "--heads", "0.5", "--out", str(tmp_path / "out"), "--no-latency"], tmp_path)
    assert "do not do classification" in _refused(
        ["train", "--task", "demo:sentiment", "--preset", "ernie45-moe-tiny", "--out", str(tmp_path / "out")], tmp_path)


def test_the_family_is_registered_with_its_model():
    family = FAMILIES["ernie4_5_moe"]
    assert family.module().ARCHITECTURES["Ernie4_5_MoeForCausalLM"] is Ernie45MoeForCausalLM
    assert family.layouts == ("ours", "paddleformers", "hf") and family.graph_blocks().NAMES.layer(1).index == 1
    assert family.linear_role("ernie.layers.1.mlp.experts.3.up_gate_proj") == "ffn_in"
    assert family.linear_role("ernie.layers.1.mlp.shared_experts.down_proj") == "ffn_out"
    assert family.linear_role("ernie.layers.1.mlp.gate") is None


def test_the_dispatch_record_names_each_experts_tokens_and_weights():
    """``keep_dispatch``: expert e's recorded rows are the tokens whose chosen experts hold e, with
    their mixing weights; its Linears see exactly those rows (calibration relies on both)."""
    block = _block_with_random_weights(1e-12)[0]
    x = paddle.to_tensor(np.random.default_rng(3).normal(size=(2, 5, 16)).astype("float32"))
    seen = {}

    def record(layer, inputs):
        seen["x"] = inputs[0].numpy()  # returns None: the inputs stay as they are

    handle = block.experts[1].up_gate_proj.register_forward_pre_hook(record)
    block.keep_dispatch = True
    with paddle.no_grad():
        block(x)
    handle.remove()
    tokens = x.numpy().reshape(-1, 16)
    _, chosen, weights = block.route(paddle.to_tensor(tokens))
    chosen, weights = chosen.numpy(), weights.numpy()
    record = block.dispatch
    assert record.tokens == 10
    for e in range(len(block.experts)):
        rows = record.rows[e].numpy()
        assert sorted(rows.tolist()) == sorted(np.nonzero((chosen == e).any(axis=1))[0].tolist())
        np.testing.assert_allclose(record.weights[e].numpy(), weights[rows][chosen[rows] == e], rtol=1e-6)
    np.testing.assert_array_equal(seen["x"], tokens[record.rows[1].numpy()])


def test_a_checkpoint_missing_an_expert_is_refused_in_one_line_before_any_command_uses_it(trained, tmp_path):
    from ernie_compress.checkpoint import load_checkpoint, save_checkpoint

    root, _ = trained
    ckpt = load_checkpoint(root / "m")
    state = {k: v for k, v in ckpt.state.items() if not k.startswith("ernie.layers.2.mlp.experts.1.")}
    save_checkpoint(tmp_path / "missing", ckpt.config, state, ckpt.tokenizer(), {"name": "planted"})
    line = _refused(["info", str(tmp_path / "missing")], tmp_path)
    assert "lack 2 mixture-of-experts tensor(s)" in line and "layers.2.mlp.experts.1." in line
    assert "lack" in _refused(["export", str(tmp_path / "missing"), "--out", str(tmp_path / "out")], tmp_path)
