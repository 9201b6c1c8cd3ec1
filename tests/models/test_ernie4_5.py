"""ERNIE 4.5 dense decoder: RoPE and GQA against hand-written numpy references, causality,
last-token pooling, the published Paddle layout (fused and separate names), refusals."""

from __future__ import annotations

import json

import numpy as np
import pytest
from safetensors.numpy import save_file
from typer.testing import CliRunner

from ernie_compress.checkpoint import load_checkpoint
from ernie_compress.cli import app
from ernie_compress.data.tokenizer import ErnieTokenizer
from ernie_compress.errors import UserError
from ernie_compress.models import build_model, count_parameters, model_from_state, model_state
from ernie_compress.models.families import config_from_dict
from ernie_compress.models.ernie4_5 import apply_rope, rope_angles
from ernie_compress.models.presets import resolve_preset
from ernie_compress.paddle_env import import_paddle

paddle = import_paddle()
VOCAB = ["[PAD]", "[CLS]", "[SEP]", "[MASK]", "[UNK]"] + [chr(0x4e00 + i) for i in range(45)]


def tiny(**changes):
    keys = dict(resolve_preset("ernie45-tiny"), vocab_size=len(VOCAB), hidden_dropout_prob=0.0,
                attention_probs_dropout_prob=0.0)
    keys.update(changes)
    return config_from_dict(keys)


def _run(model, ids):
    model.eval()
    with paddle.no_grad():
        return model(paddle.to_tensor(ids)).numpy()


def numpy_rope(x: np.ndarray, theta: float) -> np.ndarray:
    """Interleaved rotary embedding, written out pair by pair: x [s, heads, d]."""
    s, h, d = x.shape
    out = np.empty_like(x)
    for pos in range(s):
        for i in range(d // 2):
            angle = pos * theta ** (-2 * i / d)
            c, si = np.cos(angle), np.sin(angle)
            a, b = x[pos, :, 2 * i], x[pos, :, 2 * i + 1]
            out[pos, :, 2 * i] = a * c - b * si
            out[pos, :, 2 * i + 1] = b * c + a * si
    return out


def test_rope_matches_the_pairwise_reference_and_is_relative():
    rng = np.random.default_rng(0)
    x = rng.standard_normal((5, 3, 8)).astype(np.float32)
    cos, sin = rope_angles(5, 8, 500000.0)
    ours = apply_rope(paddle.to_tensor(x[None]), cos, sin).numpy()[0]
    np.testing.assert_allclose(ours, numpy_rope(x, 500000.0), atol=1e-5)
    # <rope(q, m), rope(k, n)> depends only on m - n
    q, k = rng.standard_normal(8).astype(np.float32), rng.standard_normal(8).astype(np.float32)
    seq = np.stack([q, k] * 4)[:, None, :]  # positions 0..7, q at even, k at odd positions
    rotated = numpy_rope(seq, 10000.0)[:, 0]
    assert np.dot(rotated[2], rotated[3]) == pytest.approx(np.dot(rotated[4], rotated[5]), rel=1e-4)


def numpy_decoder_layer_attention(model, x: np.ndarray) -> np.ndarray:
    """Causal GQA by hand: each query head h reads KV head h // (heads / kv_heads)."""
    cfg = model.config
    attn = model.ernie.layers[0].self_attn
    w = attn.qkv_proj.weight.numpy()
    h, kv, d = cfg.num_attention_heads, cfg.num_key_value_heads, cfg.head_dim
    mix = (x @ w).reshape(x.shape[0], h + 2 * kv, d)
    q, k, v = mix[:, :h], mix[:, h:h + kv], mix[:, h + kv:]
    q, k = numpy_rope(q, cfg.rope_theta), numpy_rope(k, cfg.rope_theta)
    s = x.shape[0]
    out = np.zeros((s, h, d), dtype=np.float32)
    for head in range(h):
        g = head // (h // kv)
        scores = q[:, head] @ k[:, g].T / np.sqrt(d)
        scores = scores + np.triu(np.full((s, s), -1e4), 1)
        p = np.exp(scores - scores.max(-1, keepdims=True))
        p /= p.sum(-1, keepdims=True)
        out[:, head] = p @ v[:, g]
    return out.reshape(s, h * d) @ attn.o_proj.weight.numpy()


@pytest.mark.parametrize("heads, kv_heads", [(4, 2), (4, 1), (4, 4)])
def test_gqa_attention_matches_the_reference(heads, kv_heads):
    model = build_model(tiny(num_attention_heads=heads, num_key_value_heads=kv_heads))
    model.eval()
    x = np.random.default_rng(1).standard_normal((6, 32)).astype(np.float32)
    layer = model.ernie.layers[0]
    cos, sin = rope_angles(6, model.config.head_dim, model.config.rope_theta)
    bias = paddle.unsqueeze(paddle.triu(paddle.full([6, 6], -1e4), diagonal=1), [0, 1])
    with paddle.no_grad():
        ours = layer.self_attn(paddle.to_tensor(x[None]), cos, sin, bias).numpy()[0]
    np.testing.assert_allclose(ours, numpy_decoder_layer_attention(model, x), atol=1e-4)


def test_causal_lm_is_causal_and_classifier_reads_the_last_real_token():
    lm = build_model(tiny())
    ids = np.array([[5, 9, 12, 30, 7]])
    changed = ids.copy()
    changed[0, 4] = 40
    a, b = _run(lm, ids), _run(lm, changed)
    assert a.shape == (1, 5, len(VOCAB))
    np.testing.assert_allclose(a[0, :4], b[0, :4], atol=1e-5)  # earlier positions never see later tokens
    assert not np.allclose(a[0, 4], b[0, 4])
    clf = build_model(tiny(architectures=["Ernie4_5ForSequenceClassification"], id2label={0: "n", 1: "p"}))
    padded = np.array([[5, 9, 12, 0, 0], [5, 9, 12, 30, 7]])
    out = _run(clf, padded)
    np.testing.assert_allclose(out[0], _run(clf, padded[:1, :3])[0], atol=1e-5)  # padding is invisible


def test_the_published_preset_has_the_published_size():
    config = config_from_dict(resolve_preset("ernie-4.5-0.3b"))
    assert (config.num_hidden_layers, config.hidden_size, config.num_attention_heads, config.num_key_value_heads,
            config.head_dim, config.intermediate_size, config.vocab_size) == (18, 1024, 16, 2, 128, 3072, 103424)
    model = build_model(config)
    counts = count_parameters({k: v.shape for k, v in model.state_dict().items()})
    assert counts["total"] == 360_748_032  # ~0.36B, tied embeddings counted once
    assert "lm_head.weight" not in model.state_dict()


def _published_dir(tmp_path, model, separate: bool, torch_layout: bool = False):
    """A checkpoint as the Paddle release stores it (optionally with separate q/k/v, gate/up)."""
    cfg = model.config
    state = model_state(model)
    h, kv, d = cfg.num_attention_heads, cfg.num_key_value_heads, cfg.head_dim
    if separate:
        for i in range(cfg.num_hidden_layers):
            p = f"ernie.layers.{i}."
            qkv = state.pop(p + "self_attn.qkv_proj.weight")
            state[p + "self_attn.q_proj.weight"] = qkv[:, :h * d]
            state[p + "self_attn.k_proj.weight"] = qkv[:, h * d:(h + kv) * d]
            state[p + "self_attn.v_proj.weight"] = qkv[:, (h + kv) * d:]
            gate, up = np.split(state.pop(p + "mlp.up_gate_proj.weight"), 2, axis=1)
            state[p + "mlp.gate_proj.weight"], state[p + "mlp.up_proj.weight"] = gate, up
    if torch_layout:
        state = {k.replace("ernie.", "model.", 1): (v.T if v.ndim == 2 and "_proj." in k else v)
                 for k, v in state.items()}  # Linear weights [out, in]; the embedding stays [vocab, hidden]
    state["lm_head.weight"] = state.get("ernie.embed_tokens.weight", np.zeros(1))  # releases store it tied
    directory = tmp_path / ("torch" if torch_layout else "separate" if separate else "fused")
    directory.mkdir()
    save_file({k: np.ascontiguousarray(v) for k, v in state.items()}, str(directory / "model.safetensors"))
    keys = cfg.to_dict()
    if not torch_layout:
        keys["architectures"] = ["Ernie4_5_ForCausalLM"]  # the Paddle release's spelling says which order
    (directory / "config.json").write_text(json.dumps(keys))
    ErnieTokenizer(VOCAB).save(directory)
    return directory


@pytest.mark.parametrize("separate", [False, True])
def test_a_checkpoint_in_the_published_layout_loads_and_runs(tmp_path, separate):
    model = build_model(tiny())
    directory = _published_dir(tmp_path, model, separate)
    ckpt = load_checkpoint(directory)
    loaded = model_from_state(ckpt.config, ckpt.state, str(directory))
    ids = np.array([[5, 9, 12, 30, 7]])
    np.testing.assert_allclose(_run(loaded, ids), _run(model, ids), atol=1e-5)
    res = CliRunner().invoke(app, ["--json", "info", str(directory)])
    assert res.exit_code == 0 and json.loads(res.stdout)["model_type"] == "ernie4_5"


def test_the_hugging_face_layout_loads_with_the_same_outputs(tmp_path):
    """'model.*' names with [out, in] matrices (the -PT release, transformers): a rename and a transpose."""
    model = build_model(tiny())
    directory = _published_dir(tmp_path, model, separate=True, torch_layout=True)
    ckpt = load_checkpoint(directory)
    ids = np.array([[5, 9, 12, 30, 7]])
    np.testing.assert_allclose(_run(model_from_state(ckpt.config, ckpt.state, "x"), ids), _run(model, ids), atol=1e-5)


def test_a_fused_file_of_unknown_qkv_order_is_refused_not_misread(tmp_path):
    """PaddleFormers' per-KV-group fused qkv renamed to 'ernie.*' without its metadata has the shapes of the
    release's all-q/all-k/all-v order: refused, never loaded wrongly."""
    from ernie_compress.models.ernie4_5_layout import _grouped_to_sequential

    cfg = tiny()
    state = model_state(build_model(cfg))
    h, kv, d, g = cfg.num_attention_heads, cfg.num_key_value_heads, cfg.head_dim, cfg.queries_per_group
    for i in range(cfg.num_hidden_layers):  # re-order ours into PaddleFormers' per-group columns
        name = f"ernie.layers.{i}.self_attn.qkv_proj.weight"
        q, k, v = np.split(state[name], [h * d, (h + kv) * d], axis=1)
        grouped = np.concatenate([np.concatenate([q[:, j * g * d:(j + 1) * g * d], k[:, j * d:(j + 1) * d],
                                                  v[:, j * d:(j + 1) * d]], axis=1) for j in range(kv)], axis=1)
        np.testing.assert_array_equal(_grouped_to_sequential(grouped, cfg), state[name])  # the reader's inverse
        state[name] = grouped
    directory = tmp_path / "renamed"
    directory.mkdir()
    save_file({k: np.ascontiguousarray(v) for k, v in state.items()}, str(directory / "model.safetensors"))
    (directory / "config.json").write_text(json.dumps(cfg.to_dict()))
    with pytest.raises(UserError, match="nothing in the checkpoint says which"):
        load_checkpoint(directory)
    # the same file under PaddleFormers' own names and its "source" key reads correctly
    named = {k.replace("ernie.", "model.", 1): v for k, v in state.items()}
    save_file({k: np.ascontiguousarray(v) for k, v in named.items()}, str(directory / "model.safetensors"))
    with pytest.raises(UserError, match='does not say "source": "paddle"'):  # PaddleFormers' names alone: refused
        load_checkpoint(directory)
    (directory / "config.json").write_text(json.dumps(dict(cfg.to_dict(), source="paddle")))
    ckpt = load_checkpoint(directory)
    ids = np.array([[5, 9, 12, 30, 7]])
    original = {k: v for k, v in state.items()}
    for i in range(cfg.num_hidden_layers):
        name = f"ernie.layers.{i}.self_attn.qkv_proj.weight"
        original[name] = _grouped_to_sequential(state[name], cfg)
    np.testing.assert_allclose(_run(model_from_state(ckpt.config, ckpt.state, "x"), ids),
                               _run(model_from_state(cfg, original, "x"), ids), atol=1e-5)


@pytest.mark.parametrize("changes", [{"model_type": "ernie4_5_moe_vl"}, {"moe_num_experts": 64}])
def test_a_moe_config_the_dense_config_cannot_read_is_refused_clearly(tmp_path, changes):
    """The multimodal MoE type, and MoE keys under the dense model_type (text MoE models are
    ernie4_5_moe, tests/models/test_ernie4_5_moe.py)."""
    keys = tiny().to_dict()
    keys.update(changes)
    (tmp_path / "config.json").write_text(json.dumps(keys))
    res = CliRunner().invoke(app, ["info", str(tmp_path)])
    assert res.exit_code == 2
    assert "mixture-of-experts" in res.stderr and "'ernie4_5_moe'" in res.stderr and "Traceback" not in res.output


@pytest.mark.parametrize("model_type", ["ernie4_5", "ernie4_5_moe"])
def test_rope_theta_is_read_from_transformers_rope_parameters_and_scaled_rope_is_refused(tmp_path, model_type):
    """transformers >= 5 writes ``rope_parameters`` and no top-level ``rope_theta`` (its theta wins over
    a top-level one there, as here); another ``rope_type`` is one line, exit code 2."""
    keys = dict(resolve_preset("ernie45-moe-tiny" if model_type == "ernie4_5_moe" else "ernie45-tiny"),
                vocab_size=40, model_type=model_type)
    keys.pop("rope_theta", None)
    config = config_from_dict(dict(keys, rope_parameters={"rope_type": "default", "rope_theta": 10000.0}))
    assert config.rope_theta == 10000.0
    assert config_from_dict(dict(keys, rope_theta=7.0, rope_parameters={"rope_theta": 9.0})).rope_theta == 9.0
    (tmp_path / "config.json").write_text(json.dumps(dict(keys, rope_parameters={"rope_type": "yarn",
                                                                                  "rope_theta": 1e4})))
    res = CliRunner().invoke(app, ["info", str(tmp_path)])
    assert res.exit_code == 2 and "rope_type 'yarn'" in res.stderr and "Traceback" not in res.output


@pytest.mark.parametrize("changes", [{}, {"tie_word_embeddings": False, "use_bias": True, "num_key_value_heads": 1}])
def test_causal_lm_shapes_are_the_models_parameters(changes):
    """The shapes benchmarks/decoding.py builds weights from, without Paddle, are the model's."""
    from ernie_compress.models import build_model
    from ernie_compress.models.families import config_from_dict
    from ernie_compress.models.presets import resolve_preset

    config = config_from_dict(dict(resolve_preset("ernie45-tiny"), vocab_size=50, **changes))
    model = build_model(config)
    assert config.causal_lm_shapes() == {name: tuple(p.shape) for name, p in model.named_parameters()}
