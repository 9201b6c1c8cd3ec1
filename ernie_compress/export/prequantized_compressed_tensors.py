"""``export --layout compressed-tensors``: a weight-only checkpoint as compressed-tensors'
"pack-quantized" format, which transformers (``CompressedTensorsHfQuantizer``) and vLLM load.

The format (compressed-tensors 0.20, ``compressors/pack_quantized``; written here from its
description, not its code): each quantized Linear ``m`` [out, in] becomes

- ``m.weight_packed`` int32 [out, ceil(in * bits / 32)]: the codes offset to unsigned
  (``code + 2**(bits-1)``), packed densely along the input dimension, element ``i`` of a row at
  bits ``i*bits`` upward of the row's bit string (the first code in a word's lowest bits; 8 int4
  or 4 int8 codes per word, so none straddles a word); a row is padded with zeros to whole words;
- ``m.weight_scale`` [out, in / group_size] (strategy ``group``) or [out, 1] (``channel``):
  ``weight = code * scale``, symmetric, so no zero point is stored;
- ``m.weight_shape`` int64 [2]: (out, in).

``config.json`` gets ``quantization_config`` with ``quant_method`` compressed-tensors, ``format``
pack-quantized, status ``compressed`` and one config group targeting every ``Linear`` with int4
or int8 symmetric weights (no activation quantization), and an ``ignore`` list of the Linears kept
in float: ``lm_head`` (see ``prequantized.py``). Dense ERNIE 4.5 only: transformers 5.3 does not load
mixture-of-experts experts from this format (:data:`REFUSED`).

Scales are stored in float32, the checkpoint's dtype: transformers loading in float32
dequantizes to exactly our weights; an engine that runs in bf16/fp16 rounds them itself.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from .prequantized import (PrequantizedLayout, QuantizedHf, check_architecture, quantized_hf, weight_only_scheme,
                           write_prequantized)

LAYOUT = "compressed-tensors"
FORMAT = "pack-quantized"
WORD_BITS = 32
LOADED = ("Ernie4_5ForCausalLM",)  # what transformers was checked to load (tests/interop/test_prequantized.py)
REFUSED = {"Ernie4_5_MoeForCausalLM": (
    "transformers 5.3 holds its experts as fused 3-D tensors, which its compressed-tensors loader leaves "
    "unloaded (the experts' packed weights come out unexpected)")}


def pack_int32(codes: np.ndarray, bits: int) -> np.ndarray:
    """Codes [rows, cols] (signed, |code| < 2**(bits-1)) as pack-quantized words [rows, ceil(cols*bits/32)]."""
    per_word = WORD_BITS // bits  # 8 (int4) or 4 (int8): the formats' widths divide a word
    rows, cols = codes.shape
    words = -(-cols // per_word)
    unsigned = np.zeros((rows, words * per_word), np.uint32)
    unsigned[:, :cols] = codes.astype(np.int64) + (1 << (bits - 1))  # padding stays 0
    fields = unsigned.reshape(rows, words, per_word) << (bits * np.arange(per_word, dtype=np.uint32))  # [rows, w, k]
    return np.bitwise_or.reduce(fields, axis=2).view(np.int32)  # [rows, words]


def check(config) -> None:
    """Refuse (before anything is written) a checkpoint that is not weight-only quantized or of an
    architecture no loader was checked with; every weight-only scheme of ours (int4/int8, symmetric,
    any group size or per channel) fits the format."""
    check_architecture(config, LAYOUT, LOADED, REFUSED)
    weight_only_scheme(config, LAYOUT)


def quantization_config(quantized: QuantizedHf) -> dict[str, Any]:
    """config.json's ``quantization_config`` (compressed-tensors' ``QuantizationConfig``)."""
    grouped = quantized.group_size is not None
    weights = {"num_bits": quantized.bits, "type": "int", "symmetric": True, "dynamic": False,
               "strategy": "group" if grouped else "channel", "group_size": quantized.group_size,
               "actorder": None, "block_structure": None, "observer": "minmax"}
    return {"quant_method": "compressed-tensors", "format": FORMAT, "quantization_status": "compressed",
            "config_groups": {"group_0": {"targets": ["Linear"], "weights": weights, "input_activations": None,
                                          "output_activations": None, "format": FORMAT}},
            "ignore": ["lm_head"], "kv_cache_scheme": None, "global_compression_ratio": None}


def write(directory: Path, config, state: dict[str, np.ndarray], tokenizer) -> dict[str, Any]:
    """config.json, model.safetensors and the tokenizer of the pack-quantized checkpoint."""
    quantized = quantized_hf(config, state, LAYOUT)
    tensors = dict(quantized.floats)
    for module, q in quantized.linears.items():
        tensors[f"{module}.weight_packed"] = pack_int32(q.codes, q.bits)  # [out, ceil(in*bits/32)]
        tensors[f"{module}.weight_scale"] = q.scales  # [out, groups]
        tensors[f"{module}.weight_shape"] = np.array(q.codes.shape, np.int64)  # (out, in)
    keys = dict(quantized.keys, quantization_config=quantization_config(quantized))
    write_prequantized(directory, keys, tensors, tokenizer)
    return {"format": FORMAT, "bits": quantized.bits, "group_size": quantized.group_size,
            "quantized_linears": len(quantized.linears), "float": "lm_head, embeddings, norms",
            "scales": "float32"}


COMPRESSED_TENSORS = PrequantizedLayout(check, write, "transformers from_pretrained (compressed-tensors); the "
                                                      "format vLLM reads")
