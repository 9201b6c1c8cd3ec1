"""ERNIE 4.5 MoE exports: the decoder graph composed from ``models/ernie4_5_moe_onnx.py`` equals
dygraph at prefill and every step with each way of running the experts (fused MoE, QMoE, one Linear
per expert), the full-sequence ``model.onnx`` equals the forward on a right-padded batch, the kernel
choice follows the weights, a planted routing bug is caught, and the CLI exports, verifies, refuses
``--format paddle`` and generates from the export."""

from __future__ import annotations

import json

import numpy as np
import onnxruntime as ort
import pytest
from typer.testing import CliRunner

from ernie_compress.checkpoint import load_checkpoint, save_checkpoint
from ernie_compress.cli import app
from ernie_compress.export.decoder_onnx import build_decoder, decoder_weights, kernel_counts
from ernie_compress.models import build_model, ernie4_5_moe_onnx, model_state
from ernie_compress.models.families import config_from_dict, family_of
from ernie_compress.models.presets import resolve_preset
from ernie_compress.paddle_env import import_paddle
from ernie_compress.quantize.weight_only import dequantize, quantize_rtn
from ernie_compress.runtime.decoding import OnnxDecoder, generate_tokens
from tests.helpers import NEGATIVE, POSITIVE, cli_json

paddle = import_paddle()
PROMPT = [1, 7, 9, 23, 5, 41, 2]


def _session(model) -> ort.InferenceSession:
    options = ort.SessionOptions()
    options.log_severity_level = 3
    return ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])


def _biased(state: dict[str, np.ndarray], seed: int = 0) -> dict[str, np.ndarray]:
    """Routers with varied scores and a correction bias large enough to change which experts are
    chosen (a trained tiny model's bias is 0: choosing on unbiased scores would go unnoticed)."""
    rng = np.random.default_rng(seed)
    state = dict(state)
    for name, value in state.items():
        if name.endswith("e_score_correction_bias"):
            state[name] = rng.normal(0, 0.15, value.shape).astype(np.float32)
        elif name.endswith("mlp.gate.weight"):
            state[name] = rng.normal(0, 1.0, value.shape).astype(np.float32)
    return state


def _moe_model(**changes):
    keys = dict(resolve_preset("ernie45-moe-tiny"), vocab_size=70, hidden_dropout_prob=0.0,
                attention_probs_dropout_prob=0.0, **changes)
    paddle.seed(0)
    model = build_model(config_from_dict(keys))
    state = _biased(model_state(model))
    model.set_state_dict({k: paddle.to_tensor(v) for k, v in state.items()})
    model.eval()
    return model, state


def _dygraph(model) -> dict:
    return generate_tokens(family_of(model.config).cached_decoder(model), PROMPT, 10, eos_id=-1)


@pytest.mark.parametrize("experts, kernel", [("fused", "MoE"), ("dispatch", None), ("auto", None)])
@pytest.mark.parametrize("changes", [{}, {"moe_num_shared_experts": 0, "tie_word_embeddings": False},
                                     {"moe_layer_start_index": 0, "moe_layer_interval": 2, "num_key_value_heads": 1}])
def test_float_decoder_equals_dygraph_at_prefill_and_every_step(experts, kernel, changes):
    model, state = _moe_model(**changes)
    graph = build_decoder(model.config, decoder_weights(model.config, state, None, experts=experts))
    moe_layers = sum(model.config.is_moe_layer(i) for i in range(model.config.num_hidden_layers))
    assert kernel_counts(graph).get("MoE", 0) == (moe_layers if kernel else 0)
    expected, got = _dygraph(model), generate_tokens(OnnxDecoder(_session(graph)), PROMPT, 10, eos_id=-1)
    np.testing.assert_allclose(got["logits"], expected["logits"], atol=1e-5)
    assert got["tokens"] == expected["tokens"]


@pytest.mark.parametrize("experts", ["fused", "dispatch"])
def test_the_fused_attention_decoder_equals_dygraph(experts):
    """GroupQueryAttention (head size 16) in an MoE decoder, prefill and steps, and the full-sequence graph."""
    model, state = _moe_model(head_dim=16)
    weights = decoder_weights(model.config, state, None, experts=experts)
    graph = build_decoder(model.config, weights, fused_attention=True)
    assert kernel_counts(graph)["GroupQueryAttention"] == model.config.num_hidden_layers
    expected, got = _dygraph(model), generate_tokens(OnnxDecoder(_session(graph)), PROMPT, 10, eos_id=-1)
    np.testing.assert_allclose(got["logits"], expected["logits"], atol=1e-5)
    assert got["tokens"] == expected["tokens"]
    ids = np.array([PROMPT], np.int64)
    full = _session(build_decoder(model.config, weights, full_sequence=True, fused_attention=True)).run(
        None, {"input_ids": ids})[0]  # [1, s, vocab]
    with paddle.no_grad():
        np.testing.assert_allclose(full, model(paddle.to_tensor(ids)).numpy(), atol=1e-5)


def test_full_sequence_graph_equals_the_forward_on_a_right_padded_batch():
    model, state = _moe_model()
    graph = build_decoder(model.config, decoder_weights(model.config, state, None), full_sequence=True)
    assert [i.name for i in graph.graph.input] == ["input_ids"] and [o.name for o in graph.graph.output] == ["logits"]
    ids = np.array([PROMPT, [1, 30, 12, 0, 0, 0, 0]])
    with paddle.no_grad():
        expected = model(paddle.to_tensor(ids)).numpy()  # [2, 7, vocab]
    got = _session(graph).run(None, {"input_ids": ids})[0]
    np.testing.assert_allclose(got[0], expected[0], atol=1e-5)
    np.testing.assert_allclose(got[1, :3], expected[1, :3], atol=1e-5)  # the real positions of the padded row


def _weight_only(model, state, bits: int, group: int | None):
    """The model with RTN-quantized experts (dequantized into dygraph) and the checkpoint entry naming them."""
    state = dict(state)
    quantized = {}
    for name in state:
        if ".experts." in name and name.endswith(".weight"):
            codes, scales = quantize_rtn(state[name], bits, group)
            state[name] = dequantize(codes, scales, group).astype(np.float32)
            quantized[name] = {"bits": bits, "group_size": group}
    model.set_state_dict({k: paddle.to_tensor(v) for k, v in state.items()})
    return state, {"weights": quantized}


@pytest.mark.parametrize("bits, group, experts, kernel, atol", [
    (4, 16, "auto", "QMoE", 1e-4), (4, None, "auto", "QMoE", 1e-4),  # int4: QMoE (blocks of 16 from per-channel codes)
    (8, 16, "auto", None, 1e-4),  # int8: one MatMulNBits per expert unless asked ...
    (8, 16, "fused", "QMoE", 1e-3),  # ... for QMoE, whose int8 kernel quantizes activations per block (~2e-4 here)
])
def test_integer_experts_run_as_the_kernel_choice_says_and_equal_the_dequantized_model(bits, group, experts, kernel,
                                                                                        atol):
    model, state = _moe_model()
    state, quant = _weight_only(model, state, bits, group)
    graph = build_decoder(model.config, decoder_weights(model.config, state, quant, experts=experts))
    counts = kernel_counts(graph)
    assert counts.get("QMoE", 0) == (2 if kernel == "QMoE" else 0) and "MoE" not in counts
    assert counts["MatMulNBits"] == (0 if kernel else 2 * 4 * 2)  # dispatch: 4 experts x 2 Linears x 2 layers
    expected, got = _dygraph(model), generate_tokens(OnnxDecoder(_session(graph)), PROMPT, 10, eos_id=-1)
    np.testing.assert_allclose(got["logits"], expected["logits"], atol=atol)
    assert got["tokens"] == expected["tokens"]


@pytest.mark.parametrize("experts", ["fused", "dispatch"])
def test_a_router_choosing_on_unbiased_scores_is_caught(experts, monkeypatch):
    """The planted bug of the issue: top-k on the softmax without the correction bias."""
    model, state = _moe_model()
    real = ernie4_5_moe_onnx.router

    def unbiased_choice(g, x2, config, names):
        return real(g, x2, config, ernie4_5_moe_onnx.MoENames(**{**names.__dict__, "correction_bias": None}))

    monkeypatch.setattr(ernie4_5_moe_onnx, "router", unbiased_choice)
    graph = build_decoder(model.config, decoder_weights(model.config, state, None, experts=experts))
    got = generate_tokens(OnnxDecoder(_session(graph)), PROMPT, 10, eos_id=-1)
    assert np.abs(got["logits"] - _dygraph(model)["logits"]).max() > 1e-3


# --- the CLI -----------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def moe_lm(tmp_path_factory):
    """A tiny MoE causal LM trained a few epochs, then given biased routers (see :func:`_biased`)."""
    root = tmp_path_factory.mktemp("moe-export")
    data = root / "lm"
    data.mkdir()
    for split, copies in (("train", 3), ("dev", 1), ("test", 1)):
        (data / f"{split}.txt").write_text("\n".join((POSITIVE + NEGATIVE) * copies), encoding="utf-8")
    cli_json(["train", "--task", "lm", "--data", str(data), "--preset", "ernie45-moe-tiny", "--out",
              str(root / "trained"), "--epochs", "4", "--lr", "5e-3", "--batch-size", "8"])
    ckpt = load_checkpoint(root / "trained")
    save_checkpoint(root / "m", ckpt.config, _biased(ckpt.state), ckpt.tokenizer(), {"name": "biased routers"},
                    parent=ckpt)
    return root


def _refused(args: list[str], out) -> str:
    res = CliRunner().invoke(app, ["--quiet", *args])
    lines = [line for line in res.stderr.splitlines() if line.strip()]
    assert res.exit_code == 2 and len(lines) == 1 and lines[0].startswith("error: "), (args, res.output)
    assert not out.exists()
    return lines[0]


def test_export_writes_verified_onnx_skips_paddle_and_generate_runs_it(moe_lm):
    out = cli_json(["export", str(moe_lm / "m"), "--out", str(moe_lm / "e")])  # --format all
    assert "paddle" not in out["files"] and "does not trace" in out["skipped"]["paddle"]
    assert out["verification"]["onnx"]["max_abs_diff"] < 1e-4
    check = out["verification"]["decoder"]
    assert check["greedy_tokens_equal"] and check["max_abs_diff"] < 1e-4
    assert "MoE" not in out["files"]["decoder"]["kernels"]  # auto: float experts one MatMul each
    manifest = json.loads((moe_lm / "e" / "manifest.json").read_text())
    assert manifest["skipped"]["paddle"] == out["skipped"]["paddle"]
    text = CliRunner().invoke(app, ["export", str(moe_lm / "m"), "--format", "onnx", "--moe-experts", "fused",
                                    "--out", str(moe_lm / "e2")]).stdout
    assert "decoder (fp32 compute): verified" in text and "decoder experts: 2 MoE layer(s)" in text
    prompts = ["--prompt", "质量太差", "--prompt", "服务态度很", "--max-new-tokens", "8"]
    from_export = cli_json(["generate", str(moe_lm / "e"), *prompts])
    from_checkpoint = cli_json(["generate", str(moe_lm / "m"), *prompts])
    assert from_export["runs_on"].startswith("onnxruntime")
    assert [r["tokens"] for r in from_export["results"]] == [r["tokens"] for r in from_checkpoint["results"]]
    assert "use --format onnx" in _refused(["export", str(moe_lm / "m"), "--format", "paddle", "--out",
                                            str(moe_lm / "p")], moe_lm / "p")


def test_weight_only_int4_exports_qmoe_and_a_wrong_graph_is_refused(moe_lm, monkeypatch):
    cli_json(["quantize", str(moe_lm / "m"), "--weight-only", "int4", "--group-size", "16", "--out",
              str(moe_lm / "w4")])
    out = cli_json(["export", str(moe_lm / "w4"), "--format", "onnx", "--weight-only-compute", "fp32",
                    "--out", str(moe_lm / "e4")])
    assert out["files"]["decoder"]["kernels"]["QMoE"] == 2 and out["verification"]["decoder"]["greedy_tokens_equal"]
    real = ernie4_5_moe_onnx.router

    def unbiased_choice(g, x2, config, names):
        return real(g, x2, config, ernie4_5_moe_onnx.MoENames(**{**names.__dict__, "correction_bias": None}))

    monkeypatch.setattr(ernie4_5_moe_onnx, "router", unbiased_choice)
    assert "failed verification" in _refused(["export", str(moe_lm / "w4"), "--format", "onnx", "--out",
                                              str(moe_lm / "bad")], moe_lm / "bad")
