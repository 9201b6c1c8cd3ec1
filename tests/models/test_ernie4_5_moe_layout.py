"""ERNIE 4.5 MoE checkpoint layouts (models/ernie4_5_moe_layout.py): each layout written and read back
gives the same tensors and logits, and the file holds the names and shapes PaddleFormers 1.2.0's
default ``save_pretrained`` writes (checked here against the documented table, not our reader)."""

from __future__ import annotations

import numpy as np
import pytest
from safetensors.numpy import load_file

from ernie_compress.checkpoint import load_checkpoint, save_checkpoint
from ernie_compress.data.tokenizer import ErnieTokenizer
from ernie_compress.errors import UserError
from ernie_compress.models import build_model, model_from_state, model_state
from ernie_compress.models.families import config_from_dict
from ernie_compress.models.presets import resolve_preset
from ernie_compress.paddle_env import import_paddle

paddle = import_paddle()
IDS = np.array([[5, 9, 12, 30, 7, 2], [3, 4, 5, 6, 0, 0]], dtype="int64")
# name -> config changes: GQA (4 heads, 2 KV) throughout
CASES = {
    "shared_untied": dict(moe_num_shared_experts=1, tie_word_embeddings=False),
    "two_shared_tied": dict(moe_num_shared_experts=2, tie_word_embeddings=True),
    "no_shared_interval2": dict(moe_num_shared_experts=0, moe_layer_interval=2, moe_layer_start_index=1,
                                tie_word_embeddings=False),
}


def _config(**changes):
    keys = dict(resolve_preset("ernie45-moe-tiny"), vocab_size=40, hidden_dropout_prob=0.0,
                attention_probs_dropout_prob=0.0)
    return config_from_dict(dict(keys, **changes))


def _tokenizer(size: int) -> ErnieTokenizer:
    specials = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    return ErnieTokenizer(specials + [chr(0x4E00 + i) for i in range(size - len(specials))])


def _logits(model) -> np.ndarray:
    with paddle.no_grad():
        return model(paddle.to_tensor(IDS)).numpy()


def _saved(tmp_path, case: str, layout: str):
    config = _config(**CASES[case])
    paddle.seed(3)
    model = build_model(config)
    model.eval()
    for name, p in model.named_parameters():  # so that a swapped norm or bias would show
        if name.endswith(("norm.weight", "e_score_correction_bias")):
            p.set_value(paddle.uniform(p.shape, min=0.5, max=1.5))
    state = model_state(model)
    out = save_checkpoint(tmp_path / layout, config, state, _tokenizer(config.vocab_size), {"name": "init"},
                          layout=layout)
    return config, state, _logits(model), out


@pytest.mark.parametrize("layout", ["paddleformers", "hf", "ours"])
@pytest.mark.parametrize("case", sorted(CASES))
def test_each_layout_reads_back_to_the_same_tensors_and_logits(tmp_path, case, layout):
    config, state, logits, out = _saved(tmp_path, case, layout)
    ckpt = load_checkpoint(out)
    assert sorted(ckpt.state) == sorted(state)
    for name, value in state.items():
        np.testing.assert_array_equal(ckpt.state[name], value, err_msg=name)
    again = model_from_state(ckpt.config, ckpt.state, str(out))
    np.testing.assert_allclose(_logits(again), logits, rtol=0, atol=1e-6)
    assert ckpt.config.moe_layers == config.moe_layers


@pytest.mark.parametrize("case", sorted(CASES))
def test_the_paddleformers_file_has_the_documented_names_and_shapes(tmp_path, case):
    config, state, _, out = _saved(tmp_path, case, "paddleformers")
    written = load_file(out / "model.safetensors")
    h, E, f = config.hidden_size, config.moe_num_experts, config.moe_intermediate_size
    s = config.moe_num_shared_experts * f
    assert not any(k.startswith("ernie.") for k in written)
    assert ("lm_head.weight" in written) == (not config.tie_word_embeddings)
    if not config.tie_word_embeddings:
        np.testing.assert_array_equal(written["lm_head.weight"], state["lm_head.weight"].T)  # [vocab, h]
    for i in config.moe_layers:
        hf, ernie = f"model.layers.{i}.mlp.", f"ernie.layers.{i}.mlp."
        np.testing.assert_array_equal(written[hf + "gate.weight"], state[ernie + "gate.weight"].T)  # [E, h]
        assert written[hf + "gate.weight"].shape == (E, h)
        np.testing.assert_array_equal(written[hf + "moe_statics.e_score_correction_bias"],
                                      state[ernie + "moe_statics.e_score_correction_bias"])
        assert written[hf + "moe_statics.e_score_correction_bias"].shape == (1, E)
        experts = [(f"experts.{e}.", f) for e in range(E)] + ([("shared_experts.", s)] if s else [])
        assert (hf + "shared_experts.gate_proj.weight" in written) == bool(s)
        for expert, width in experts:
            fused = state[ernie + expert + "up_gate_proj.weight"]  # [h, 2w]: gate columns, then up
            np.testing.assert_array_equal(written[hf + expert + "gate_proj.weight"], fused[:, :width].T)  # [w, h]
            np.testing.assert_array_equal(written[hf + expert + "up_proj.weight"], fused[:, width:].T)
            np.testing.assert_array_equal(written[hf + expert + "down_proj.weight"],
                                          state[ernie + expert + "down_proj.weight"].T)  # [h, w]
            assert written[hf + expert + "down_proj.weight"].shape == (h, width)
    dense = next(i for i in range(config.num_hidden_layers) if i not in config.moe_layers)
    assert written[f"model.layers.{dense}.mlp.gate_proj.weight"].shape == (config.intermediate_size, h)
    heads, kv, d = config.num_attention_heads, config.num_key_value_heads, config.head_dim
    assert written["model.layers.1.self_attn.q_proj.weight"].shape == (heads * d, h)
    assert written["model.layers.1.self_attn.k_proj.weight"].shape == (kv * d, h)


def _fused_as_transformers_holds_them(written: dict[str, np.ndarray], config) -> dict[str, np.ndarray]:
    """The per-expert Hugging Face file as transformers 5 fuses it in memory (its conversion mapping:
    gate_up_proj [E, 2f, h] = each expert's gate rows then up rows, down_proj [E, h, f], the bias
    under mlp.gate.moe_statics), built here from the documented names."""
    fused = {k: v for k, v in written.items() if ".mlp.experts." not in k and "moe_statics" not in k}
    for i in config.moe_layers:
        p, experts = f"model.layers.{i}.mlp.", range(config.moe_num_experts)
        fused[p + "experts.gate_up_proj"] = np.stack([np.concatenate(
            [written[f"{p}experts.{e}.gate_proj.weight"], written[f"{p}experts.{e}.up_proj.weight"]]) for e in experts])
        fused[p + "experts.down_proj"] = np.stack([written[f"{p}experts.{e}.down_proj.weight"] for e in experts])
        fused[p + "gate.moe_statics.e_score_correction_bias"] = written[p + "moe_statics.e_score_correction_bias"]
    return fused


def test_transformers_fused_3d_experts_read_as_per_expert_and_other_shapes_are_refused(tmp_path):
    from ernie_compress.models.ernie4_5_moe_layout import normalize_moe_state

    config, state, _, out = _saved(tmp_path, "shared_untied", "hf")
    fused = _fused_as_transformers_holds_them(load_file(out / "model.safetensors"), config)
    _, read = normalize_moe_state(config, fused, {}, False)
    assert sorted(read) == sorted(state)
    for name, value in state.items():
        np.testing.assert_array_equal(read[name], value, err_msg=name)
    fused["model.layers.1.mlp.experts.down_proj"] = np.zeros((4, 16, 32), "float32")  # [E, f, h]: not read
    with pytest.raises(UserError, match=r"one tensor of shape \[4, 16, 32\]"):
        normalize_moe_state(config, fused, {}, False)


def test_release_names_read_as_ours_and_an_ambiguous_fused_qkv_is_refused(tmp_path):
    from ernie_compress.models.ernie4_5_moe_layout import normalize_moe_state

    config, state, _, _ = _saved(tmp_path, "shared_untied", "ours")
    mtp = dict(state, **{"ernie.mtp_linear_proj.0.weight": np.zeros((2, 2), "float32")})
    _, read = normalize_moe_state(config, mtp, {}, True)
    assert sorted(read) == sorted(state)  # ours, multi-token-prediction weights dropped
    with pytest.raises(UserError, match="column order|KV group|queries, keys and values"):
        normalize_moe_state(config, state, {}, False)  # 'ernie.*' from another tool, 2 KV groups


def test_train_writes_an_moe_model_with_layout_paddleformers_and_info_reads_it(tmp_path):
    from tests.helpers import NEGATIVE, POSITIVE, cli_json

    data = tmp_path / "lm"
    data.mkdir()
    for split in ("train", "dev", "test"):
        (data / f"{split}.txt").write_text("\n".join(POSITIVE + NEGATIVE), encoding="utf-8")
    cli_json(["train", "--task", "lm", "--data", str(data), "--preset", "ernie45-moe-tiny", "--epochs", "1",
              "--batch-size", "8", "--layout", "paddleformers", "--out", str(tmp_path / "m")])
    written = load_file(tmp_path / "m" / "model.safetensors")
    assert "model.layers.1.mlp.experts.0.gate_proj.weight" in written
    assert not any(k.startswith("ernie.") for k in written)
    info = cli_json(["info", str(tmp_path / "m")])
    assert info["architecture"] == "Ernie4_5_MoeForCausalLM" and info["experts_per_layer"] == [0, 4, 4]
    generated = cli_json(["generate", str(tmp_path / "m"), "--prompt", "质量太差", "--max-new-tokens", "2"])
    assert len(generated["results"][0]["tokens"]) == 2
