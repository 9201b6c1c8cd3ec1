"""Statistics the benchmark tables report: interleaved timing rounds (median with min-max) and
paired bootstrap intervals for accuracy differences (Efron & Tibshirani 1993, ch. 13, percentile
interval)."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np


def interleaved_rounds(timers: dict[str, Callable[[], float]], rounds: int) -> dict[str, dict[str, float]]:
    """Call every timer once per round, in turn, ``rounds`` times, so that a shared machine's drift
    hits every variant alike; each variant's median, min and max over the rounds."""
    samples: dict[str, list[float]] = {name: [] for name in timers}
    for _ in range(rounds):
        for name, timer in timers.items():
            samples[name].append(timer())
    return {name: {"median": float(np.median(v)), "min": float(np.min(v)), "max": float(np.max(v)),
                   "rounds": v} for name, v in samples.items()}


def ratio_rounds(base: list[float], other: list[float]) -> dict[str, float]:
    """``base / other`` per round (the same round's numbers: drift cancels), median and min-max."""
    ratios = np.asarray(base) / np.asarray(other)
    return {"median": float(np.median(ratios)), "min": float(ratios.min()), "max": float(ratios.max())}


def paired_bootstrap(correct: np.ndarray, reference: np.ndarray, resamples: int = 2000,
                     seed: int = 0) -> tuple[float, float, float]:
    """Accuracy difference in points (``correct`` minus ``reference``, both 0/1 per example of the
    same test set) and its 95% percentile interval from resampling the examples."""
    rng = np.random.default_rng(seed)
    diff = correct.astype(np.float64) - reference.astype(np.float64)  # [n]
    picks = rng.integers(0, len(diff), size=(resamples, len(diff)))
    means = diff[picks].mean(axis=1) * 100
    low, high = np.percentile(means, [2.5, 97.5])
    return float(diff.mean() * 100), float(low), float(high)
