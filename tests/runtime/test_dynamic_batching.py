"""The dynamic batcher: every request answered with its own row, none lost, batches formed."""

from __future__ import annotations

import threading

import numpy as np
import pytest

from ernie_compress.runtime.dynamic_batching import BatcherConfig, DynamicBatcher, serve_load


def _echo_model(ids, types):
    """Output row = (sum of non-pad ids, length, batch size): identifies the input exactly."""
    lengths = (ids != 0).sum(axis=1)
    return np.stack([ids.sum(axis=1), lengths, np.full(len(ids), len(ids))], axis=1)


def _requests(n, seed=0):
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        length = int(rng.integers(2, 20))
        ids = rng.integers(1, 1000, size=length).astype(np.int64)
        out.append((ids, np.zeros_like(ids)))
    return out


@pytest.mark.parametrize("concurrency", [1, 4, 16])
def test_every_request_gets_its_own_answer(concurrency):
    reqs = _requests(300)
    result = serve_load(_echo_model, reqs, concurrency, BatcherConfig(max_batch=8, max_wait_ms=2))
    for (ids, _), out in zip(reqs, result["outputs"]):
        assert out is not None
        assert out[0] == ids.sum() and out[1] == len(ids)
    assert result["stats"]["requests"] == 300
    if concurrency > 1:
        assert result["stats"]["mean_batch"] > 1  # requests really were grouped


def test_batches_respect_max_batch():
    seen = []
    lock = threading.Lock()

    def model(ids, types):
        with lock:
            seen.append(len(ids))
        return _echo_model(ids, types)

    serve_load(model, _requests(200), 32, BatcherConfig(max_batch=5, max_wait_ms=20))
    assert max(seen) <= 5 and sum(seen) == 200


def test_no_batching_baseline_runs_one_at_a_time():
    result = serve_load(_echo_model, _requests(50), 4, None)
    assert all(out[2] == 1 for out in result["outputs"])


def test_model_errors_reach_the_client():
    def broken(ids, types):
        raise RuntimeError("boom")

    with DynamicBatcher(broken, BatcherConfig()) as batcher:
        future = batcher.submit(np.array([1, 2]), np.array([0, 0]))
        with pytest.raises(RuntimeError, match="boom"):
            future.result(timeout=5)


def test_per_position_outputs_come_back_cut_with_their_own_types_and_padding():
    """A token-level model ([b, s, ...] out): each client gets its own ids and token types back, cut
    to its length; padded positions hold the configured pad id (not 0) and type 0."""
    pad = 5000
    padded = []

    def echo_positions(ids, types):
        padded.append(int((ids == pad).sum()))
        return np.stack([ids, types], axis=-1)  # [b, s, 2]

    rng = np.random.default_rng(1)
    reqs = [(ids, rng.integers(0, 2, size=len(ids)).astype(np.int64)) for ids, _ in _requests(120)]
    result = serve_load(echo_positions, reqs, 8, BatcherConfig(max_batch=6, max_wait_ms=5, pad_id=pad))
    for (ids, types), out in zip(reqs, result["outputs"]):
        assert out.shape == (len(ids), 2)
        np.testing.assert_array_equal(out[:, 0], ids)
        np.testing.assert_array_equal(out[:, 1], types)
    assert result["stats"]["mean_batch"] > 1
    assert sum(padded) > 0  # mixed lengths: some rows were padded, and with the pad id
