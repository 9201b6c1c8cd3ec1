"""ERNIE 4.5 MoE weights in the layouts the ecosystem saves, read into ours and written back out.

Ours is the Paddle release's (``ernie4_5_moe.py`` lists every name and shape): ``ernie.*``, Linear
weights [in, out], fused ``qkv_proj`` and ``up_gate_proj`` (gate then up), the router
``mlp.gate.weight`` [h, E]. The attention, norms, embedding, head and dense-layer MLPs are the dense
ERNIE 4.5 tensors and go through ``ernie4_5_layout`` unchanged; this module adds the MoE MLP's.

Checked against PaddleFormers 1.2.0's default ``save_pretrained`` of ``Ernie4_5_MoeForCausalLM``
(the Hugging Face layout, which transformers' ``Ernie4_5_Moe`` loads too):

=========================================================  ============  ====================
Hugging Face name (``model.layers.{i}.mlp.``...)           shape         ours
=========================================================  ============  ====================
``gate.weight`` (the router)                               [E, h]        ``gate`` [h, E]
``experts.{e}.gate_proj.weight``, ``up_proj.weight``       [f, h] each   ``experts.{e}.up_gate_proj`` [h, 2f]
``experts.{e}.down_proj.weight``                           [h, f]        ``experts.{e}.down_proj`` [f, h]
``shared_experts.{gate,up}_proj.weight``                   [S*f, h]      ``shared_experts.up_gate_proj`` [h, 2*S*f]
``shared_experts.down_proj.weight``                        [h, S*f]      ``shared_experts.down_proj`` [S*f, h]
``moe_statics.e_score_correction_bias``                    [1, E]        the same, [1, E]
=========================================================  ============  ====================

The Paddle release's ``ernie.*`` files are ours; one not written here whose fused ``qkv_proj`` has
several KV groups is refused as the dense family refuses it (its column order cannot be told).
Multi-token-prediction weights (``model.mtp_*``) are dropped on read, as transformers drops them.
transformers 5 holds the experts in memory as fused 3-D tensors, and writes them so with
``save_pretrained(save_original_format=False)`` (its default save reverts them to the per-expert
names above): ``mlp.experts.gate_up_proj`` [E, 2f, h] (each expert's gate rows, then its up rows),
``mlp.experts.down_proj`` [E, h, f] and ``mlp.gate.moe_statics.e_score_correction_bias``; these are
split into the per-expert names first (checked against transformers 5.3, tests/interop); fused
tensors of other shapes are refused.
"""

from __future__ import annotations

import re
from typing import Any

import numpy as np

from ..errors import UserError
from .ernie4_5_layout import detect_layout, normalize_ernie45_state, to_hf
from .ernie4_5_moe_config import Ernie45MoeConfig

_MTP = re.compile(r"^(?:ernie|model)\.mtp_")  # multi-token-prediction weights: not part of the model
_EXPERT_MLPS = re.compile(r"^(.*\.mlp\.(?:experts\.\d+|shared_experts))\.")  # group 1: one expert's MLP
_ROUTER = re.compile(r"^(?:ernie|model)\.layers\.\d+\.mlp\.gate\.weight$")
_FUSED_EXPERTS = re.compile(r"^(.*\.mlp\.experts)\.(gate_up_proj|down_proj)$")  # transformers 5 in memory
_LAYER = re.compile(r"^(?:ernie|model)\.layers\.(\d+)\.")  # group 1: the layer index
_FUSED_BIAS = re.compile(r"^(.*\.mlp\.)gate\.(moe_statics\.e_score_correction_bias)$")


def _expert_prefixes(state: dict[str, np.ndarray]) -> set[str]:
    return {m.group(1) for k in state if (m := _EXPERT_MLPS.match(k))}


def _split_fused_experts(config: Ernie45MoeConfig, state: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """transformers 5's fused experts (module docstring) as per-expert Hugging Face names [out, in]
    (a new dict); a fused tensor of another shape is refused."""
    e, f, h = config.moe_num_experts, config.moe_intermediate_size, config.hidden_size
    expected = {"gate_up_proj": (e, 2 * f, h), "down_proj": (e, h, f)}
    out = {}
    for name, value in state.items():
        bias, fused = _FUSED_BIAS.match(name), _FUSED_EXPERTS.match(name)
        if bias:
            out[bias.group(1) + bias.group(2)] = value
        elif fused:
            out.update(_per_expert(name, fused.group(1), fused.group(2), value, expected, f))
        else:
            out[name] = value
    return out


def _per_expert(name: str, prefix: str, kind: str, value: np.ndarray, expected: dict, f: int) -> dict[str, np.ndarray]:
    """One fused tensor [experts, out, in] as each expert's [out, in] under the Hugging Face names
    (``gate_up_proj``'s rows: gate, then up)."""
    if tuple(value.shape) != expected[kind]:
        raise UserError(f"'{name}' stores all experts in one tensor of shape {list(value.shape)}; only "
                        f"transformers' {list(expected[kind])} (experts, out, in) is read")
    if kind == "down_proj":
        return {f"{prefix}.{i}.down_proj.weight": value[i] for i in range(len(value))}  # [h, f] each
    halves = {"gate": slice(0, f), "up": slice(f, 2 * f)}
    return {f"{prefix}.{i}.{half}_proj.weight": value[i, rows] for i in range(len(value))
            for half, rows in halves.items()}


def _fuse_expert_gate_up(state: dict[str, np.ndarray]) -> None:
    """``{p}.gate_proj`` [h, f] and ``{p}.up_proj`` [h, f] -> ``{p}.up_gate_proj`` [h, 2f] (gate then up), in place."""
    for prefix in _expert_prefixes(state):
        for suffix in (".weight", ".bias"):
            gate, up = f"{prefix}.gate_proj{suffix}", f"{prefix}.up_proj{suffix}"
            if gate in state and up in state:
                state[f"{prefix}.up_gate_proj{suffix}"] = np.concatenate([state.pop(gate), state.pop(up)], axis=-1)


def _split_expert_gate_up(state: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """The inverse of :func:`_fuse_expert_gate_up` (a new dict, still [in, out])."""
    out = dict(state)
    for prefix in _expert_prefixes(state):
        for suffix in (".weight", ".bias"):
            fused = out.pop(f"{prefix}.up_gate_proj{suffix}", None)
            if fused is not None:
                gate, up = np.split(fused, 2, axis=-1)  # [h, 2f] -> [h, f], [h, f]
                out[f"{prefix}.gate_proj{suffix}"], out[f"{prefix}.up_proj{suffix}"] = gate, up
    return out


def normalize_moe_state(config: Ernie45MoeConfig, state: dict[str, np.ndarray], raw_config: dict[str, Any],
                        ours: bool) -> tuple[Ernie45MoeConfig, dict[str, np.ndarray]]:
    """Config and state in this package's layout (new objects) from ours, the Paddle release's or the
    Hugging Face layout (transformers' fused experts split first): the dense tensors through
    :func:`normalize_ernie45_state` (which also transposes the experts' [out, in] ``gate_proj``/
    ``up_proj``/``down_proj`` and refuses what it cannot tell apart), then the router transposed and
    each expert's gate/up fused."""
    state = _split_fused_experts(config, {name: value for name, value in state.items() if not _MTP.match(name)})
    hf = detect_layout(state, ours) == "hf"
    config, state = normalize_ernie45_state(state, config, raw_config, ours)
    if hf:
        state = {k: (v.T if _ROUTER.match(k) else v) for k, v in state.items()}  # [E, h] -> [h, E]
    _fuse_expert_gate_up(state)
    _check_experts(config, state)
    return config, state


def _check_experts(config: Ernie45MoeConfig, state: dict[str, np.ndarray]) -> None:
    """Refuse, in one line, a checkpoint whose MoE layers lack a routed expert's, the router's or the
    correction bias's tensor the config implies (before any command counts or builds from it). The
    layers checked are those ``state`` holds tensors of (a lazy checkpoint normalizes one layer at a
    time); a layer missing altogether is refused where the model is built."""
    present = {m.group(1) for k in state if (m := _LAYER.match(k))}
    wanted = {name for name in config.causal_lm_shapes() if ".mlp.experts." in name or _ROUTER.match(name)
              or name.endswith("e_score_correction_bias")}
    wanted = {name for name in wanted if (m := _LAYER.match(name)) and m.group(1) in present}
    missing = sorted(wanted - set(state))
    if missing:
        raise UserError(f"the weights lack {len(missing)} mixture-of-experts tensor(s) the config implies "
                        f"(moe_num_experts {config.moe_num_experts}), e.g. {missing[0]}")


def check_moe_hf_writable(config: Ernie45MoeConfig) -> None:
    if config.architecture != "Ernie4_5_MoeForCausalLM":
        raise UserError(f"this layout has no {config.architecture} (PaddleFormers and transformers define ERNIE 4.5 "
                        f"MoE as Ernie4_5_MoeForCausalLM); write it with --layout ours")


def moe_to_hf(config: Ernie45MoeConfig, state: dict[str, np.ndarray]
              ) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    """``config.json`` keys and weights as PaddleFormers' default ``save_pretrained`` writes them (the
    table above), for a model that passed :func:`check_moe_hf_writable`."""
    keys, out = to_hf(config, _split_expert_gate_up(state))  # the split [in, out] halves come out [out, in]
    out = {k: (v.T if _ROUTER.match(k) else v) for k, v in out.items()}  # [h, E] -> [E, h]
    return keys, out
