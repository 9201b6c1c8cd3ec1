"""Our weight-only codes as GGML's Q4_0 and Q8_0 blocks (the GGUF tensor data llama.cpp reads).

GGML (ggml/src/ggml-common.h, ``block_q4_0`` / ``block_q8_0``; the reference quantizers in
ggml-quants.c) stores a matrix [rows, cols] row by row, each row cut into blocks of 32 consecutive
values along ``cols`` (for a Linear: the input dimension). A block is its scale ``d`` as IEEE fp16,
then its codes:

=====  =======  ====================================================  ==================
type   bytes    codes                                                 value
=====  =======  ====================================================  ==================
Q4_0   2 + 16   ``qs[j] = q[j] | q[j + 16] << 4`` (j < 16), q in 0..15  ``(q - 8) * d``
Q8_0   2 + 32   ``qs[j] = q[j]``, int8                                  ``q * d``
=====  =======  ====================================================  ==================

Our grids (``quantize/weight_only.py``) are symmetric: codes in [-7, 7] (int4) or [-127, 127]
(int8) times a scale per group of ``group_size`` input rows of a column (or per column). A block's
``d`` is free, so any group that is a whole number of blocks (a group size that is a multiple of 32,
or per column with an input width that is) is written exactly: each block gets its group's scale
and its codes as they are (int4: ``q = code + 8``). The one rounding is the scale's to fp16
(relative error at most 2**-11 for a normal fp16). Smaller groups would need two scales per block and
are refused by the caller.
"""

from __future__ import annotations

import numpy as np

BLOCK = 32  # values per block (QK4_0 == QK8_0 == 32)
BLOCK_BYTES = {"Q4_0": 2 + BLOCK // 2, "Q8_0": 2 + BLOCK}
BITS = {"Q4_0": 4, "Q8_0": 8}
FP16_MAX = float(np.finfo(np.float16).max)


def block_scales(scales: np.ndarray, rows: int, group_size: int | None) -> np.ndarray:
    """Per-block scales [rows / 32, cols] from per-group scales [groups, cols] of a weight [rows, cols]
    (``group_size`` None: one group of all rows); each group must be a whole number of blocks."""
    size = rows if group_size is None else group_size
    assert size % BLOCK == 0 and rows % size == 0, (rows, size)
    return np.repeat(scales, size // BLOCK, axis=0)  # [rows / 32, cols]


def pack_blocks(codes: np.ndarray, scales: np.ndarray, kind: str) -> np.ndarray:
    """GGML blocks [out, in / 32 * bytes] (uint8) of codes [out, in] (signed, our grid) and per-block
    scales [out, in / 32]: row ``o`` holds output channel ``o``'s blocks along the input dimension."""
    out, width = codes.shape
    blocks = width // BLOCK
    d = scales.astype(np.float16).reshape(out, blocks, 1).view(np.uint8)  # [out, blocks, 2] little-endian fp16
    grouped = codes.reshape(out, blocks, BLOCK)  # [out, blocks, 32]
    if kind == "Q8_0":
        qs = grouped.astype(np.int8).view(np.uint8)  # [out, blocks, 32]
    else:
        q = (grouped.astype(np.int16) + 8).astype(np.uint8)  # [out, blocks, 32] in 1..15
        qs = q[..., :BLOCK // 2] | (q[..., BLOCK // 2:] << 4)  # [out, blocks, 16]: value j low, j + 16 high
    return np.concatenate([d, qs], axis=-1).reshape(out, blocks * BLOCK_BYTES[kind])


def scale_rounding(scales: np.ndarray) -> float:
    """The largest relative change of a scale rounded to fp16 (what the blocks lose against our codes)."""
    rounded = scales.astype(np.float16).astype(np.float64)
    exact = scales.astype(np.float64)
    return float(np.max(np.abs(rounded - exact) / np.where(exact == 0, 1.0, np.abs(exact)), initial=0.0))
