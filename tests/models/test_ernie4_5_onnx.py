"""models/ernie4_5_onnx.py: every ONNX block, built alone and run in ONNX Runtime, equals its Paddle
layer on the same random weights and inputs (one generic test over the blocks, for a GQA model with
biases and tied head and an MQA model with an untied head and its own RMSNorm epsilon and RoPE
base); the name table names exactly the Paddle model's parameters.

A new block is one entry in ``BLOCKS``: how to build it, which Paddle layer it mirrors, what it reads.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from functools import lru_cache

import numpy as np
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper

from ernie_compress.models import build_model, model_state
from ernie_compress.models import ernie4_5_onnx as blocks
from ernie_compress.models.ernie4_5 import rope_angles
from ernie_compress.models.families import config_from_dict
from ernie_compress.models.onnx_graph import GraphBuilder
from ernie_compress.models.presets import resolve_preset
from ernie_compress.paddle_env import import_paddle

paddle = import_paddle()
BATCH, SEQ, PAST, LAYER = 2, 5, 3, 1  # LAYER: the blocks read the second layer's parameters
VARIANTS = {"gqa_tied_bias": dict(num_key_value_heads=2, tie_word_embeddings=True, use_bias=True),
            "mqa_untied": dict(num_key_value_heads=1, tie_word_embeddings=False, use_bias=False,
                               rms_norm_eps=1e-3, rope_theta=500000.0)}  # not the preset's: a constant would pass
HEAD_DIM = 16  # GroupQueryAttention's CPU kernel takes multiples of 16 (the fused blocks)


@lru_cache(maxsize=None)
def _model(variant: str):
    """A tiny ERNIE 4.5 causal LM whose every parameter (norm weights and biases included) is random."""
    keys = dict(resolve_preset("ernie45-tiny"), vocab_size=40, hidden_dropout_prob=0.0, head_dim=HEAD_DIM,
                attention_probs_dropout_prob=0.0, **VARIANTS[variant])
    model = build_model(config_from_dict(keys))
    rng = np.random.default_rng(7)
    state = {name: (rng.normal(1.0 if "norm" in name else 0.0, 0.3, size=value.shape)).astype(np.float32)
             for name, value in model_state(model).items()}
    model.set_state_dict(state)
    model.eval()
    return model


def _hidden(config, rng, seq: int = SEQ) -> np.ndarray:
    """[b, s, hidden]; the second row small (mean square ~1e-4), where RMSNorm's epsilon counts."""
    x = rng.standard_normal((BATCH, seq, config.hidden_size)).astype(np.float32)
    x[1] *= 1e-2
    return x


def _attention_feeds(config, rng, past: int, seq: int = SEQ) -> dict[str, np.ndarray]:
    """Hidden states, their positions after ``past`` cached ones, a cache, and the mask
    [b, 1, 1, s, past + s]: causal, and row 1's first key is padding."""
    shape = (BATCH, config.num_key_value_heads, past, config.head_dim)
    total = past + seq
    hidden = rng.standard_normal((BATCH, seq, config.hidden_size)).astype(np.float32)
    future = np.arange(total)[None, :] > np.arange(past, total)[:, None]  # [s, T]
    hidden_keys = np.zeros((BATCH, total), dtype=bool)
    hidden_keys[1, 0] = True
    masked = future[None] | hidden_keys[:, None, :]  # [b, s, T]
    return {"x": hidden,
            "position_ids": np.tile(np.arange(past, total, dtype=np.int64), (BATCH, 1)),
            "bias": np.where(masked, np.float32(-1e4), np.float32(0.0))[:, None, None],
            "past_key": rng.standard_normal(shape).astype(np.float32),
            "past_value": rng.standard_normal(shape).astype(np.float32)}


def _attention_io(g: GraphBuilder, config, fused: bool = False) -> blocks.AttentionIO:
    cos, sin = blocks.rope_tables(g, "position_ids", config)
    return blocks.AttentionIO(cos, sin, "bias", past=("past_key", "past_value"),
                              present=("present_key", "present_value"),
                              fused=blocks.fused_attention_inputs(g, "position_ids", "bias", config) if fused else None)


def _paddle_attention_args(config, feeds):
    """What the Paddle layer reads for the same feeds: cos/sin [s, d], bias [b, 1, s, T], the cache
    (None when empty, as for a prompt)."""
    past, seq = feeds["past_key"].shape[2], feeds["x"].shape[1]
    cos, sin = rope_angles(seq, config.head_dim, config.rope_theta, start=past)
    cache = None if past == 0 else (paddle.to_tensor(feeds["past_key"]), paddle.to_tensor(feeds["past_value"]))
    return paddle.to_tensor(feeds["x"]), cos, sin, paddle.to_tensor(feeds["bias"][:, 0]), cache


def _onnx_attention(g, config, feeds, fused: bool = False):
    out, present = blocks.attention(g, "x", config, blocks.NAMES.layer(LAYER), _attention_io(g, config, fused))
    return [out, *present]


def _fused_attention(g, config, feeds):
    """The attention block as GroupQueryAttention (rotary inside)."""
    return _onnx_attention(g, config, feeds, fused=True)


def _paddle_attention(model, feeds):
    out, present = model.ernie.layers[LAYER].self_attn.attend(*_paddle_attention_args(model.config, feeds))
    return [out, *present]


def _onnx_layer(g, config, feeds, fused: bool = False):
    out, present = blocks.decoder_layer(g, "x", config, blocks.NAMES.layer(LAYER), _attention_io(g, config, fused))
    return [out, *present]


def _paddle_layer(model, feeds):
    x, cos, sin, bias, cache = _paddle_attention_args(model.config, feeds)
    out, present = model.ernie.layers[LAYER].forward_cached(x, cos, sin, bias, cache)
    return [out, *present]


@dataclass(frozen=True)
class Block:
    """One ONNX block against its Paddle layer: the feeds, the graph's outputs, the layer's outputs."""

    feeds: Callable[..., dict[str, np.ndarray]]  # (config, rng) -> inputs by graph input name
    onnx: Callable[..., list[str]]  # (g, config, feeds) -> output names
    paddle: Callable[..., list]  # (model, feeds) -> tensors, in the same order


BLOCKS = {
    "embedding": Block(
        lambda c, rng: {"ids": rng.integers(0, c.vocab_size, (BATCH, SEQ)).astype(np.int64)},
        lambda g, c, f: [blocks.embedding(g, "ids", blocks.NAMES.embedding)],
        lambda m, f: [m.ernie.embed_tokens(paddle.to_tensor(f["ids"]))]),
    "rms_norm": Block(
        lambda c, rng: {"x": _hidden(c, rng)},
        lambda g, c, f: [blocks.rms_norm(g, "x", blocks.NAMES.layer(LAYER).post_norm, c.rms_norm_eps)],
        lambda m, f: [m.ernie.layers[LAYER].post_attention_layernorm(paddle.to_tensor(f["x"]))]),
    "final_norm": Block(
        lambda c, rng: {"x": _hidden(c, rng)},
        lambda g, c, f: [blocks.rms_norm(g, "x", blocks.NAMES.final_norm, c.rms_norm_eps)],
        lambda m, f: [m.ernie.norm(paddle.to_tensor(f["x"]))]),
    "attention_prompt": Block(lambda c, rng: _attention_feeds(c, rng, 0), _onnx_attention, _paddle_attention),
    "attention_cached": Block(lambda c, rng: _attention_feeds(c, rng, PAST), _onnx_attention, _paddle_attention),
    "mlp": Block(
        lambda c, rng: {"x": _hidden(c, rng)},
        lambda g, c, f: [blocks.mlp(g, "x", c, blocks.NAMES.layer(LAYER))],
        lambda m, f: [m.ernie.layers[LAYER].mlp(paddle.to_tensor(f["x"]))]),
    # GroupQueryAttention: a prompt (a batch of them), and a step on the cache (more than one new token
    # on a cache takes a batch of one in its kernel)
    "attention_fused_prompt": Block(lambda c, rng: _attention_feeds(c, rng, 0), _fused_attention, _paddle_attention),
    "attention_fused_cached": Block(lambda c, rng: _attention_feeds(c, rng, PAST, seq=1), _fused_attention,
                                    _paddle_attention),
    "decoder_layer": Block(lambda c, rng: _attention_feeds(c, rng, PAST), _onnx_layer, _paddle_layer),
    "decoder_layer_fused": Block(lambda c, rng: _attention_feeds(c, rng, PAST, seq=1),
                                 lambda g, c, f: _onnx_layer(g, c, f, fused=True), _paddle_layer),
    "head": Block(
        lambda c, rng: {"x": _hidden(c, rng)[:, -1]},  # [b, hidden]: the decoder reads the last position
        lambda g, c, f: [blocks.head(g, "x", c, blocks.NAMES)],
        lambda m, f: [m.logits(paddle.to_tensor(f["x"]))]),
}


def _run_block(g: GraphBuilder, outputs: list[str], feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
    inputs = [helper.make_tensor_value_info(name, helper.np_dtype_to_tensor_dtype(a.dtype), a.shape)
              for name, a in feeds.items()]
    model = g.model("block", inputs, [helper.make_tensor_value_info(n, TensorProto.FLOAT, None) for n in outputs])
    options = ort.SessionOptions()
    options.log_severity_level = 3
    session = ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])
    return session.run(outputs, feeds)


@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize("name", BLOCKS)
def test_each_onnx_block_equals_its_paddle_layer(name, variant):
    model, block = _model(variant), BLOCKS[name]
    feeds = block.feeds(model.config, np.random.default_rng(3))
    g = GraphBuilder(model_state(model))
    got = _run_block(g, block.onnx(g, model.config, feeds), feeds)
    with paddle.no_grad():
        expected = [t.numpy() for t in block.paddle(model, feeds)]
    assert [a.shape for a in got] == [e.shape for e in expected]
    if "bias" in feeds:  # a query that sees no key (padding at a prompt's start) has no defined output
        blind = (feeds["bias"] < 0).all(axis=-1)[:, 0, 0]  # [b, s]
        got[0][blind], expected[0][blind] = 0.0, 0.0
    for a, e in zip(got, expected):
        np.testing.assert_allclose(a, e, rtol=1e-5, atol=2e-5)


def test_a_rotary_offset_in_the_fused_attention_is_caught():
    """The planted bug the fused blocks' check must catch: GroupQueryAttention fed positions one ahead."""
    model, block = _model("gqa_tied_bias"), BLOCKS["attention_fused_cached"]
    feeds = block.feeds(model.config, np.random.default_rng(3))
    g = GraphBuilder(model_state(model))
    io = _attention_io(g, model.config)
    ahead = g.op("Add", "position_ids", g.const("one_ahead", np.ones((), np.int64)))
    io = blocks.AttentionIO(io.cos, io.sin, io.bias, io.past, io.present,
                            fused=blocks.fused_attention_inputs(g, ahead, "bias", model.config))
    out, _ = blocks.attention(g, "x", model.config, blocks.NAMES.layer(LAYER), io)
    got = _run_block(g, [out], feeds)[0]
    with paddle.no_grad():
        expected = block.paddle(model, feeds)[0].numpy()
    assert np.abs(got - expected).max() > 1e-2


@pytest.mark.parametrize("variant", VARIANTS)
def test_the_name_table_names_exactly_the_paddle_models_parameters(variant):
    model = _model(variant)
    config, names = model.config, blocks.NAMES
    named = {names.embedding, names.final_norm}
    if not config.tie_word_embeddings:
        named.add(f"{names.lm_head}.weight")
    for i in range(config.num_hidden_layers):
        layer = names.layer(i)
        named |= {layer.input_norm, layer.post_norm}
        for linear in (layer.qkv, layer.out, layer.up_gate, layer.down):
            named |= {f"{linear}.weight"} | ({f"{linear}.bias"} if config.use_bias else set())
    assert named == set(model_state(model))
