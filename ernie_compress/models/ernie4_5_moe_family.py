"""The ERNIE 4.5 mixture-of-experts family: the dense ERNIE 4.5 declarations plus the MoE MLP.

Parameter names as the Paddle release (``ernie4_5_moe.py`` lists every name and shape): the dense
family's attention, norms, embedding and head, and in MoE layers ``mlp.gate`` (the router, no
Linear role: it stays FP32 and unquantized, as both references keep it), ``mlp.experts.{e}`` and
``mlp.shared_experts`` (each a fused SwiGLU ``up_gate_proj`` and a ``down_proj``: the dense MLP's
roles, through the ERNIE 4.5 role patterns) and ``mlp.moe_statics.e_score_correction_bias``.
``ParameterNames.ffn_in``/``ffn_out`` name the dense MLP; MoE layers have experts there instead.
:data:`ROUTED_EXPERTS` locates a routed expert's Linears (its block and index), so calibration (GPTQ's
per-expert Hessians) reads the tokens the block's dispatch record sent to that expert.

Smoothing: in every layer ``input_layernorm`` feeds the fused qkv and the values feed ``o_proj``
(as dense). ``post_attention_layernorm`` feeds more than Linears in an MoE layer (the router too,
whose output picks the experts), so no MLP edge is declared: a scale moved into the experts' rows
would have to move into the router's rows as well, which the map cannot say. Checkpoints are read in
ours, the Paddle release's and the Hugging Face layout and written as ours or as PaddleFormers saves
them (``ernie4_5_moe_layout.py``). Its ONNX blocks are ``ernie4_5_moe_onnx.py`` (the MoE layer as
ONNX Runtime's fused MoE / QMoE kernels); its models do not trace to a Paddle static graph, so
``export`` writes ONNX only. Their head layout, :class:`~.architecture.GroupedQueryHeadsAndExperts`,
picks expert pruning (``prune --experts``), which removes routed experts through
``ernie4_5_moe_pruning.remove_experts``.
"""

from __future__ import annotations

import dataclasses

from .architecture import Distillation, GroupedQueryHeadsAndExperts, RoutedExperts, ScaleMapping
from .ernie4_5_family import LINEAR_ROLES, NAMES, smoothing_parts, student_keys
from .ernie4_5_moe_config import Ernie45MoeConfig
from .ernie4_5_moe_layout import check_moe_hf_writable, moe_to_hf, normalize_moe_state
from .ernie4_5_moe_pruning import remove_experts
from .family import LayoutWriter, ModelFamily


SMOOTHING = (
    ScaleMapping("input_layernorm", ("self_attn.qkv_proj",)),
    ScaleMapping("self_attn.qkv_proj", ("self_attn.o_proj",), part="v"),
)


# a routed expert's Linears: mlp.experts.{e}.up_gate_proj / down_proj (not mlp.shared_experts, not the router)
ROUTED_EXPERTS = RoutedExperts(r"(?P<expert>(?P<block>mlp)\.experts\.(?P<index>\d+))\.[^.]+")


FAMILY = ModelFamily(
    model_type="ernie4_5_moe", title="ERNIE 4.5 MoE", config_class=Ernie45MoeConfig,
    implementation="ernie_compress.models.ernie4_5_moe", onnx_blocks="ernie_compress.models.ernie4_5_moe_onnx",
    architecture_for_kind={"causal_lm": "Ernie4_5_MoeForCausalLM"},
    other_kinds_hint="they serve causal LM (lm, demo:lm) so far",
    names=dataclasses.replace(NAMES, task_heads=("lm_head",)), linear_roles=LINEAR_ROLES, smoothing=SMOOTHING,
    smoothing_parts=smoothing_parts,
    head_layout=GroupedQueryHeadsAndExperts(remove_experts), routed_experts=ROUTED_EXPERTS,
    distillation=Distillation(frozenset({"logits", "hidden_states"}),
                              instead="logits (--kd-weight) and hidden states (--hidden-weight)",
                              students=frozenset({"ernie4_5"})),  # the dense models: same tokenizer and vocabulary
    input_names=("input_ids",), normalize=normalize_moe_state, student_keys=student_keys,
    writers=dict.fromkeys(("paddleformers", "hf"), LayoutWriter(check_moe_hf_writable, moe_to_hf, None)),
    static_graph_refusal=("ERNIE 4.5 MoE models have no Paddle static-graph export: the token dispatch (each "
                          "expert runs on the tokens routed to it, a data-dependent count) does not trace in "
                          "Paddle 3.3.1's paddle.jit"),
    onednn_exact=False)  # the dense ERNIE 4.5 graph already computes wrongly under Paddle 3.3.1's oneDNN kernels
