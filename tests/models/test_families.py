"""Each family's declarations (models/architecture.py) name the real parameters of a built model:
parameter names, Linear roles (experts included), the smoothing map (checked to leave the model's
function unchanged), the output head and the distillation signals. A mixture-of-experts layer has
routed and shared experts where a dense layer has its FFN (``config.is_moe_layer``)."""

from __future__ import annotations

import re

import numpy as np
import pytest

from ernie_compress.errors import UserError
from ernie_compress.models import build_model
from ernie_compress.models.families import FAMILIES, config_from_dict, family_of, require_distillation
from ernie_compress.models.presets import resolve_preset
from ernie_compress.paddle_env import import_paddle

paddle = import_paddle()

PRESET = {"ernie": "tiny", "ernie4_5": "ernie45-tiny", "ernie4_5_moe": "ernie45-moe-tiny"}
# (family, task kind, config changes): every architecture each family builds
CASES = [(model_type, kind, {}) for model_type, family in FAMILIES.items() for kind in family.architecture_for_kind
         ] + [("ernie4_5", "causal_lm", {"tie_word_embeddings": False, "use_bias": True})]


def _model(model_type: str, kind: str, changes: dict):
    family = FAMILIES[model_type]
    keys = dict(resolve_preset(PRESET[model_type]), vocab_size=60, id2label={0: "neg", 1: "pos"},
                architectures=[family.architecture_for(kind)], hidden_dropout_prob=0.0,
                attention_probs_dropout_prob=0.0, **changes)
    model = build_model(config_from_dict(keys))
    model.eval()
    return model


def _id(case) -> str:
    return f"{case[0]}-{case[1]}" + ("-untied" if case[2] else "")


def _linears_in_layers(model) -> dict[str, object]:
    """Linear sublayers inside the layers, by full name."""
    prefix = family_of(model.config).names.layer_prefix
    return {name: layer for name, layer in model.named_sublayers()
            if name.startswith(prefix) and isinstance(layer, paddle.nn.Linear)}


def _is_moe_layer(config, i: int) -> bool:
    return getattr(config, "is_moe_layer", lambda _: False)(i)


def _expert_free(relative: str) -> str:
    """A routed or shared expert's Linear named as the dense FFN's ("mlp.experts.3.down_proj" -> "mlp.down_proj")."""
    return re.sub(r"\.(?:experts\.\d+|shared_experts)\.", ".", relative)


@pytest.mark.parametrize("case", CASES, ids=_id)
def test_parameter_names_are_the_models_parameters(case):
    model = _model(*case)
    names, state = family_of(model.config).names, model.state_dict()
    for i in range(model.config.num_hidden_layers):
        ffn = (*names.ffn_in, names.ffn_out)
        for module in names.layer_modules():
            if module in ffn and _is_moe_layer(model.config, i):  # experts instead, each with the FFN's names
                assert any(_expert_free(k[len(names.layer(i)):]) == f"{module}.weight" and ".experts." in k
                           for k in state), (i, module)
                continue
            assert names.in_layer(i, module) in state, (i, module)
        assert any(k.startswith(names.layer(i) + names.attention + ".") for k in state)
    assert names.word_embedding in state
    for module in (names.final_norm, names.embedding_norm):
        assert module is None or f"{module}.weight" in state
    backbone = names.layer_prefix.split(".")[0] + "."
    outside = {k.split(".")[0] for k in state if not k.startswith(backbone)}
    if model.task_kind != "masked_lm":  # its MLM head is pre-training machinery, not a task head
        assert outside <= set(names.task_heads), outside
        assert outside or model.task_kind == "causal_lm"


@pytest.mark.parametrize("case", CASES, ids=_id)
def test_every_linear_in_a_layer_has_the_role_its_names_say(case):
    model = _model(*case)
    family = family_of(model.config)
    names = family.names
    expected = {**{m: "attention_in" for m in names.attention_in}, names.attention_out: "attention_out",
                **{m: "ffn_in" for m in names.ffn_in}, names.ffn_out: "ffn_out"}
    linears = _linears_in_layers(model)
    moe_layers = sum(_is_moe_layer(model.config, i) for i in range(model.config.num_hidden_layers))
    if not moe_layers:
        assert len(linears) == len(expected) * model.config.num_hidden_layers
    routers = 0
    for name in linears:
        relative = name[len(names.layer_prefix):].partition(".")[2]
        routers += relative == "mlp.gate"
        assert family.linear_role(name) == expected.get(_expert_free(relative)), name  # the router: no role
    assert routers == moe_layers


@pytest.mark.parametrize("name, role", [
    ("ernie.layers.3.mlp.experts.7.up_proj", "ffn_in"),
    ("ernie.layers.3.mlp.experts.7.gate_proj", "ffn_in"),
    ("ernie.layers.3.mlp.experts.12.down_proj", "ffn_out"),
    ("ernie.layers.0.mlp.experts.0.up_gate_proj", "ffn_in"),
    ("ernie.layers.0.mlp.shared_experts.up_proj", "ffn_in"),
    ("ernie.layers.0.mlp.shared_experts.gate_proj", "ffn_in"),
    ("ernie.layers.0.mlp.shared_experts.down_proj", "ffn_out"),
    ("ernie.layers.1.self_attn.q_proj", "attention_in"),
    ("ernie.layers.1.mlp.gate", None),  # the MoE router is not an FFN Linear
    ("ernie.layers.1.mlp.experts.x.up_proj", None),
    ("ernie.layers.1.mlp.experts.0.up_proj.extra", None),
    ("ernie.norm", None),
    ("lm_head", None),
])
def test_linear_roles_cover_experts_and_shared_experts(name, role):
    assert FAMILIES["ernie4_5"].linear_role(name) == role


def _out_width(layer) -> int:
    return layer.weight.shape[-1]  # a norm's [hidden] or a Linear's [in, out]


@pytest.mark.parametrize("model_type", sorted(FAMILIES))
def test_smoothing_map_names_real_modules_of_matching_width(model_type):
    model = _model(model_type, next(iter(FAMILIES[model_type].architecture_for_kind)), {})
    sublayers = dict(model.named_sublayers())
    edges = list(family_of(model.config).smoothing_map(model.config.num_hidden_layers))
    assert len(edges) == len(FAMILIES[model_type].smoothing) * model.config.num_hidden_layers > 0
    for edge in edges:
        prev = sublayers[edge.prev]
        for name in edge.layers:
            linear = sublayers[name]
            assert isinstance(linear, paddle.nn.Linear), name
            if edge.part is None:
                assert linear.weight.shape[0] == _out_width(prev), (edge.prev, name)
            else:  # a part of a fused Linear's output columns
                assert linear.weight.shape[0] <= _out_width(prev) and isinstance(prev, paddle.nn.Linear)


def _scale_edge_(sublayers, edge, scale) -> None:
    """Divide ``scale`` out of prev's output channels and into the layers' input rows."""
    prev = sublayers[edge.prev]
    prev.weight.set_value(prev.weight.numpy() / scale)  # [hidden] or [in, out]: the last axis
    if getattr(prev, "bias", None) is not None:
        prev.bias.set_value(prev.bias.numpy() / scale)
    for name in edge.layers:
        weight = sublayers[name].weight
        weight.set_value(weight.numpy() * scale[:, None])  # [in, out]: the rows


@pytest.mark.parametrize("model_type", sorted(FAMILIES))
def test_smoothing_an_unfused_edge_leaves_the_model_unchanged(model_type):
    """The map's claim: a scale moved across an edge computes the same function. (Put post-LN
    ERNIE 3.0's norm1 -> linear1 in the map and this fails: norm1 also feeds the residual.)"""
    model = _model(model_type, next(iter(FAMILIES[model_type].architecture_for_kind)), {})
    ids = paddle.to_tensor(np.random.default_rng(0).integers(3, 60, size=(2, 7)))
    with paddle.no_grad():
        before = model(ids).numpy()
        sublayers = dict(model.named_sublayers())
        edges = [e for e in family_of(model.config).smoothing_map(model.config.num_hidden_layers) if e.part is None]
        assert edges
        rng = np.random.default_rng(1)
        for edge in edges:
            width = sublayers[edge.layers[0]].weight.shape[0]
            _scale_edge_(sublayers, edge, rng.uniform(0.25, 4.0, width).astype(np.float32))
        after = model(ids).numpy()
    assert np.abs(after - before).max() < 1e-4 * max(1.0, np.abs(before).max())
    assert not all(np.allclose(sublayers[e.prev].weight.numpy(), 1.0) for e in edges)  # weights did move


def test_output_head_is_the_tied_embedding_or_lm_head():
    tied, untied = _model("ernie4_5", "causal_lm", {}), _model("ernie4_5", "causal_lm", {"tie_word_embeddings": False})
    family = FAMILIES["ernie4_5"]
    assert family.output_head(tied.config) == (family.names.word_embedding, True)
    name, is_tied = family.output_head(untied.config)
    assert not is_tied and name in untied.state_dict() and name not in tied.state_dict()
    assert family.output_head(_model("ernie4_5", "classification", {}).config) is None
    assert FAMILIES["ernie"].output_head(_model("ernie", "classification", {}).config) is None


def test_distillation_signals_refuse_with_the_families_that_give_them():
    decoder = _model("ernie4_5", "classification", {}).config
    with pytest.raises(UserError, match=r"attention \(MiniLM\) distillation is for ERNIE 3\.0 models; distill "
                                        r"ERNIE 4\.5 models with logits"):
        require_distillation(decoder, "attention_relations")
    require_distillation(decoder, "hidden_states")
    require_distillation(_model("ernie", "classification", {}).config, "attention_relations")
