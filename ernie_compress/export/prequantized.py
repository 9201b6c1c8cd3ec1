"""Pre-quantized checkpoints: a weight-only checkpoint's integer codes in a format that serving
engines load without the full-precision weights (``export --layout compressed-tensors|gptq``).

A weight-only checkpoint keeps its dequantized weights (``codes * scale``, ``quantize/weight_only.py``);
the codes and scales are recovered exactly from them (``decoder_onnx.recover_codes``) in our layout
([in, out], scales [groups, out]) and taken to the Hugging Face layout by the family's own ``hf``
writer, which splits the fused q/k/v and gate/up along the output columns and transposes: codes to
[out, in], scales to [out, groups]. Splitting along output columns keeps every group whole, so the
recovered codes stay on the grid. Each format then packs them (``prequantized_compressed_tensors.py``,
``prequantized_gptq.py``).

The output head (int8 per vocabulary entry in our scheme) is written as float: it holds exactly
the dequantized values, and in a tied model it is the embedding table that every engine reads in
float anyway. compressed-tensors could hold an untied head as int8 per channel (a second config
group), but the checkpoints its tools write leave ``lm_head`` in ``ignore`` and GPTQ's default is
``lm_head: false``, which is what every loader of the formats takes; onnxruntime-genai's builder
would otherwise quantize a float head itself (the interop test keeps it float there too).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..checkpoint import CONFIG_FILE, WEIGHTS_FILE, write_safetensors
from ..errors import UserError
from ..models.families import family_of
from ..quantize.scheme import quantization_info
from ..quantize.weight_only import lm_head_weight
from .decoder_onnx import recover_codes

HF_LAYOUT = "hf"  # the tensors' names and orientation: transformers' (models/layouts.py)


@dataclass(frozen=True)
class HfCodes:
    """One quantized Linear in the Hugging Face layout."""

    codes: np.ndarray  # [out, in] int8, symmetric, in [-qmax, qmax]
    scales: np.ndarray  # [out, groups] float32 (groups 1: per output channel)
    bits: int
    group_size: int | None  # None: per output channel


@dataclass(frozen=True)
class QuantizedHf:
    """A weight-only checkpoint in the Hugging Face layout: config.json keys, float tensors (norms,
    embedding, head) and the quantized Linears by module name (``model.layers.0.self_attn.q_proj``)."""

    keys: dict[str, Any]
    floats: dict[str, np.ndarray]
    linears: dict[str, HfCodes]
    bits: int
    group_size: int | None


def weight_only_scheme(config, layout: str) -> dict[str, Any]:
    """The checkpoint's weight-only scheme; refused (nothing written) for any other checkpoint or a
    family the Hugging Face layout cannot take."""
    quant = quantization_info(config) or {}
    if not str(quant.get("method", "")).startswith("weight_only_") or not quant.get("weights"):
        raise UserError(f"--layout {layout} writes the integer codes of a weight-only quantized checkpoint "
                        f"(quantize --weight-only int8|int4); this checkpoint is "
                        f"{quant.get('dtype', 'not quantized') if quant else 'not quantized'}; nothing was written")
    family = family_of(config)
    if HF_LAYOUT not in family.writers:
        raise UserError(f"--layout {layout} needs the Hugging Face layout, which {family.title} models do not have; "
                        f"nothing was written")
    family.writers[HF_LAYOUT].check(config)
    return quant


def quantized_hf(config, state: dict[str, np.ndarray], layout: str) -> QuantizedHf:
    """Recover every quantized Linear's codes (the head stays float, see the module docstring) and
    write floats, codes and scales through the family's ``hf`` writer."""
    quant = weight_only_scheme(config, layout)
    head = lm_head_weight(config)
    specs = {name: spec for name, spec in quant["weights"].items() if head is None or name != head[0]}
    recovered = {name: recover_codes(state[name], spec["bits"], spec["group_size"]) for name, spec in specs.items()}
    writer = family_of(config).writers[HF_LAYOUT]
    keys, floats = writer.write(config, {k: v for k, v in state.items() if k not in specs})
    _, codes = writer.write(config, {name: q.codes.astype(np.float32) for name, q in recovered.items()})  # [out, in]
    _, scales = writer.write(config, {name: q.scales for name, q in recovered.items()})  # [out, groups]
    bits, group_size = _uniform({(q.bits, q.group_size) for q in recovered.values()}, layout)
    linears = {}
    for name, matrix in codes.items():
        module = name.removesuffix(".weight")
        linears[module] = HfCodes(matrix.astype(np.int8), np.ascontiguousarray(scales[name], np.float32),
                                  bits, group_size)
        out, rows = matrix.shape
        assert linears[module].scales.shape == (out, rows // (group_size or rows)), (name, scales[name].shape)
    return QuantizedHf(keys, floats, linears, bits, group_size)


def _uniform(schemes: set[tuple[int, int | None]], layout: str) -> tuple[int, int | None]:
    """The one (bits, group size) of every quantized Linear (our quantize writes one scheme per checkpoint)."""
    if len(schemes) != 1:
        raise UserError(f"--layout {layout} writes one scheme for every Linear; this checkpoint mixes "
                        f"{sorted(schemes, key=str)}; nothing was written")
    return next(iter(schemes))


def check_architecture(config, layout: str, loaded: tuple[str, ...], reasons: dict[str, str]) -> None:
    """Refuse an architecture no loader of the format was checked with (``reasons``: why not, by
    architecture)."""
    if config.architecture not in loaded:
        why = reasons.get(config.architecture, "no loader of the format was checked with it")
        raise UserError(f"--layout {layout} is written for {', '.join(loaded)} only, not {config.architecture}: "
                        f"{why}; nothing was written")


def write_prequantized(directory: Path, keys: dict[str, Any], tensors: dict[str, np.ndarray], tokenizer) -> None:
    """config.json, model.safetensors (PyTorch metadata, as transformers writes) and the tokenizer."""
    text = json.dumps(keys, indent=2, ensure_ascii=False, default=_jsonable)
    (directory / CONFIG_FILE).write_text(text + "\n", encoding="utf-8")
    write_safetensors(directory / WEIGHTS_FILE, tensors, {"format": "pt"})
    tokenizer.save(directory)


def _jsonable(value: Any) -> Any:
    """numpy scalars and arrays in config.json as plain numbers and lists."""
    return value.tolist() if hasattr(value, "tolist") else str(value)


@dataclass(frozen=True)
class PrequantizedLayout:
    """One pre-quantized format: its refusals (before anything is written), its writer, its engines."""

    check: Callable[[Any], None]  # config -> None, or UserError
    write: Callable[[Path, Any, dict[str, np.ndarray], Any], dict[str, Any]]  # dir, config, state, tokenizer -> details
    engines: str  # the manifest's "for"
