"""PTQ observers against distributions whose right answer is known."""

from __future__ import annotations

import numpy as np
import pytest

from ernie_compress.quantize.observers import (abs_max_threshold, kl_threshold, mse_threshold,
                                               percentile_threshold)


def test_abs_max_and_percentile():
    values = np.concatenate([np.linspace(-1, 1, 10001), [50.0]])
    assert abs_max_threshold(values) == 50.0
    assert percentile_threshold(values, 99.0) == pytest.approx(0.99, abs=0.01)


def test_kl_ignores_a_rare_outlier():
    rng = np.random.default_rng(0)
    values = np.concatenate([rng.normal(0, 1, 200_000), [80.0]])
    assert 2.0 < kl_threshold(values) < 20.0  # clips the outlier, keeps the bulk


def test_mse_clips_a_heavy_tail():
    values = np.random.default_rng(0).laplace(0, 1, 200_000)
    t = mse_threshold(values)
    assert 3.0 < t < 0.8 * abs_max_threshold(values)


def test_mse_on_uniform_keeps_full_range():
    values = np.random.default_rng(1).uniform(-1, 1, 100_000)
    assert mse_threshold(values) == pytest.approx(1.0, abs=0.03)


def test_zero_tensor():
    assert mse_threshold(np.zeros(10)) == 0.0 and kl_threshold(np.zeros(10)) == 0.0
