"""GPTQ (Frantar et al. 2023, "GPTQ: Accurate Post-Training Quantization for Generative Pre-trained
Transformers"): weight-only quantization that corrects each rounding error with the rows not yet
quantized, weighted by the inputs' second moments, instead of rounding every weight on its own.

For a Paddle Linear ``y = x W`` (W: [in, out]) and calibration inputs X [n, in], the layer's
squared output error is governed by H = 2 XᵀX / n. Input rows are quantized in order; after row i
the error ``(w_i - q_i) / U_ii`` is spread over rows i+1.. by ``U_i,i+1..``, U being the upper
Cholesky factor of H⁻¹ (the paper's Algorithm 1, unblocked). A group's scale is taken when its
first row is reached, from the rows as updated so far (the paper's group-wise variant). H is
damped by 1% of its mean diagonal; inputs that never occur (zero diagonal) get weight 0.

Mixture-of-experts layers: a routed expert's Linears compute only on the tokens the router sends
to the expert, so their X is those tokens (padding left out), read from the MoE block's dispatch
record; shared experts and dense MLPs see every token. An expert that few tokens reach has a
Hessian of low rank, which the caller treats by rounding it to nearest instead (``--min-expert-tokens``).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..distributed import sum_across_ranks
from ..models.architecture import ExpertSite
from ..models.families import family_of
from .weight_only import qmax, quantize_rtn


GPTQ_BLOCK = 128  # rows per lazy batch (the paper's B)


def gptq_quantize(weight: np.ndarray, hessian: np.ndarray, bits: int, group_size: int | None,
                  damp: float = 0.01, block: int = GPTQ_BLOCK) -> tuple[np.ndarray, np.ndarray]:
    """Codes [in, out] (int8) and scales [groups, out] of ``weight`` [in, out] given H [in, in].

    Rows go in lazy batches (the paper's section 3, "Lazy Batch-Updates"): within a block of rows each
    rounding error updates only the block's later rows; the rows after the block get the block's errors
    at once, one matrix product, so the whole matrix is not rewritten once per row (which made the
    unblocked loop memory-bound: rows² x out x 8 bytes moved). Blocks hold whole groups, so a group's
    scale is still taken from its rows as updated by every row before it: the same computation, in
    another order of floating-point additions."""
    w = weight.astype(np.float64).copy()
    rows, cols = w.shape
    h = hessian.astype(np.float64).copy()
    dead = np.diag(h) == 0
    h[dead, dead] = 1.0
    w[dead, :] = 0.0
    h[np.diag_indices(rows)] += damp * np.mean(np.diag(h))
    upper = np.linalg.cholesky(np.linalg.inv(h)).T  # H^-1 = Uᵀ U
    size = rows if group_size is None else group_size
    top = qmax(bits)
    codes = np.zeros((rows, cols), dtype=np.int8)
    scales = np.zeros((rows // size, cols))
    step = _block_rows(block, size, rows)
    for first in range(0, rows, step):
        last = min(first + step, rows)
        part = w[first:last]  # [step, out], a view: updated in place
        errors = np.empty((last - first, cols))
        for i in range(last - first):
            row = first + i
            if row % size == 0:  # a group's rows are all in this block (or, one group per column: row 0)
                scale = np.abs(w[row:row + size]).max(axis=0) / top
                scale[scale == 0] = 1.0
                scales[row // size] = scale
            scale = scales[row // size]
            q = np.clip(np.rint(part[i] / scale), -top, top)
            codes[row] = q
            errors[i] = (part[i] - q * scale) / upper[row, row]  # [out]
            part[i + 1:] -= np.outer(upper[row, row + 1:last], errors[i])
        w[last:] -= upper[first:last, last:].T @ errors  # [rows - last, step] @ [step, out]
    return codes, scales.astype(np.float32)


def _block_rows(block: int, size: int, rows: int) -> int:
    """Rows per lazy batch: ``block`` cut to a multiple of the group ``size`` (a group never spans two
    blocks), the group itself when it is larger, ``block`` when one group holds the whole column."""
    if size >= rows:
        return block
    return size if size >= block else block - block % size


@dataclass(frozen=True)
class Hessians:
    """What one calibration pass saw, per Linear name."""

    hessians: dict[str, np.ndarray]  # H = 2 XᵀX / n [in, in]
    tokens: dict[str, int]  # n: the non-padding tokens the Linear saw (a routed expert: those routed to it)


CALIBRATION_BATCH = 32  # calibration rows per forward


def calibration_batches(train, samples: int) -> list:
    """The calibration data: ``samples`` training examples drawn as PTQ draws them (seed 0), in batches of
    :data:`CALIBRATION_BATCH` rows (``Batch``; each padded to its longest row)."""
    order = np.random.default_rng(0).permutation(len(train))[:samples]
    return [train.rows(np.sort(order[i:i + CALIBRATION_BATCH])) for i in range(0, len(order), CALIBRATION_BATCH)]


def collect_hessians(model, names: list[str], batches, pad_id: int, skip_starved: bool = False,
                     min_expert_tokens: int | None = None) -> Hessians:
    """H = 2 XᵀX / n of the inputs of the Linears ``names`` over the non-padding positions of
    ``batches`` (``Batch`` objects), from one pass through ``model``. A routed expert's Linear of a
    mixture-of-experts layer sees only the tokens routed to it: its X is those of them that are not
    padding (the family says which Linears are routed and where their block records the dispatch).
    ``skip_starved``: see :func:`observe_hessians`."""
    from ..paddle_env import import_paddle

    paddle = import_paddle()

    def forward(batch):
        return lambda: model(paddle.to_tensor(batch.input_ids), paddle.to_tensor(batch.token_type_ids))

    passes = (((batch.input_ids != pad_id).reshape(-1), forward(batch)) for batch in batches)
    return observe_hessians(dict(model.named_sublayers()), family_of(model.config), names, passes, skip_starved,
                            min_expert_tokens)


def observe_hessians(layers: dict, family, names: list[str], passes, skip_starved: bool = False,
                     min_expert_tokens: int | None = None) -> Hessians:
    """:func:`collect_hessians` over any forward: ``layers`` maps full sublayer names (the model's,
    ``ernie.layers.3.mlp...``) to the sublayers holding ``names`` and their MoE blocks; each of
    ``passes`` is (``real`` [b*s] bool: the batch's non-padding positions, a function running the
    forward on that batch). Layer-by-layer calibration (``sequential.py``) passes one decoder layer.
    In a run on several ranks each passes its share of the batches, and the sums (and token counts) of
    all ranks are added before they are scaled: every rank gets the Hessians of all the batches.

    With ``skip_starved``, a routed expert that GPTQ will round to nearest (fewer calibration tokens than
    ``min_expert_tokens``: :func:`expert_tokens`) gets no Hessian: a first pass counts each expert's
    tokens, the second sums XᵀX for the other Linears only (an MoE layer's experts' Hessians are most of
    its calibration memory: 64 experts x 3 Linears of [2560, 2560] float64 at ERNIE-4.5-21B-A3B's shape,
    16 GB). The result lacks only Hessians :func:`gptq_roundings` does not read."""
    routed = [name for name in names if family.routed_expert(name) is not None]
    if skip_starved and routed:
        passes = list(passes)  # run twice
        counted = _observe(layers, family, routed, passes, count_only=True).tokens
        widths = {name: layers[name].weight.shape[0] for name in routed}
        experts = expert_tokens(family, routed, counted, widths, min_expert_tokens)
        needed = [name for name in names if name not in counted
                  or not experts[family.routed_expert(name).expert]["starved"]]
        seen = _observe(layers, family, needed, passes)
        return Hessians(seen.hessians, {**counted, **seen.tokens})
    return _observe(layers, family, names, passes)


def _observe(layers: dict, family, names: list[str], passes, count_only: bool = False) -> Hessians:
    """One calibration pass of :func:`observe_hessians` (``count_only``: the token counts, no Hessian)."""
    from ..paddle_env import import_paddle

    paddle = import_paddle()
    sites = {name: family.routed_expert(name) for name in names}
    blocks = {site.block: layers[site.block] for site in sites.values() if site is not None}
    sums = {} if count_only else {name: np.zeros((layers[name].weight.shape[0],) * 2) for name in names}
    counts = dict.fromkeys(names, 0)
    real = {}  # "rows": [b*s] bool, True at the current batch's non-padding positions

    def hook(name):
        def record(layer, inputs):
            x = inputs[0].numpy().reshape(-1, inputs[0].shape[-1])  # [rows, in]: b*s, or an expert's n_e
            x = x[_real_rows(real["rows"], sites[name], blocks)]  # [tokens, in]
            counts[name] += len(x)
            if not count_only:
                x = x.astype(np.float64)
                sums[name] += x.T @ x
        return record

    handles = [layers[name].register_forward_pre_hook(hook(name)) for name in names]
    for block in blocks.values():
        block.keep_dispatch = True
    try:
        with paddle.no_grad():
            for rows, forward in passes:
                real["rows"] = rows
                forward()
    finally:
        for handle in handles:
            handle.remove()
        for block in blocks.values():
            block.keep_dispatch, block.dispatch = False, None
    sums = sum_across_ranks(sums)  # calibration divided between ranks (calibration_ranks.py): every rank's sum
    totals = sum_across_ranks({"tokens": np.array([counts[name] for name in names], dtype=np.int64)})["tokens"]
    counts = {name: int(n) for name, n in zip(names, totals)}
    return Hessians({name: 2 * sums[name] / max(1, counts[name]) for name in sums}, counts)


def gptq_roundings(family, names: list[str], seen: Hessians, widths: dict[str, int], bits: int,
                   group_size: int | None, min_expert_tokens: int | None) -> tuple[dict, dict]:
    """How each Linear of ``names`` is rounded, given what calibration ``seen``: (name -> ("gptq" or
    "rtn", weight [in, out] -> (codes, scales)), per routed expert its record from :func:`expert_tokens`).
    A routed expert that got fewer tokens than needed is rounded to nearest; every other Linear by GPTQ
    from its Hessian. ``widths``: each Linear's input width."""
    experts = expert_tokens(family, names, seen.tokens, widths, min_expert_tokens)
    roundings = {}
    for name in names:
        site = family.routed_expert(name)
        if site is not None and experts[site.expert]["starved"]:
            roundings[name] = ("rtn", lambda weight: quantize_rtn(weight, bits, group_size))
        else:
            roundings[name] = ("gptq", lambda weight, h=seen.hessians[name]: gptq_quantize(weight, h, bits, group_size))
    return roundings, experts


def expert_tokens(family, names: list[str], tokens: dict[str, int], widths: dict[str, int],
                  min_expert_tokens: int | None) -> dict[str, dict]:
    """Per routed expert: the calibration tokens its Linears saw and the threshold ``min_expert_tokens``
    (default: the widest input of the expert's Linears); ``starved`` marks those below it."""
    experts = {}
    for name in names:
        site = family.routed_expert(name)
        if site is not None:  # an expert's Linears all see its tokens
            seen = experts.setdefault(site.expert, {"tokens": tokens[name], "needed": 0})
            seen["needed"] = max(seen["needed"], min_expert_tokens or widths[name])
    return {expert: dict(seen, starved=seen["tokens"] < seen["needed"]) for expert, seen in experts.items()}


def _real_rows(real: np.ndarray, site: ExpertSite | None, blocks: dict) -> np.ndarray:
    """Which input rows of a Linear are non-padding tokens: ``real`` [b*s] itself, or for a routed
    expert's Linear (input [n_e, in], the block's rows ``dispatch.rows[e]`` in order) ``real`` at
    those rows [n_e]."""
    if site is None:
        return real
    return real[blocks[site.block].dispatch.rows[site.index].numpy()]
