"""A family registered from its own files alone (tests/models/toy_family.py: ERNIE 4.5 renamed, with
a different MLP; toy_family_onnx.py: its graph blocks) is quantized, pruned, smoothed and exported as a
cached decoder by the generic code, which finds every name through the family."""

from __future__ import annotations

import numpy as np
import pytest

from ernie_compress.models import build_model, model_from_state, model_state
from ernie_compress.models.families import FAMILIES, family_of
from ernie_compress.models.presets import resolve_preset
from ernie_compress.paddle_env import import_paddle
from ernie_compress.prune.strategies import PruneRequest, pruning_strategy
from ernie_compress.quantize.scheme import quantized_linear_names
from ernie_compress.quantize.weight_only import lm_head_weight

from . import toy_family

paddle = import_paddle()


@pytest.fixture
def toy(monkeypatch):
    monkeypatch.setitem(FAMILIES, "toy", toy_family.FAMILY)
    config = toy_family.FAMILY.config_class.from_dict(dict(
        resolve_preset("ernie45-tiny"), model_type="toy", architectures=["ToyForCausalLM"], vocab_size=50,
        hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0))
    model = build_model(config)
    model.eval()
    return model


def _logits(model, ids):
    with paddle.no_grad():
        return model(paddle.to_tensor(ids)).numpy()


def test_quantization_covers_the_toy_linears_and_its_tied_head(toy):
    expected = {f"decoder.layers.{i}.{m}" for i in range(toy.config.num_hidden_layers)
                for m in ("self_attn.qkv_proj", "self_attn.o_proj", "mlp.fc_in", "mlp.fc_out")}
    assert set(quantized_linear_names(toy)) == expected
    assert lm_head_weight(toy.config) == ("decoder.embed_tokens.weight", True)


def test_pruning_the_toy_gives_a_loadable_smaller_model(toy):
    request = PruneRequest(heads=0.5, ffn=0.25, params=None, importance="magnitude", importance_samples=1)
    outcome = pruning_strategy(toy.config).prune(request, toy, model_state(toy), toy.config, None, 0)
    config = outcome.config
    assert (config.num_attention_heads, config.num_key_value_heads) == (2, 2)
    assert config.intermediate_size == toy.config.intermediate_size - round(0.25 * toy.config.intermediate_size)
    pruned = model_from_state(config, outcome.state, "pruned toy")  # every name and shape as the toy needs
    assert outcome.state["decoder.layers.0.mlp.fc_out.weight"].shape[0] == config.intermediate_size
    assert _logits(pruned, np.array([[3, 4, 5, 6]])).shape == (1, 4, 50)


def test_smoothing_the_toy_by_its_map_leaves_it_unchanged(toy):
    ids = np.random.default_rng(0).integers(3, 50, size=(2, 6))
    before = _logits(toy, ids)
    sublayers = dict(toy.named_sublayers())
    rng = np.random.default_rng(1)
    for edge in family_of(toy.config).smoothing_map(toy.config.num_hidden_layers):
        scale = rng.uniform(0.25, 4.0, sublayers[edge.prev].weight.shape[0]).astype(np.float32)
        sublayers[edge.prev].weight.set_value(sublayers[edge.prev].weight.numpy() / scale)
        for name in edge.layers:
            sublayers[name].weight.set_value(sublayers[name].weight.numpy() * scale[:, None])
    after = _logits(toy, ids)
    assert np.abs(after - before).max() < 1e-4 * max(1.0, np.abs(before).max())
    assert not np.allclose(before, _logits(build_model(toy.config), ids))  # the check can tell models apart


def test_the_toy_exports_its_cached_decoder_through_its_own_blocks(toy):
    """The export composes the graph from the family's blocks module: the toy's decoder (its own names)
    gives the Paddle toy's next-token logits and a cache that continues the sequence."""
    import onnxruntime as ort

    from ernie_compress.export.decoder_onnx import build_decoder, cache_names, decoder_weights

    config = toy.config
    rng = np.random.default_rng(3)
    for name, param in toy.named_parameters():  # norms start at 1: make each one count
        if name.endswith("norm.weight"):
            param.set_value(rng.uniform(0.5, 1.5, param.shape).astype(np.float32))
    graph = build_decoder(config, decoder_weights(config, model_state(toy), None))
    session = ort.InferenceSession(graph.SerializeToString(), providers=["CPUExecutionProvider"])
    ids = np.random.default_rng(2).integers(3, 50, size=(2, 7)).astype("int64")
    past, _ = cache_names(config.num_hidden_layers)
    empty = np.zeros((2, config.num_key_value_heads, 0, config.head_dim), np.float32)

    def run(tokens, start, cache):
        feed = {"input_ids": tokens, "attention_mask": np.ones((2, start + tokens.shape[1]), "int64"),
                "position_ids": np.broadcast_to(np.arange(start, start + tokens.shape[1]), tokens.shape).copy()}
        return session.run(None, {**feed, **dict(zip(past, cache))})

    prompt = run(ids[:, :6], 0, [empty] * len(past))
    np.testing.assert_allclose(prompt[0], _logits(toy, ids[:, :6])[:, -1], rtol=1e-4, atol=1e-4)
    step = run(ids[:, 6:], 6, prompt[1:])
    np.testing.assert_allclose(step[0], _logits(toy, ids)[:, -1], rtol=1e-4, atol=1e-4)
