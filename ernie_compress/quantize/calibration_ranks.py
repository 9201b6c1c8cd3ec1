"""GPTQ calibration divided between ranks (``--nproc`` / ``--nnodes``, ``distributed.py``).

Data parallelism applied to calibration, as llm-compressor and GPTQModel do on several GPUs: each rank
runs its contiguous share of the calibration batches (:func:`my_batches`) through the model (or, streamed,
through one decoder layer at a time), and :func:`~.gptq.observe_hessians` adds the Hessian sums and token
counts of all ranks by all-reduce before scaling them, so every rank holds the Hessians of all the batches.
The per-Linear solves are then divided: :func:`owners` gives each Linear to one rank, balancing the
solves' cost (Cholesky of H⁻¹ ~ in³, the column sweep ~ in² x out) greedily, largest first (Graham's LPT
rule); each rank solves its own and :func:`solve_divided` broadcasts every Linear's codes and scales from
its owner, so all ranks hold the same rounded weights (a streamed rank runs its batches through the rounded
layer next). Rank 0 writes the output.

Equal to one process: each batch sees the same ops on the same inputs; only the order in which the
float64 Hessian sums are added changes (rank by rank instead of batch by batch).
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from ..distributed import World, broadcast_arrays, shard_rows, world


def my_batches(batches: list, w: World | None = None) -> list:
    """This rank's contiguous share of the calibration batches (all of them in a one-process run)."""
    w = w or world()
    return batches[shard_rows(len(batches), w)]


def solve_cost(how: str, rows: int, cols: int) -> int:
    """The relative cost of rounding a weight [rows, cols]: GPTQ's inverse and Cholesky factor (rows³) and
    its row-by-row update of the remaining rows (rows² x cols / 2); round to nearest, one pass (rows x cols)."""
    return rows ** 3 + rows * rows * cols // 2 if how == "gptq" else rows * cols


def owners(costs: dict[str, int], size: int) -> dict[str, int]:
    """Each name's rank: the most costly first, each to the rank with the least cost so far (ties: the
    lowest rank; names ordered by cost, then name, so every rank computes the same split)."""
    load = [0] * size
    owner = {}
    for name in sorted(costs, key=lambda n: (-costs[n], n)):
        rank = min(range(size), key=lambda r: (load[r], r))
        owner[name] = rank
        load[rank] += costs[name]
    return owner


def solve_divided(roundings: dict[str, tuple[str, Callable]], state: dict[str, np.ndarray],
                  group_size: int | None, w: World | None = None) -> dict[str, tuple[str, Callable]]:
    """``roundings`` (name -> (how, weight [in, out] -> (codes, scales))) with every function replaced by
    its result: this rank computes the Linears it owns from ``state[name.weight]``, the others' come by
    broadcast from their owners. In a one-process run, ``roundings`` unchanged (computed when called)."""
    w = w or world()
    if w.size == 1:
        return roundings
    shapes = {name: state[f"{name}.weight"].shape for name in roundings}  # [in, out]
    owner = owners({name: solve_cost(how, *shapes[name]) for name, (how, _) in roundings.items()}, w.size)
    mine = {}
    for name, (_, rounding) in roundings.items():
        if owner[name] == w.rank:
            codes, scales = rounding(state[f"{name}.weight"])  # [in, out] int8, [groups, out] float32
            mine[f"{name}/codes"], mine[f"{name}/scales"] = codes, np.asarray(scales, dtype=np.float32)
    results = {}
    for rank in range(w.size):
        like = {}
        for name in (n for n in roundings if owner[n] == rank):
            rows, cols = shapes[name]
            like[f"{name}/codes"] = ((rows, cols), np.int8)
            like[f"{name}/scales"] = ((rows // (group_size or rows), cols), np.float32)
        results.update(broadcast_arrays(mine if rank == w.rank else None, like, src=rank))
    return {name: (how, lambda weight, r=(results[f"{name}/codes"], results[f"{name}/scales"]): r)
            for name, (how, _) in roundings.items()}
