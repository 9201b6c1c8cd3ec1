"""ERNIE 4.5, dense and mixture-of-experts, against Hugging Face transformers 5.0-5.3 (PyTorch, CPU), the
math reference: logits on a right-padded batch agree within 1e-5 of the logit scale, both directions.

Us -> transformers: a random model of ours written with ``--layout hf`` loads in
``AutoModelForCausalLM.from_pretrained`` as ``Ernie4_5_MoeForCausalLM`` / ``Ernie4_5ForCausalLM``
with no weight missing or left over (but the correction bias where ``moe_use_aux_free`` is false: we
have none, transformers always has one and starts it at zero). Transformers -> us: transformers builds
a random model and ``save_pretrained``\\ s it; our reader loads it (``info`` too) with its logits.
One transformers process serves every case (``reference_transformers.py``; the module's fixture).

What transformers' ``save_pretrained`` writes for experts: transformers 5 holds them in memory as fused
3-D tensors (``mlp.experts.gate_up_proj`` [E, 2f, h], ``mlp.experts.down_proj`` [E, h, f], the
correction bias as ``mlp.gate.moe_statics.e_score_correction_bias``), but its save
(``save_original_format=True``, the default) reverts that conversion and writes the per-expert Hugging
Face names PaddleFormers writes too (``mlp.experts.{e}.gate_proj/up_proj/down_proj`` [out, in],
``mlp.gate.weight`` [E, h], ``mlp.moe_statics.e_score_correction_bias`` [1, E]); with
``save_original_format=False`` it writes the fused tensors as they are in memory. Our reader takes
both (which one each save holds is checked here by name and shape; one case saves fused).

Routing: the random routers and correction biases on both sides are drawn so that for some real
tokens the top-k of the biased scores differs from the top-k of the unbiased softmax (asserted), so a
model that chose experts on the unbiased scores or weighted them with the biased ones fails here
(planted both ways in ``Ernie45MoeBlock.route``: the MoE cases fail). Cases (``cases.py``): routed
experts from layer 0, 1 or 2, every layer or every other one, an end index before the last layer,
0, 1 or 2 shared experts, 4 experts top-2 and 6 top-3, GQA, MQA and MHA, tied and untied, sharded
saves, ``moe_use_aux_free`` false; and two dense configs.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
from cases import TRANSFORMERS_BASE, TRANSFORMERS_CASES
from ours import REAL, run, vocab_tokenizer
from safetensors.numpy import load_file
from tests.interop.helpers import assert_close, run_reference

pytestmark = pytest.mark.interop
CASES = sorted(TRANSFORMERS_CASES)
MOE_CASES = [c for c in CASES if TRANSFORMERS_CASES[c][0] == "Ernie4_5_MoeForCausalLM"]


def _config(case: str):
    from ernie_compress.models.families import config_from_dict

    arch, changes, _ = TRANSFORMERS_CASES[case]
    model_type = "ernie4_5_moe" if arch == "Ernie4_5_MoeForCausalLM" else "ernie4_5"
    return config_from_dict(dict(TRANSFORMERS_BASE, **changes, model_type=model_type, architectures=[arch]))


def _random_model(config, seed: int):
    """Our model of ``config`` with Paddle's initialisation, norms in [0.5, 1.5] and correction biases
    in [-0.15, 0.15] (so they change some tokens' top-k, see the module docstring)."""
    import paddle

    from ernie_compress.models import build_model

    paddle.seed(seed)
    model = build_model(config)
    model.eval()
    for name, p in model.named_parameters():
        if name.endswith("norm.weight"):
            p.set_value(paddle.uniform(p.shape, min=0.5, max=1.5))
        elif name.endswith("e_score_correction_bias"):
            p.set_value(paddle.uniform(p.shape, min=-0.15, max=0.15))
    return model


def _routing_flips(model) -> int:
    """Real tokens (summed over MoE layers) whose top-k on softmax + correction bias differs from the
    top-k on the softmax alone, computed here from the router's weights, not by the block's route()."""
    import paddle

    inputs = []
    hooks = [block.register_forward_pre_hook(lambda layer, args: inputs.append((layer, args[0])))
             for block in model.moe_blocks() if block.moe_statics is not None]
    run(model)
    for hook in hooks:
        hook.remove()
    real = REAL.reshape(-1)
    flips = 0
    for block, x in inputs:
        probs = paddle.nn.functional.softmax(paddle.reshape(x, [-1, x.shape[-1]]) @ block.gate.weight, -1)  # [T, E]
        biased = probs + block.moe_statics.e_score_correction_bias
        chosen = [np.sort(paddle.topk(s, block.top_k, axis=-1)[1].numpy(), -1) for s in (probs, biased)]  # [T, k]
        flips += int(np.any(chosen[0] != chosen[1], axis=-1)[real].sum())
    return flips


@pytest.fixture(scope="module")
def exchanged(tmp_path_factory):
    """Our hf-layout saves and their logits, then one transformers run over every case: the folder and
    our logits per case."""
    from ernie_compress.checkpoint import save_checkpoint
    from ernie_compress.models import model_state

    root = tmp_path_factory.mktemp("transformers")
    ours = {}
    for seed, case in enumerate(CASES, start=7):
        config = _config(case)
        model = _random_model(config, seed)
        if config.model_type == "ernie4_5_moe" and config.moe_use_aux_free:
            assert _routing_flips(model) > 0, "no token's choice depends on the correction bias"
        save_checkpoint(root / case / "ours", config, model_state(model), vocab_tokenizer(config.vocab_size),
                        {"name": "init"}, layout="hf")
        ours[case] = run(model)
    versions = json.loads(run_reference("transformers", str(root), *CASES, script="reference_transformers.py"))
    print(f"transformers {versions['transformers']}, torch {versions['torch']}")
    return root, ours


@pytest.mark.parametrize("case", CASES)
def test_transformers_loads_ours_with_our_logits(exchanged, case):
    root, ours = exchanged
    arch, changes, _ = TRANSFORMERS_CASES[case]
    loading = json.loads((root / case / "loading.json").read_text())
    assert loading["class"] == arch and loading["unexpected"] == []
    without_bias = arch == "Ernie4_5_MoeForCausalLM" and not changes["moe_use_aux_free"]
    assert all(k.endswith("moe_statics.e_score_correction_bias") for k in loading["missing"]) and (
        bool(loading["missing"]) == without_bias), loading["missing"]
    assert_close(ours[case], np.load(root / case / "ours_in_transformers.npy"), REAL)


def _written(folder) -> dict[str, tuple[int, ...]]:
    return {k: v.shape for f in sorted(folder.glob("*.safetensors")) for k, v in load_file(f).items()}


def _expert_tensors(written: dict[str, tuple[int, ...]], config) -> str:
    """How a transformers save holds the first MoE layer's experts: 'per expert' ([out, in] each) or
    'fused' (one [E, 2f, h] gate_up_proj and one [E, h, f] down_proj)."""
    p = f"model.layers.{config.moe_layers[0]}.mlp.experts."
    e, f, h = config.moe_num_experts, config.moe_intermediate_size, config.hidden_size
    per_expert = written.get(f"{p}{e - 1}.gate_proj.weight") == (f, h)
    fused = (written.get(p + "gate_up_proj"), written.get(p + "down_proj")) == ((e, 2 * f, h), (e, h, f))
    return {(True, False): "per expert", (False, True): "fused"}.get((per_expert, fused), "neither")


@pytest.mark.parametrize("case", CASES)
def test_we_load_a_transformers_save_with_its_logits(exchanged, case):
    from ernie_compress.checkpoint import load_checkpoint
    from ernie_compress.models import model_from_state
    from tests.helpers import cli_json

    root, _ = exchanged
    folder = root / case / "theirs"
    config = _config(case)
    if "max_shard_size" in TRANSFORMERS_CASES[case][2]:
        assert (folder / "model.safetensors.index.json").is_file()
    ckpt = load_checkpoint(folder)
    model = model_from_state(ckpt.config, ckpt.state, str(folder))
    assert (ckpt.config.architecture, ckpt.config.rope_theta, ckpt.config.rms_norm_eps) == (
        config.architecture, config.rope_theta, config.rms_norm_eps)
    if case in MOE_CASES:
        assert _expert_tensors(_written(folder), config) == (
            "fused" if TRANSFORMERS_CASES[case][2].get("save_original_format") is False else "per expert")
        info = cli_json(["info", str(folder)])
        assert info["experts_per_layer"] == config.experts_per_layer and info["experts_per_token"] == config.moe_k
        if config.moe_use_aux_free:
            assert _routing_flips(model) > 0, "no token's choice depends on the correction bias"
    assert_close(run(model), np.load(root / case / "theirs_logits.npy"), REAL)  # [b, s, vocab] both
