"""ERNIE 4.5 MoE against PaddleFormers 1.2.0, both directions, tensor by tensor.

PaddleFormers -> us: its default ``save_pretrained`` (the Hugging Face layout: per-expert
``gate_proj``/``up_proj``/``down_proj`` [out, in], router [E, h]; one case sharded into several files
with an index) loads in our reader with every tensor equal to PaddleFormers' in-memory state dict.
Us -> PaddleFormers: what we write with ``--layout paddleformers`` loads in its ``from_pretrained``
with its state dict equal to our model's. No logits: PaddleFormers' MoE layer calls a GPU-only
kernel, so its MoE forward cannot run on a CPU.

PaddleFormers' state dict is mapped to our names here, independently of our reader: ``model.`` ->
``ernie.``, its ``qkv_proj`` columns per KV group (each group's queries, key, value) -> all queries,
all keys, all values, ``lm_head`` [vocab, h] -> [h, vocab] (dropped when tied); every other tensor
(router [h, E], fused ``up_gate_proj`` gate then up, [in, out] Linears) is ours as it is.
"""

from __future__ import annotations

import numpy as np
import pytest
from cases import ERNIE45_MOE_BASE, ERNIE45_MOE_CASES
from tests.interop.helpers import run_reference

pytestmark = pytest.mark.interop


def _config(case: str):
    from ernie_compress.models.families import config_from_dict

    return config_from_dict(dict(ERNIE45_MOE_BASE, **ERNIE45_MOE_CASES[case][0], model_type="ernie4_5_moe",
                                 architectures=["Ernie4_5_MoeForCausalLM"]))


def _sequential_qkv(qkv: np.ndarray, heads: int, kv: int, d: int) -> np.ndarray:
    """[h, kv*(g+2)*d] per KV group (g = heads / kv queries, its key, its value) -> [h, all q | all k | all v]."""
    g = heads // kv
    groups = qkv.reshape(qkv.shape[0], kv, g + 2, d)  # [h, kv, g+2, d]
    q = groups[:, :, :g].reshape(qkv.shape[0], -1)
    return np.concatenate([q, groups[:, :, g].reshape(qkv.shape[0], -1),
                           groups[:, :, g + 1].reshape(qkv.shape[0], -1)], axis=-1)


def _theirs_as_ours(state, config) -> dict[str, np.ndarray]:
    out = {}
    for name in state.files if hasattr(state, "files") else state:
        value = state[name]
        if name == "lm_head.weight":
            if not config.tie_word_embeddings:
                out[name] = value.T  # [vocab, h] -> [h, vocab]
            continue
        new = "ernie." + name[len("model."):]
        if new.endswith("self_attn.qkv_proj.weight"):
            value = _sequential_qkv(value, config.num_attention_heads, config.num_key_value_heads, config.head_dim)
        out[new] = value
    return out


def _assert_same_state(ours: dict[str, np.ndarray], theirs: dict[str, np.ndarray]) -> None:
    assert sorted(ours) == sorted(theirs)
    for name, value in theirs.items():
        np.testing.assert_array_equal(np.asarray(ours[name]), value, err_msg=name)


@pytest.mark.parametrize("case", sorted(ERNIE45_MOE_CASES))
def test_a_paddleformers_moe_save_loads_with_its_tensors(tmp_path, case):
    from ernie_compress.checkpoint import load_checkpoint

    run_reference("paddleformers", "save_moe", case, str(tmp_path))
    if "max_shard_size" in ERNIE45_MOE_CASES[case][1]:
        assert len(list((tmp_path / "model").glob("model-*-of-*.safetensors"))) > 1
    ckpt = load_checkpoint(tmp_path / "model")
    config = _config(case)
    assert ckpt.config.moe_layers == config.moe_layers and ckpt.config.architecture == "Ernie4_5_MoeForCausalLM"
    _assert_same_state(ckpt.state, _theirs_as_ours(np.load(tmp_path / "state.npz"), config))


@pytest.mark.parametrize("case", sorted(ERNIE45_MOE_CASES))
def test_our_paddleformers_moe_layout_loads_in_paddleformers(tmp_path, case):
    import paddle
    from ours import vocab_tokenizer

    from ernie_compress.checkpoint import save_checkpoint
    from ernie_compress.models import build_model, model_state

    config = _config(case)
    paddle.seed(7)
    model = build_model(config)
    for name, p in model.named_parameters():  # away from their constant init, so a mix-up shows
        if name.endswith(("norm.weight", "e_score_correction_bias")):
            p.set_value(paddle.uniform(p.shape, min=0.5, max=1.5))
    ours = model_state(model)  # the model's own tensors, not read back through our reader
    save_checkpoint(tmp_path / "ours", config, ours, vocab_tokenizer(config.vocab_size), {"name": "init"},
                    layout="paddleformers")
    run_reference("paddleformers", "load_moe", str(tmp_path / "ours"), str(tmp_path / "theirs.npz"))
    _assert_same_state(ours, _theirs_as_ours(np.load(tmp_path / "theirs.npz"), config))
