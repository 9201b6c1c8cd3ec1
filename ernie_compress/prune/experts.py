"""Expert pruning for mixture-of-experts models: score every routed expert on calibration data (the
training split) and remove the same number of the least important from every MoE layer.

Scores, per MoE layer and routed expert ``j``, over the calibration tokens ``X_j`` routed to ``j``
(those whose top-k holds ``j``; pad tokens left out):

- ``reap``: REAP, router-weighted expert activation pruning (Lasby et al. 2025, "REAP the Experts:
  Why Pruning Prevails for One-Shot MoE Compression", arXiv:2510.13999):
  ``S_j = 1/|X_j| * sum_{x in X_j} g_j(x) * ||f_j(x)||_2`` — the mean over the tokens routed to
  the expert of its router gate value times the L2 norm of its output. ``g_j(x)`` here is the
  mixing weight the layer applies (ERNIE 4.5: the unbiased softmax renormalised over the chosen
  ``k``), as the paper's reference code does with ``renormalize_router_weights``; an expert no
  calibration token reached scores 0;
- ``frequency``: ``|X_j|``, how many tokens are routed to it (frequency-based pruning, one of the
  paper's baselines).

Both come from one calibration pass per batch: the MoE block's dispatch record (``keep_dispatch``:
each expert's token rows of the flattened [b*s] batch and their mixing weights, in the order the
expert sees them) and a forward-post-hook on each expert (its outputs, in that same order).
The physical removal is the family's (``GroupedQueryHeadsAndExperts.remove_experts``).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from ..data.batching import EncodedSplit
from ..errors import UserError
from ..paddle_env import import_paddle
from ..progress import progress_bar

EXPERT_METHODS = ("reap", "frequency")


def plan_expert_removal(config, fraction: float) -> int:
    """How many routed experts to remove from every MoE layer: ``round(fraction * E)``, refused in one
    line when that is none, or all of them."""
    experts = config.moe_num_experts
    remove = round(fraction * experts)
    if not 1 <= remove < experts:
        raise UserError(f"--experts {fraction} would remove {remove} of the {experts} routed experts per MoE layer; "
                        f"experts go in steps of 1/{experts}: remove at least one and keep at least one")
    return remove


class _ExpertOutputNorms:
    """Forward-post-hooks on every routed expert of ``blocks``: the L2 norm of each output row [n_e]
    of the last forward, by (block, expert), in the order the expert saw its tokens."""

    def __init__(self, blocks: Sequence):
        self.norms: dict[tuple[int, int], np.ndarray] = {}
        self.handles = [expert.register_forward_post_hook(self._hook(b, e))
                        for b, block in enumerate(blocks) for e, expert in enumerate(block.experts)]

    def _hook(self, block: int, expert: int):
        def record(layer, inputs, output):
            self.norms[(block, expert)] = np.linalg.norm(output.numpy().astype(np.float64), axis=-1)  # [n_e]
        return record

    def remove(self) -> None:
        for handle in self.handles:
            handle.remove()


def _accumulate(blocks: Sequence, real: np.ndarray, norms: _ExpertOutputNorms | None,
                sums: np.ndarray, counts: np.ndarray) -> None:
    """Add one batch's routed real tokens (``counts``) and gate x output norm (``sums``), both
    [layers, E], from each block's dispatch record; ``real`` [b*s] is False at pad positions."""
    for b, block in enumerate(blocks):
        dispatch = block.dispatch
        for e, rows in enumerate(dispatch.rows):
            rows = rows.numpy()  # [n_e] positions in the flattened batch
            if not len(rows):
                continue
            kept = real[rows]  # [n_e]
            counts[b, e] += kept.sum()
            if norms is not None:
                weights = dispatch.weights[e].numpy().astype(np.float64)  # [n_e]
                sums[b, e] += np.sum((weights * norms.norms[(b, e)])[kept])


def expert_importance(method: str, model, split: EncodedSplit, samples: int, batch_size: int = 16,
                      seed: int = 0) -> list[np.ndarray]:
    """Per MoE layer (in layer order), the score of each routed expert [E] on up to ``samples``
    training rows (``reap`` or ``frequency``, see the module docstring)."""
    if method not in EXPERT_METHODS:
        raise UserError(f"experts are scored by {' or '.join(EXPERT_METHODS)}, not '{method}'")
    if split is None:
        raise UserError("expert importance needs calibration data (the task's train split)")
    paddle = import_paddle()
    blocks = model.moe_blocks()
    experts = len(blocks[0].experts)
    sums, counts = np.zeros((len(blocks), experts)), np.zeros((len(blocks), experts))
    order = np.random.default_rng(seed).permutation(len(split))[:samples]
    norms = _ExpertOutputNorms(blocks) if method == "reap" else None
    model.eval()
    for block in blocks:
        block.keep_dispatch = True
    try:
        with paddle.no_grad(), progress_bar(-(-len(order) // batch_size), f"expert importance ({method})") as bar:
            for start in range(0, len(order), batch_size):
                idx = np.sort(order[start:start + batch_size])
                ids = split.input_ids[idx, :int(split.lengths[idx].max())]  # [b, s]
                model(paddle.to_tensor(ids))
                _accumulate(blocks, (ids != split.pad_id).reshape(-1), norms, sums, counts)
                bar.advance()
    finally:
        for block in blocks:
            block.keep_dispatch, block.dispatch = False, None
        if norms is not None:
            norms.remove()
    if method == "frequency":
        return list(counts)
    return list(np.divide(sums, counts, out=np.zeros_like(sums), where=counts > 0))


def experts_to_keep(scores: Sequence[np.ndarray], remove: int) -> list[list[int]]:
    """Per MoE layer, the experts kept (sorted): all but the ``remove`` lowest scores (ties: the
    lower index stays)."""
    return [sorted(int(e) for e in np.argsort(-np.asarray(s), kind="stable")[:len(s) - remove]) for s in scores]
