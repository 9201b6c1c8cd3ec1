"""``export --layout gptq``: a weight-only checkpoint in the GPTQ checkpoint format (AutoGPTQ /
GPTQModel's ``checkpoint_format: gptq``, the one transformers' GPTQ path and vLLM read), checked
against onnxruntime-genai's model builder, whose GPTQ loader turns it into an ONNX model for its
runtime (``tests/interop/test_prequantized.py``).

The format (Frantar et al. 2023, GPTQ; the packing AutoGPTQ defined and the loaders read): each
quantized Linear ``m`` with weight [out, in] becomes

- ``m.qweight`` int32 [in * bits / 32, out]: unsigned codes ``q = code + 2**(bits-1)``, packed
  along the input dimension, ``32 / bits`` consecutive input rows per word, the first row in the
  lowest bits;
- ``m.qzeros`` int32 [groups, out * bits / 32]: the zero point ``z = 2**(bits-1)`` of every group
  stored as ``z - 1`` (the format's historical offset, which the loaders add back), packed along the
  output dimension the same way;
- ``m.scales`` float16 [groups, out]; ``m.g_idx`` int32 [in]: the group of each input row
  (``row // group_size``: no activation reordering, ``desc_act`` false);
- ``weight = scale * (q - z) = scale * code``.

``config.json`` gets ``quantization_config`` (``quant_method`` gptq, ``bits``, ``group_size``, -1 for
per channel, ``sym`` true, ``desc_act`` false, ``checkpoint_format`` gptq), also written as
``quantize_config.json`` for the older loaders. The head and embeddings stay float (``prequantized.py``).

Scales are float16, as every GPTQ loader reads them: each weight moves by at most 2**-11 of itself
(half precision's relative rounding), against our checkpoint's float32 scales.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import UserError
from .prequantized import (PrequantizedLayout, QuantizedHf, check_architecture, quantized_hf, weight_only_scheme,
                           write_prequantized)

LAYOUT = "gptq"
QUANTIZE_CONFIG_FILE = "quantize_config.json"
WORD_BITS = 32
LOADED = ("Ernie4_5ForCausalLM",)  # what onnxruntime-genai's builder was checked to load (tests/interop)
REFUSED = {"Ernie4_5_MoeForCausalLM": "onnxruntime-genai 0.18's model builder has no such architecture"}


def pack_rows(unsigned: np.ndarray, bits: int) -> np.ndarray:
    """Unsigned values [rows, cols] (< 2**bits) as words [rows * bits / 32, cols], ``32 / bits``
    consecutive rows per word, the first in the lowest bits."""
    per_word = WORD_BITS // bits
    rows, cols = unsigned.shape
    grouped = unsigned.astype(np.uint32).reshape(rows // per_word, per_word, cols)  # [words, k, cols]
    shifted = grouped << (bits * np.arange(per_word, dtype=np.uint32))[None, :, None]
    return np.bitwise_or.reduce(shifted, axis=1).view(np.int32)  # [words, cols]


def check(config) -> None:
    """Refuse (before anything is written) what is not weight-only or of an architecture no loader was
    checked with (the widths the format's words cannot hold are refused by :func:`check_widths`)."""
    check_architecture(config, LAYOUT, LOADED, REFUSED)
    weight_only_scheme(config, LAYOUT)


def check_widths(quantized: QuantizedHf) -> None:
    per_word = WORD_BITS // quantized.bits
    for module, q in quantized.linears.items():
        if any(width % per_word for width in q.codes.shape):
            raise UserError(f"--layout gptq packs {per_word} {quantized.bits}-bit codes per 32-bit word along both "
                            f"widths of a Linear; {module} is {list(q.codes.shape)} [out, in]; nothing was written")


def quantization_config(quantized: QuantizedHf) -> dict[str, Any]:
    return {"quant_method": "gptq", "bits": quantized.bits, "group_size": quantized.group_size or -1,
            "desc_act": False, "sym": True, "checkpoint_format": "gptq", "lm_head": False,
            "true_sequential": True, "static_groups": False, "damp_percent": 0.01, "pack_dtype": "int32"}


def gptq_tensors(module: str, codes: np.ndarray, scales: np.ndarray, bits: int) -> dict[str, np.ndarray]:
    """One Linear's GPTQ tensors from codes [out, in] and scales [out, groups]."""
    zero = 1 << (bits - 1)
    out, rows = codes.shape
    groups = scales.shape[1]
    stored_zeros = np.full((groups, out), zero - 1, np.uint32)  # the format's z - 1
    return {f"{module}.qweight": pack_rows((codes.T.astype(np.int64) + zero).astype(np.uint32), bits),  # [in*b/32, out]
            f"{module}.qzeros": np.ascontiguousarray(pack_rows(stored_zeros.T, bits).T),  # [groups, out*b/32]
            f"{module}.scales": np.ascontiguousarray(scales.T.astype(np.float16)),  # [groups, out]
            f"{module}.g_idx": (np.arange(rows) // (rows // groups)).astype(np.int32)}  # [in]


def write(directory: Path, config, state: dict[str, np.ndarray], tokenizer) -> dict[str, Any]:
    """config.json (+ quantize_config.json), model.safetensors and the tokenizer of the GPTQ checkpoint."""
    quantized = quantized_hf(config, state, LAYOUT)
    check_widths(quantized)
    tensors = dict(quantized.floats)
    for module, q in quantized.linears.items():
        tensors.update(gptq_tensors(module, q.codes, q.scales, q.bits))
    settings = quantization_config(quantized)
    write_prequantized(directory, dict(quantized.keys, quantization_config=settings), tensors, tokenizer)
    (directory / QUANTIZE_CONFIG_FILE).write_text(json.dumps(settings, indent=2) + "\n")
    return {"format": "gptq", "bits": quantized.bits, "group_size": quantized.group_size,
            "quantized_linears": len(quantized.linears), "float": "lm_head, embeddings, norms",
            "scales": "float16"}


GPTQ = PrequantizedLayout(check, write, "onnxruntime-genai's model builder (GPTQ loader); GPTQ loaders")
