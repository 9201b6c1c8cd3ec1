"""Weight-only checkpoints that keep their integer codes on disk (``quantize --weight-only ... --store codes``).

A weight-only quantized weight is ``codes x scale`` per group of input rows (``quantize/weight_only.py``).
Stored as floats (``--store float``, the default, which every loader reads) it takes 4 bytes a weight
whatever the grid; stored as codes it takes 1 byte (int8) or half a byte (int4) plus its scales, so a W4
checkpoint is about an eighth of the FP32 one on disk. Each quantized weight ``NAME`` (our layout:
[in, out]; a tied head: the embedding [vocab, hidden], whose codes are those of the head [hidden, vocab]
it is read as) becomes

- ``NAME.qcodes``: int8 [in, out] for 8 bits; for 4 bits two codes a byte, uint8 [ceil(in / 2), out], row
  2i in the low nibble and row 2i + 1 in the high one, each offset by 8 (ONNX Runtime's MatMulNBits packs
  its blocks the same way along the input dimension);
- ``NAME.qscales``: float32 [groups, out].

config.json's quantization entry says ``"storage": "codes"`` and, as for float storage, each weight's bits,
group size and orientation. Every reader expands the codes back into the very floats float storage holds
(:func:`expand_codes`: the same :func:`dequantize` of the same codes and scales), one tensor at a time, so
every stage reads both storages alike; a zero-stride placeholder (shapes read without the data,
``lazy_checkpoint.py``) expands to a placeholder.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from ..errors import UserError
from ..lazy_weights import is_placeholder, placeholder

CODES, SCALES = ".qcodes", ".qscales"
STORAGES = ("float", "codes")
STORAGE_HELP = (
    "Weight-only: how the checkpoint keeps the quantized weights: float (the dequantized weights, which any "
    "loader of the layout reads; 4 bytes a weight) or codes (int8 / packed int4 codes and float32 scales: W4 "
    "about 1/8 of FP32 on disk; our layout only, read back by every stage of this tool).")


def dequantize(codes: np.ndarray, scales: np.ndarray, group_size: int | None) -> np.ndarray:
    """Float weights [in, out] from codes [in, out] and scales [groups, out]."""
    rows, cols = codes.shape
    size = rows if group_size is None else group_size
    grouped = codes.astype(np.float32).reshape(rows // size, size, cols) * scales[:, None, :]
    return grouped.reshape(rows, cols)


def pack_int4(codes: np.ndarray) -> np.ndarray:
    """Signed 4-bit codes [rows, cols] (|code| <= 7) as bytes [ceil(rows / 2), cols] (module docstring)."""
    rows, cols = codes.shape
    unsigned = np.zeros((rows + rows % 2, cols), np.uint8)
    unsigned[:rows] = (codes.astype(np.int16) + 8).astype(np.uint8)
    return unsigned[0::2] | (unsigned[1::2] << 4)


def unpack_int4(packed: np.ndarray, rows: int) -> np.ndarray:
    """:func:`pack_int4`'s inverse: int8 codes [rows, cols]."""
    codes = np.empty((2 * len(packed), packed.shape[1]), np.int8)
    codes[0::2] = (packed & 0x0F).astype(np.int8) - 8
    codes[1::2] = (packed >> 4).astype(np.int8) - 8
    return codes[:rows]


def stored_tensors(name: str, codes: np.ndarray, scales: np.ndarray, bits: int) -> dict[str, np.ndarray]:
    """The tensors that store weight ``name`` as codes [in, out] (int8) and scales [groups, out]."""
    return {name + CODES: pack_int4(codes) if bits == 4 else codes.astype(np.int8),
            name + SCALES: np.asarray(scales, dtype=np.float32)}


def storage_of(quantization: dict[str, Any] | None) -> str:
    """How a checkpoint's quantization entry says its weights are stored (float when it says nothing)."""
    return (quantization or {}).get("storage", "float")


def expand_codes(state: dict[str, np.ndarray], quantization: dict[str, Any] | None) -> dict[str, np.ndarray]:
    """``state`` with every stored-codes weight (``NAME.qcodes`` + ``NAME.qscales``) replaced by its float
    weight ``NAME``, as float storage holds it; unchanged for float storage. Refuses codes a checkpoint's
    scheme does not describe."""
    if storage_of(quantization) != "codes" or not any(k.endswith(CODES) for k in state):
        return state
    weights = quantization.get("weights", {})
    out = {k: v for k, v in state.items() if not k.endswith((CODES, SCALES))}
    for key in (k[:-len(CODES)] for k in state if k.endswith(CODES)):
        spec = weights.get(key)
        if spec is None or key + SCALES not in state:
            raise UserError(f"{key}{CODES}: stored codes without {'scales' if spec else 'an entry in the scheme'}")
        out[key] = _expanded(state[key + CODES], state[key + SCALES], spec)
    return out


def _expanded(codes: np.ndarray, scales: np.ndarray, spec: dict[str, Any]) -> np.ndarray:
    """The float weight of one stored-codes tensor, in the orientation the state holds it."""
    group = spec.get("group_size")
    rows = scales.shape[0] * group if group is not None else None
    if rows is None:  # per channel: the codes' own rows (4-bit: twice the packed rows, as written)
        rows = codes.shape[0] * (2 if spec["bits"] == 4 else 1)
    shape = (rows, codes.shape[1])
    if is_placeholder(codes):
        return placeholder(shape[::-1] if spec.get("transposed") else shape, np.dtype(np.float32))
    full = unpack_int4(codes, rows) if spec["bits"] == 4 else codes
    matrix = dequantize(full, scales, group)  # [in, out]
    return np.ascontiguousarray(matrix.T) if spec.get("transposed") else matrix
