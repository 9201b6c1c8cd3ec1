"""Timing statistics the benchmark tables report: interleaved rounds (median with min-max) and
per-round ratios. Accuracy intervals are ``ernie_compress.metrics.bootstrap_delta``."""

from __future__ import annotations

import time
from collections.abc import Callable

import numpy as np


def ms_per_call(call: Callable[[], object], iterations: int) -> Callable[[], float]:
    """A timer for :func:`interleaved_rounds`: ``call`` run ``iterations`` times, ms per call."""
    def timed() -> float:
        start = time.perf_counter()
        for _ in range(iterations):
            call()
        return (time.perf_counter() - start) / iterations * 1e3
    return timed


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


def interval(t: dict[str, float], digits: int = 2) -> str:
    """``median (min–max)`` of a timing or ratio from :func:`interleaved_rounds` / :func:`ratio_rounds`."""
    return f"{t['median']:.{digits}f} ({t['min']:.{digits}f}–{t['max']:.{digits}f})"


def finish_table(lines: list[str], threads: list[int], markdown) -> dict:
    """The table and its machine line (the thread counts its rows were measured at), printed and
    written to ``markdown`` when given; returns the machine's description."""
    from ernie_compress.machine import machine_info, machine_line

    machine = machine_info()
    machine["threads"] = " or ".join(map(str, threads))  # the table's threads column says which
    text = "\n".join(lines) + "\n\n" + machine_line(machine)
    print(text)
    if markdown:
        markdown.write_text(text + "\n")
    return machine
