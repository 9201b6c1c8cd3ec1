"""ERNIE 4.5 weights in every layout the ecosystem saves, read into ours and written back out.

This package's model (``ernie4_5.py``) keeps the original Paddle training code's layout: names
``ernie.*``, Linear weights [in, out], ``qkv_proj`` fused as all query heads, then all keys, then
all values, ``up_gate_proj`` fused as gate then up, untied ``lm_head.weight`` [hidden, vocab].
The layouts met in the wild (checked against PaddleFormers 1.2.0 and transformers 5):

=====================  =========  ============  ======================================  =============
layout                 names      matrices      attention / FFN                         lm_head
=====================  =========  ============  ======================================  =============
Hugging Face / ``-PT``  ``model.``  [out, in]     separate q/k/v, gate/up                 [vocab, hidden]
(PaddleFormers' default ``save_pretrained``, sharded ``model-i-of-N.safetensors`` + index; transformers)
PaddleFormers "paddle"  ``model.``  [in, out]     ``qkv_proj`` fused **per KV group** (each   [vocab, hidden]
(``save_to_hf=False``; config.json says ``"source": "paddle"``)   group's queries, its key, its value)
Paddle release          ``ernie.``  [in, out]     fused all-q/all-k/all-v, or separate    [hidden, vocab]
=====================  =========  ============  ======================================  =============

Rotary embeddings are interleaved in all of them (PaddleFormers and transformers alike), so no
row permutation is needed. Which fused-qkv column order a file uses is decided from what the
checkpoint says (its names, ``source``, ``architectures``, our own lineage), never from shapes:
the orders have identical shapes. Where it cannot be told (an ``ernie.*`` fused file of unknown
origin with several KV groups), the checkpoint is refused with the reason.
"""

from __future__ import annotations

import re
from typing import Any

import numpy as np

from ..errors import UserError
from .ernie4_5_config import Ernie45Config

_TRANSPOSED = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")  # [out, in] in HF
_RELEASE_ARCHITECTURES = {"Ernie4_5_ForCausalLM": "Ernie4_5ForCausalLM"}  # the Paddle release's spelling
_UNKNOWN_ORDER = (
    "the fused qkv_proj of these 'ernie.*' weights could hold all queries, keys and values in turn (the "
    "Paddle release) or each KV group's queries, key and value together (PaddleFormers); nothing in the "
    "checkpoint says which (no 'source' or release 'architectures' in config.json, no ernie-compress "
    "lineage) and the two have the same shapes, so it is not loaded. Save it with PaddleFormers' "
    "save_pretrained (the Hugging Face layout) and load that folder")


def _fuse(state: dict[str, np.ndarray], prefix: str, parts: tuple[str, ...], fused: str) -> None:
    names = [f"{prefix}{p}" for p in parts]
    if all(n + ".weight" in state for n in names):
        for suffix in (".weight", ".bias"):
            if all(n + suffix in state for n in names):
                shapes = [tuple(state[n + suffix].shape) for n in names]
                if len({s[:-1] for s in shapes}) > 1:
                    raise UserError(f"{', '.join(n + suffix for n in names)} have shapes {shapes}, which do not "
                                    f"fit together (their input widths differ); the weights are corrupt or belong "
                                    f"to another model")
                state[prefix + fused + suffix] = np.concatenate([state.pop(n + suffix) for n in names], axis=-1)


def _layer_prefixes(state: dict[str, np.ndarray], root: str) -> set[str]:
    return {m.group(0) for k in state if (m := re.match(rf"{re.escape(root)}layers\.\d+\.", k))}


def _grouped_to_sequential(qkv: np.ndarray, config: Ernie45Config) -> np.ndarray:
    """Columns per KV group [q_g (qpg heads), k_g, v_g]... -> [all q, all k, all v] (last axis)."""
    kv, g, d = config.num_key_value_heads, config.queries_per_group, config.head_dim
    lead = qkv.shape[:-1]
    groups = qkv.reshape(*lead, kv, g + 2, d)  # [..., kv, g+2, d]
    q = groups[..., :g, :].reshape(*lead, kv * g * d)
    k = groups[..., g, :].reshape(*lead, kv * d)
    v = groups[..., g + 1, :].reshape(*lead, kv * d)
    return np.concatenate([q, k, v], axis=-1)


def detect_layout(state: dict[str, np.ndarray], ours: bool) -> str:
    """``ours``, ``release``, ``paddleformers`` (fused per group) or ``hf``, from names and metadata."""
    roots = {k.split(".", 1)[0] for k in state if re.match(r"(model|ernie)\.layers\.\d+\.", k)}
    if len(roots) > 1:
        raise UserError("the weights mix 'model.*' and 'ernie.*' layer names (two layouts in one folder); "
                        "keep one checkpoint per folder")
    fused = any(".self_attn.qkv_proj." in k for k in state)
    if roots == {"model"}:
        return "paddleformers" if fused else "hf"
    return "ours" if ours else "release"


def normalize_ernie45_state(state: dict[str, np.ndarray], config: Ernie45Config,
                            raw_config: dict[str, Any] | None = None,
                            ours: bool = True) -> tuple[Ernie45Config, dict[str, np.ndarray]]:
    """Config and state in this package's layout (new objects), from any layout in the table above."""
    raw_config = raw_config or {}
    layout = detect_layout(state, ours)
    state = dict(state)
    if layout == "release" and any(".self_attn.qkv_proj." in k for k in state):
        release = any(a in _RELEASE_ARCHITECTURES for a in raw_config.get("architectures") or [])
        if not release and config.num_key_value_heads > 1:
            raise UserError(_UNKNOWN_ORDER)
    if layout in ("hf", "paddleformers"):
        if layout == "paddleformers" and raw_config.get("source") != "paddle":
            raise UserError("these 'model.*' weights have a fused qkv_proj, but config.json does not say "
                            "\"source\": \"paddle\" (PaddleFormers' own format: [in, out], each KV group's "
                            "queries, key and value together); a fused 'model.*' file from another saver may "
                            "be [out, in] or ordered otherwise, and the shapes cannot tell, so it is not loaded")
        renamed = {}
        for name, value in state.items():
            new = "ernie." + name[len("model."):] if name.startswith("model.") else name
            leaf = new.rsplit(".", 2)[-2] if new.count(".") >= 2 else ""
            if layout == "hf" and value.ndim == 2 and leaf in _TRANSPOSED:
                value = value.T  # [out, in] -> [in, out]
            if layout == "paddleformers" and leaf == "qkv_proj":
                value = _grouped_to_sequential(value, config)
            renamed[new] = value
        state = renamed
        if "lm_head.weight" in state:  # both store it [vocab, hidden]; ours is a Linear [hidden, vocab]
            state["lm_head.weight"] = state["lm_head.weight"].T
        if "score.weight" in state and layout == "hf":
            state["score.weight"] = state["score.weight"].T
    for prefix in _layer_prefixes(state, "ernie."):
        _fuse(state, prefix + "self_attn.", ("q_proj", "k_proj", "v_proj"), "qkv_proj")
        _fuse(state, prefix + "mlp.", ("gate_proj", "up_proj"), "up_gate_proj")
    if config.tie_word_embeddings:
        state.pop("lm_head.weight", None)  # the same matrix as embed_tokens in a tied model
    architectures = [_RELEASE_ARCHITECTURES.get(a, a) for a in config.architectures]
    return config.replace(architectures=architectures), state


def check_hf_writable(config: Ernie45Config) -> None:
    if config.architecture != "Ernie4_5ForCausalLM":
        raise UserError(f"this layout has no {config.architecture} (PaddleFormers and transformers define ERNIE 4.5 "
                        f"as Ernie4_5ForCausalLM); write it with --layout ours")


def to_hf(config: Ernie45Config, state: dict[str, np.ndarray]) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    """``config.json`` keys and weights in the Hugging Face layout (PaddleFormers' default save), which
    PaddleFormers' and transformers' ``from_pretrained`` load unchanged (the model passed
    :func:`check_hf_writable`, through ``layouts.check_layout``)."""
    h, kv, d = config.num_attention_heads, config.num_key_value_heads, config.head_dim
    out: dict[str, np.ndarray] = {}
    for name, value in state.items():
        new = "model." + name[len("ernie."):] if name.startswith("ernie.") else name
        if new.endswith("self_attn.qkv_proj.weight") or new.endswith("self_attn.qkv_proj.bias"):
            base, suffix = new.rsplit(".qkv_proj.", 1)
            parts = np.split(value, [h * d, (h + kv) * d], axis=-1)
            for part, p in zip(parts, ("q_proj", "k_proj", "v_proj")):
                out[f"{base}.{p}.{suffix}"] = part.T if part.ndim == 2 else part
        elif new.endswith("mlp.up_gate_proj.weight") or new.endswith("mlp.up_gate_proj.bias"):
            base, suffix = new.rsplit(".up_gate_proj.", 1)
            gate, up = np.split(value, 2, axis=-1)
            out[f"{base}.gate_proj.{suffix}"] = gate.T if gate.ndim == 2 else gate
            out[f"{base}.up_proj.{suffix}"] = up.T if up.ndim == 2 else up
        elif value.ndim == 2 and (new.rsplit(".", 2)[-2] in _TRANSPOSED or new == "lm_head.weight"):
            out[new] = value.T
        else:
            out[new] = value
    keys = config.to_dict()
    keys.pop("id2label", None), keys.pop("label2id", None)
    keys.update(torch_dtype="float32", dtype="float32", use_cache=True, fuse_rms_norm=False,
                rope_parameters={"rope_theta": config.rope_theta, "rope_type": "default"})
    return keys, out
