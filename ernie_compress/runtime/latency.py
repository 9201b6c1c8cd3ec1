"""Latency percentiles and throughput of a session at fixed batch size and sequence length.

Inputs are real held-out texts tokenized and padded/truncated to ``seq_len`` (so the attention
mask and embedding lookups see realistic ids). After ``warmup`` untimed runs, each of
``iterations`` runs is timed with ``perf_counter``; throughput is ``batch / mean latency``.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np

from ..errors import UserError


@dataclass(frozen=True)
class LatencyConfig:
    batch_sizes: tuple[int, ...] = (1, 32)
    seq_len: int = 128
    warmup: int = 5
    iterations: int = 30
    min_seconds: float = 0.0  # keep timing until this much time has passed as well

    def __post_init__(self) -> None:
        if not self.batch_sizes or any(b < 1 for b in self.batch_sizes):
            raise UserError(f"--batch-sizes must be positive integers, got {list(self.batch_sizes)}")
        if not 1 <= self.seq_len <= 4096:
            raise UserError(f"--seq-len must be in [1, 4096], got {self.seq_len}")
        if self.iterations < 1 or self.warmup < 0:
            raise UserError("--iterations must be >= 1 and --warmup >= 0")


def percentiles(samples_ms: list[float]) -> dict[str, float]:
    arr = np.asarray(samples_ms)
    return {"p50_ms": float(np.percentile(arr, 50)), "p95_ms": float(np.percentile(arr, 95)),
            "p99_ms": float(np.percentile(arr, 99)), "mean_ms": float(arr.mean())}


def measure_latency(run, input_ids: np.ndarray, token_type_ids: np.ndarray, batch_size: int,
                    config: LatencyConfig) -> dict[str, float]:
    """Time ``run(ids, types)`` on batches of ``batch_size`` rows cycled from the given inputs."""
    n = len(input_ids)
    reps = -(-batch_size // n)
    ids = np.tile(input_ids, (reps, 1))[:batch_size]
    types = np.tile(token_type_ids, (reps, 1))[:batch_size]
    for _ in range(config.warmup):
        run(ids, types)
    samples: list[float] = []
    start = time.perf_counter()
    while len(samples) < config.iterations or time.perf_counter() - start < config.min_seconds:
        t = time.perf_counter()
        run(ids, types)
        samples.append((time.perf_counter() - t) * 1000)
    stats = percentiles(samples)
    stats.update(batch_size=batch_size, seq_len=int(ids.shape[1]), iterations=len(samples),
                 qps=batch_size / (stats["mean_ms"] / 1000))
    return stats
