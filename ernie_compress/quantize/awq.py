"""AWQ (Lin et al. 2024, "AWQ: Activation-aware Weight Quantization for LLM Compression and
Acceleration"): before weight-only rounding, scale each input channel of a Linear up by s (and the
output of whatever feeds it down by s), so the channels that carry large activations lose less to
rounding; the float model computes the same function, the rounded one a better one.

Where s can be folded is the family's smoothing map (``models/architecture.ScaleMapping``): a norm
or a fused Linear's columns (``part``) feeding one or more Linears and nothing else. Per edge, with
calibration statistics of the consumers' inputs X,

    s = a^alpha / sqrt(max(a^alpha) * min(a^alpha)),   a = per-channel activation magnitude,
    alpha* = argmin over a grid in [0, 1) of  sum over consumers of ||X W - (X / s) Q(s W)||^2

(the paper's search; alpha 0 is plain rounding, so the chosen scales never do worse on the
calibration data). The error is computed from the Hessian GPTQ collects, H = 2 X^T X / n: with
E = W - Q(s W) / s, ||X E||^2 = n / 2 tr(E^T H E), so no activation is kept; the magnitude a is the
per-channel RMS sqrt(diag(H) / 2) (the paper takes the mean |x|; both rank channels by size).

A part whose columns feed a wider consumer (grouped-query attention: each value column is read by
the o_proj rows of every query head in its group) gets one scale per column, repeated onto the rows
that read it (``ModelFamily.smoothing_columns`` says which). AutoAWQ skips that edge; here it is
smoothed like the others.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from ..models.architecture import ScaleMapping

AWQ_GRID = 20  # alphas 0, 0.05, ..., 0.95 (the paper's grid)
SMALLEST_MAGNITUDE = 1e-4  # AutoAWQ's clamp of a^alpha

Rounder = Callable[[np.ndarray], tuple[np.ndarray, np.ndarray]]  # weight [in, out] -> codes, scales


@dataclass(frozen=True)
class EdgeSearch:
    """What the search chose for one smoothing edge."""

    edge: ScaleMapping
    alpha: float
    loss: float  # calibration output error with the chosen scales, tr(E^T H E) summed over the consumers
    rtn_loss: float  # the same with no scales (alpha 0): plain rounding


def output_error(weight: np.ndarray, hessian: np.ndarray, rounder: Rounder, rows: np.ndarray) -> float:
    """tr(E^T H E) for E = W - Q(rows * W) / rows: the consumer's output error on the calibration
    inputs (times 2 / n), W [in, out] rounded after its input rows are scaled by ``rows`` [in]."""
    codes, scales = rounder(weight * rows[:, None])
    group = weight.shape[0] // scales.shape[0]
    rounded = codes.astype(np.float64) * np.repeat(scales, group, axis=0)  # [in, out]
    error = weight - rounded / rows[:, None]
    return float(np.einsum("io,io->", error, hessian @ error))


def channel_magnitude(hessians: list[np.ndarray], tokens: list[int], index: np.ndarray, parts: int) -> np.ndarray:
    """Per part column [parts]: the RMS of the consumers' inputs that read it (token-weighted over the
    consumers, averaged over the rows ``index`` maps onto the column)."""
    weights = np.asarray(tokens, np.float64) / max(1, sum(tokens))
    rms = sum(w * np.sqrt(np.maximum(np.diag(h), 0) / 2) for w, h in zip(weights, hessians))  # [in]
    return np.bincount(index, weights=rms, minlength=parts) / np.maximum(np.bincount(index, minlength=parts), 1)


def search_edge(edge: ScaleMapping, weights: list[np.ndarray], hessians: list[np.ndarray], tokens: list[int],
                rounder: Rounder, index: np.ndarray, parts: int, grid: int = AWQ_GRID) -> tuple[EdgeSearch, np.ndarray]:
    """The best alpha of the grid for one edge, and its scales [parts] (one per column of the feeding
    norm or part; consumer input row i is scaled by ``scales[index[i]]``)."""
    magnitude = channel_magnitude(hessians, tokens, index, parts)
    best = None
    for alpha in np.arange(grid) / grid:
        scales = np.maximum(magnitude ** alpha, SMALLEST_MAGNITUDE)
        scales = scales / np.sqrt(scales.max() * scales.min())
        loss = sum(output_error(w, h, rounder, scales[index]) for w, h in zip(weights, hessians))
        if alpha == 0:
            base = loss
        if best is None or loss < best[1]:
            best = (float(alpha), loss, scales)
    alpha, loss, scales = best
    return EdgeSearch(edge, alpha, loss, base), scales


def fold_scales_(state: dict[str, np.ndarray], edge: ScaleMapping, scales: np.ndarray, columns: slice,
                 index: np.ndarray) -> None:
    """Divide the feeding norm's weight (or the part's columns of the feeding Linear, bias included)
    by ``scales`` and multiply the consumers' input rows by ``scales[index]``: the float model's
    function is unchanged (in place on ``state``'s entries, each replaced by a new array)."""
    prev = state[f"{edge.prev}.weight"]
    if prev.ndim == 1:  # a norm's weight [hidden]
        state[f"{edge.prev}.weight"] = (prev / scales).astype(prev.dtype)
    else:  # a Linear [in, out]: its columns that feed the consumers
        scaled = prev.astype(np.float64)
        scaled[:, columns] /= scales
        state[f"{edge.prev}.weight"] = scaled.astype(prev.dtype)
        bias = state.get(f"{edge.prev}.bias")
        if bias is not None:
            scaled_bias = bias.astype(np.float64)
            scaled_bias[columns] /= scales
            state[f"{edge.prev}.bias"] = scaled_bias.astype(bias.dtype)
    rows = scales[index][:, None]
    for layer in edge.layers:
        weight = state[f"{layer}.weight"]
        state[f"{layer}.weight"] = (weight.astype(np.float64) * rows).astype(weight.dtype)

