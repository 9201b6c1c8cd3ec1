"""GQA-aware pruning of the ERNIE 4.5 decoder: groups stay equal, layers stay uniform, and the
pruned model computes what the original computes with the removed heads masked."""

from __future__ import annotations

import numpy as np
import pytest

from ernie_compress.errors import UserError
from ernie_compress.models import build_model, model_from_state, model_state
from ernie_compress.models.families import config_from_dict
from ernie_compress.models.presets import resolve_preset
from ernie_compress.paddle_env import import_paddle
from ernie_compress.prune import gqa

paddle = import_paddle()


def _model(heads=8, kv=2, ffn=64):
    keys = dict(resolve_preset("ernie45-tiny"), vocab_size=50, num_attention_heads=heads, num_key_value_heads=kv,
                intermediate_size=ffn, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
    model = build_model(config_from_dict(keys))
    model.eval()
    return model


def _run(model, ids, head_mask=None):
    with paddle.no_grad():
        return model(paddle.to_tensor(ids), head_mask=head_mask).numpy()


@pytest.mark.parametrize("mode, removed_units", [("queries", 1), ("queries", 3), ("groups", 1)])
def test_pruned_model_equals_the_masked_original_and_keeps_groups_even(mode, removed_units):
    model = _model()
    config, state = model.config, model_state(model)
    rng = np.random.default_rng(0)
    scores = [rng.random(config.num_attention_heads) for _ in range(config.num_hidden_layers)]
    ffn = [np.ones(config.intermediate_size)] * config.num_hidden_layers
    heads, groups, neurons = gqa.keep_lists(scores, ffn, config, mode, removed_units, 0)
    new_state, new_config = gqa.prune_gqa_state(state, config, heads, groups, neurons)
    g_after = new_config.num_attention_heads // new_config.num_key_value_heads
    assert new_config.num_attention_heads % new_config.num_key_value_heads == 0
    if mode == "queries":
        assert new_config.num_key_value_heads == 2 and g_after == 4 - removed_units
        for layer in heads:  # every group keeps the same number of its own heads
            assert [sum(1 for h in layer if h // 4 == grp) for grp in range(2)] == [g_after, g_after]
    else:
        assert new_config.num_key_value_heads == 1 and g_after == 4
    pruned = model_from_state(new_config, new_state, "pruned")
    ids = rng.integers(5, 50, size=(2, 9))
    mask = [paddle.to_tensor(np.isin(np.arange(8), keep).astype("float32")) for keep in heads]
    np.testing.assert_allclose(_run(pruned, ids), _run(model, ids, mask), atol=1e-5)


def test_ffn_pruning_keeps_gate_and_up_columns_together():
    model = _model()
    config, state = model.config, model_state(model)
    neurons = [[0, 5, 9]] * config.num_hidden_layers
    heads = [list(range(8))] * config.num_hidden_layers
    groups = [[0, 1]] * config.num_hidden_layers
    new_state, new_config = gqa.prune_gqa_state(state, config, heads, groups, neurons)
    up_gate = new_state["ernie.layers.0.mlp.up_gate_proj.weight"]
    original = state["ernie.layers.0.mlp.up_gate_proj.weight"]
    np.testing.assert_array_equal(up_gate[:, :3], original[:, [0, 5, 9]])  # gate half
    np.testing.assert_array_equal(up_gate[:, 3:], original[:, [64, 69, 73]])  # up half
    assert new_config.intermediate_size == 3


def test_plan_removal_granularity_and_parameter_target():
    config = _model().config  # 8 query heads in 2 groups of 4
    assert gqa.plan_removal(config, "queries", 0.25, None, None) == (1, 0)
    assert gqa.plan_removal(config, "groups", 0.5, None, None) == (1, 0)
    with pytest.raises(UserError, match="steps of 1/2"):
        gqa.plan_removal(config, "groups", 0.1, None, None)
    r, n = gqa.plan_removal(config, "queries", None, None, 0.15)
    head_unit, neuron = gqa._unit_parameters(config, "queries")
    removed = r * head_unit + n * neuron
    assert 0.15 <= removed / gqa.decoder_parameters(config) < 0.15 + neuron / gqa.decoder_parameters(config) + 1e-9
