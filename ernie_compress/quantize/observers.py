"""Activation range observers for post-training quantization, in NumPy.

Each returns the abs-max threshold ``t`` of a symmetric int8 grid (scale ``t / 127``) from
samples of a tensor's values:

- ``abs_max``: the largest magnitude seen (no clipping; outliers stretch the grid).
- ``percentile``: the p-th percentile of magnitudes (clips the rare tail).
- ``mse``: the threshold among 100 candidates that minimises the quantize-dequantize squared error
  (as in paddleslim's MSEObserver).
- ``kl``: TensorRT's entropy calibration (Migacz 2017, "8-bit Inference with TensorRT"): the
  threshold whose 128-level quantized histogram has the least KL divergence from the reference.

They are written here because they run on the Linear inputs we capture with forward pre-hooks in
the FP32 model; paddle.quantization's PTQ wrapper (where paddleslim's observers plug in) feeds a
convert path that is broken on Paddle 3.3.1 and would still need its scales extracted by hand.
"""

from __future__ import annotations

import numpy as np


def _fake_quant(x: np.ndarray, threshold: float, qmax: int = 127) -> np.ndarray:
    scale = threshold / qmax
    return np.clip(np.round(x / scale), -qmax, qmax) * scale


def abs_max_threshold(values: np.ndarray) -> float:
    return float(np.abs(values).max())


def percentile_threshold(values: np.ndarray, percentile: float = 99.99) -> float:
    return float(np.percentile(np.abs(values), percentile))


def mse_threshold(values: np.ndarray, candidates: int = 100) -> float:
    top = abs_max_threshold(values)
    if top == 0:
        return 0.0
    best, best_err = top, np.inf
    for k in range(1, candidates + 1):
        t = top * k / candidates
        err = float(np.mean((values - _fake_quant(values, t)) ** 2))
        if err < best_err:
            best, best_err = t, err
    return best


def kl_threshold(values: np.ndarray, bins: int = 2048, levels: int = 128) -> float:
    magnitudes = np.abs(values).ravel()
    top = float(magnitudes.max())
    if top == 0:
        return 0.0
    hist, edges = np.histogram(magnitudes, bins=bins, range=(0, top))
    hist = hist.astype(np.float64)
    best_i, best_kl = bins, np.inf
    for i in range(levels, bins + 1):
        reference = hist[:i].copy()
        reference[-1] += hist[i:].sum()  # clipped outliers land in the last bin
        # quantize the first i bins into `levels` groups, then spread each back evenly
        groups = np.array_split(hist[:i], levels)
        expanded = []
        for g in groups:
            nonzero = np.count_nonzero(g)
            fill = g.sum() / nonzero if nonzero else 0.0
            expanded.append(np.where(g > 0, fill, 0.0))
        candidate = np.concatenate(expanded)
        p = reference / reference.sum()
        q = candidate / max(candidate.sum(), 1e-12)
        mask = p > 0
        kl = float(np.sum(p[mask] * np.log(p[mask] / np.maximum(q[mask], 1e-12))))
        if kl < best_kl:
            best_i, best_kl = i, kl
    return float(edges[best_i]) if best_i < bins else top


OBSERVERS = {
    "abs_max": lambda v, p: abs_max_threshold(v),
    "percentile": percentile_threshold,
    "mse": lambda v, p: mse_threshold(v),
    "kl": lambda v, p: kl_threshold(v),
}
