"""A toy family for tests: ERNIE 4.5 renamed (backbone ``decoder.``) with one different block, an
MLP whose Linears are ``mlp.fc_in`` (gate | up) and ``mlp.fc_out``. Only this file and its
``FAMILY`` entry describe it; the algorithms find everything through the family."""

from __future__ import annotations

import dataclasses

from ernie_compress.models.architecture import LinearRoles, ParameterNames, ScaleMapping
from ernie_compress.models.ernie4_5_family import FAMILY as ERNIE4_5
from ernie_compress.paddle_env import import_paddle

paddle = import_paddle()
nn = paddle.nn


class ToyMLP(nn.Layer):
    """SwiGLU with other names: ``fc_out(silu(gate) * up)``, ``fc_in`` giving gate | up."""

    def __init__(self, config):
        super().__init__()
        self.fc_in = nn.Linear(config.hidden_size, 2 * config.intermediate_size, bias_attr=False)
        self.fc_out = nn.Linear(config.intermediate_size, config.hidden_size, bias_attr=False)

    def forward(self, x):
        gate, up = paddle.split(self.fc_in(x), 2, axis=-1)  # [b, s, ffn] each
        return self.fc_out(nn.functional.silu(gate) * up)


class ToyForCausalLM(nn.Layer):
    task_kind = "causal_lm"

    def __init__(self, config):
        from ernie_compress.models.ernie4_5 import Ernie45Model

        super().__init__()
        self.config = config
        self.decoder = Ernie45Model(config)
        for layer in self.decoder.layers:
            layer.mlp = ToyMLP(config)

    def forward(self, input_ids, token_type_ids=None, head_mask=None, record=None):
        hidden = self.decoder(input_ids, record, head_mask)
        return paddle.matmul(hidden, self.decoder.embed_tokens.weight, transpose_y=True)  # tied head


ARCHITECTURES = {"ToyForCausalLM": ToyForCausalLM}

NAMES = ParameterNames(
    layer_prefix="decoder.layers.", attention="self_attn", attention_in=("self_attn.qkv_proj",),
    attention_out="self_attn.o_proj", ffn_in=("mlp.fc_in",), ffn_out="mlp.fc_out",
    norms=("input_layernorm", "post_attention_layernorm"), embedding="decoder.embed_tokens",
    final_norm="decoder.norm", task_heads=())

FAMILY = dataclasses.replace(
    ERNIE4_5, model_type="toy", title="Toy", implementation=__name__,
    architecture_for_kind={"causal_lm": "ToyForCausalLM"}, names=NAMES, onnx_blocks="tests.models.toy_family_onnx",
    linear_roles=LinearRoles({"attention_in": (r"self_attn\.qkv_proj",), "attention_out": (r"self_attn\.o_proj",),
                              "ffn_in": (r"mlp\.fc_in",), "ffn_out": (r"mlp\.fc_out",)}),
    smoothing=(ScaleMapping("input_layernorm", ("self_attn.qkv_proj",)),
               ScaleMapping("post_attention_layernorm", ("mlp.fc_in",))))
