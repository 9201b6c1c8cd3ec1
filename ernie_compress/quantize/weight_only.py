"""Weight-only quantization by round-to-nearest (RTN): integer weights, float activations.

Decoding reads every weight once per token, so it is bound by memory bandwidth; storing weights in
8 or 4 bits cuts the bytes read (Dettmers et al. 2022, LLM.int8(); Frantar et al. 2023, GPTQ,
whose RTN baseline this is). Symmetric: a column (``group_size`` None: per output channel) or a
group of ``group_size`` consecutive input rows of a column shares one scale ``absmax / qmax``
(qmax 127 for 8 bits, 7 for 4 bits); codes are ``round(w / scale)`` in [-qmax, qmax]. ONNX
Runtime's ``MatMulNBits`` stores 4-bit weights in the same blocks of input rows per column.

A causal LM's output head (the tied embedding table included) is as many bytes per token as a
dozen layers of a small decoder, so it is quantized too (RTN): to int8 per vocabulary entry by
default, as weight-only LLM deployments keep the head at 8 bits, or (``--head int4``) to int4 in
groups of :data:`HEAD_INT4_GROUP` hidden units, as onnxruntime-genai's builder quantizes it by default
(at ERNIE-4.5-0.3B size the head is a third of the weights: 4.6 of 13.8 ms per decode step in int8,
``benchmarks/decode_profile.py``).

The checkpoint keeps the dequantized weights (``codes * scale``, exactly representable), so any
loader runs it and the codes are recovered from them: each group's largest magnitude is exactly
``qmax * scale``; or, with ``--store codes``, the codes and scales themselves
(``models/stored_codes.py``), which every reader expands into those same weights.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from ..errors import UserError
from ..models.families import family_of
from ..models.stored_codes import dequantize, stored_tensors  # noqa: F401  (dequantize: re-exported)

BITS = {"int8": 8, "int4": 4}
HEAD_BITS = 8  # a causal LM's output head by default: int8 per vocabulary entry, whatever the Linears get
HEAD_INT4_GROUP = 32  # --head int4: hidden units per scale (MatMulNBits' and GGUF Q4_0's block)


@dataclass(frozen=True)
class HeadGrid:
    """The output head's grid: ``bits`` with a scale per ``group_size`` hidden units (None: one per
    vocabulary entry)."""

    bits: int = HEAD_BITS
    group_size: int | None = None

    @classmethod
    def named(cls, head: str) -> HeadGrid:
        """``--head int8|int4``'s grid."""
        return cls(BITS[head], None if BITS[head] == 8 else HEAD_INT4_GROUP)

    def entry(self, transposed: bool) -> dict:
        """The scheme's entry for the head weight."""
        return {"bits": self.bits, "group_size": self.group_size, "transposed": transposed}


INT8_HEAD = HeadGrid()


def check_head(config, grid: HeadGrid) -> None:
    """Refuse a head grid whose groups do not divide a causal LM's hidden size (other models have no head)."""
    if grid.group_size and lm_head_weight(config) is not None and config.hidden_size % grid.group_size:
        raise UserError(f"--head int{grid.bits} rounds the output head in groups of {grid.group_size} hidden units; "
                        f"this model's hidden size {config.hidden_size} is not a multiple: use --head int8")


def lm_head_weight(config) -> tuple[str, bool] | None:
    """A causal LM's output head: (weight name, True when it is the tied embedding table
    [vocab, hidden], which the head reads transposed); None for other models. The family knows."""
    return family_of(config).output_head(config)


def qmax(bits: int) -> int:
    return 2 ** (bits - 1) - 1


def check_group_sizes(widths: dict[str, int], group_size: int | None) -> None:
    """Refuse a group size that does not divide the input width (``widths``: per Linear name) of
    every quantized Linear, suggesting one that does."""
    if group_size is None:
        return
    for name, rows in widths.items():
        if rows % group_size:
            raise UserError(f"--group-size {group_size} does not divide the input width {rows} of {name}; "
                            f"--group-size {dividing_group_size(widths.values(), group_size)} divides every "
                            f"quantized Linear's")


def dividing_group_size(widths, wanted: int) -> int:
    """A group size that divides every width, as close below ``wanted`` as they allow: the largest
    power of two of at least 16 (MatMulNBits' block sizes) that divides them all and is at most
    ``wanted``, else their largest common divisor up to ``wanted`` (at worst 1)."""
    common = math.gcd(*widths)
    divisors = [d for d in range(1, min(common, wanted) + 1) if common % d == 0]
    kernel = [d for d in divisors if d >= 16 and d & (d - 1) == 0]
    return (kernel or divisors)[-1]


def quantize_rtn(weight: np.ndarray, bits: int, group_size: int | None) -> tuple[np.ndarray, np.ndarray]:
    """Codes [in, out] (int8) and scales [groups, out] of a Paddle Linear weight [in, out]. Each
    column's groups are rounded on their own, so the columns go in blocks of ``COLUMN_BLOCK_BYTES``
    of float64: the temporaries hold one block, not the matrix (a 100k-entry head is GBs in float64)."""
    rows, cols = weight.shape
    size = rows if group_size is None else group_size
    step = max(1, COLUMN_BLOCK_BYTES // (rows * 8))
    codes = np.empty((rows, cols), np.int8)
    scales = np.empty((rows // size, cols), np.float32)
    for start in range(0, cols, step):
        block = slice(start, start + step)
        codes[:, block], scales[:, block] = _rtn_block(weight[:, block], bits, size)
    return codes, scales


COLUMN_BLOCK_BYTES = 16 << 20  # float64 bytes of one block of columns in quantize_rtn


def _rtn_block(weight: np.ndarray, bits: int, size: int) -> tuple[np.ndarray, np.ndarray]:
    """:func:`quantize_rtn` of a block of columns [in, cols] (groups of ``size`` rows)."""
    rows, cols = weight.shape
    grouped = weight.astype(np.float64).reshape(rows // size, size, cols)  # [groups, size, cols]
    scales = np.abs(grouped).max(axis=1) / qmax(bits)  # [groups, cols]
    scales[scales == 0] = 1.0  # an all-zero group: any scale gives zero codes
    codes = np.clip(np.rint(grouped / scales[:, None, :]), -qmax(bits), qmax(bits))
    return codes.reshape(rows, cols).astype(np.int8), scales.astype(np.float32)


def round_linears_(state: dict[str, np.ndarray], roundings: dict, bits: int,
                   group_size: int | None, kept: dict | None = None) -> dict[str, dict]:
    """In place: each Linear ``roundings`` names (name -> weight [in, out] -> (codes, scales)) whose
    weight is in ``state`` put on the grid and stored dequantized; returns the scheme's entry per
    weight (``{"bits", "group_size"}``). ``state`` may be one decoder layer's tensors (streamed).
    ``kept`` (weight name -> (codes, scales)) receives the codes, for a checkpoint that stores them."""
    weights = {}
    for name, rounding in roundings.items():
        key = f"{name}.weight"
        if key in state:
            codes, scales = rounding(state[key])  # [in, out] int8, [groups, out]
            state[key] = dequantize(codes, scales, group_size)
            weights[key] = {"bits": bits, "group_size": group_size}
            if kept is not None:
                kept[key] = (codes, scales)
    return weights


def round_head_(state: dict[str, np.ndarray], config, kept: dict | None = None,
                grid: HeadGrid = INT8_HEAD) -> dict[str, dict]:
    """In place: a causal LM's output head, when ``state`` holds it, to ``grid`` (RTN, the module
    docstring), stored dequantized; returns its scheme entry (none for other models).
    ``kept`` as for :func:`round_linears_` (the codes of the head [hidden, vocab], however it is held)."""
    head = lm_head_weight(config)
    if head is None or head[0] not in state:
        return {}
    key, transposed = head
    matrix = state[key].T if transposed else state[key]  # [hidden, vocab]
    codes, scales = quantize_rtn(matrix, grid.bits, grid.group_size)
    matrix = dequantize(codes, scales, grid.group_size)
    state[key] = np.ascontiguousarray(matrix.T if transposed else matrix)
    if kept is not None:
        kept[key] = (codes, scales)
    return {key: grid.entry(transposed)}


def store_codes_(state: dict[str, np.ndarray], kept: dict, weights: dict[str, dict]) -> dict[str, np.ndarray]:
    """In place: every weight of ``state`` whose codes ``kept`` holds replaced by its stored codes and
    scales (``models/stored_codes.py``; ``weights``: the scheme's entry per weight, for its bits); the
    codes are dropped from ``kept``. Returns ``state``."""
    for key in [k for k in kept if k in state]:
        codes, scales = kept.pop(key)
        del state[key]
        state.update(stored_tensors(key, codes, scales, weights[key]["bits"]))
    return state
