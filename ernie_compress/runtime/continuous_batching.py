"""Generation requests served with continuous batching of decode steps (Yu et al. 2022, Orca's
iteration-level scheduling), on the export's KV-cache decoder.

Clients are closed-loop: ``concurrency`` requests wait at the start, and each finished request is
followed at once by the next one. Between decode steps the scheduler admits waiting requests (up
to ``max_batch`` running): each is prefilled alone and gives its first token (its time to first
token counts from its arrival, queueing included); then one decode step runs for every running
sequence together. Sequences of different lengths share the batch through the attention mask: a
newcomer's cache is padded on the left, and the mask hides the padding; when a sequence ends its row
leaves the batch. ``max_batch`` 1 is the baseline: one request at a time.
"""

from __future__ import annotations

import statistics
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from .decoding import OnnxDecoder


@dataclass
class _Running:
    request: int
    arrived: float
    tokens: list[int] = field(default_factory=list)
    first_token_s: float | None = None


class _Batch:
    """The running sequences: their rows, and an ``OnnxDecoder`` over the same session whose
    state (caches [b, kv, T, d], mask [b, T], positions [b]) is the whole batch's, so a decode step
    is that decoder's own ``step``."""

    def __init__(self, decoder: OnnxDecoder):
        self.rows: list[_Running] = []
        self.state = OnnxDecoder(decoder.session, decoder.pad_id)
        self._reset()

    def _reset(self) -> None:
        state = self.state
        state.cache, state.mask, state.positions = [], np.zeros((0, 0), np.int64), np.zeros(0, np.int64)

    def join(self, row: _Running, cache: list[np.ndarray], length: int) -> None:
        """Add a prefilled sequence (its cache [1, kv, length, d]): everything is left-padded to the longer."""
        state = self.state
        width = max(state.mask.shape[1], length)
        pad = lambda a, n: np.pad(a, [(0, 0), (0, 0), (n, 0), (0, 0)]) if n else a  # noqa: E731
        state.cache = [np.concatenate([pad(old, width - state.mask.shape[1]), pad(new, width - length)])
                       if self.rows else new for old, new in zip(state.cache or cache, cache)]
        mask = np.zeros((1, width), np.int64)
        mask[0, width - length:] = 1
        state.mask = np.concatenate([np.pad(state.mask, [(0, 0), (width - state.mask.shape[1], 0)]), mask])
        state.positions = np.append(state.positions, length - 1)
        self.rows.append(row)

    def keep(self, keep: list[int]) -> None:
        """Drop the rows not in ``keep``, then the columns no remaining row uses."""
        state = self.state
        self.rows = [self.rows[i] for i in keep]
        if not self.rows:  # empty: the next sequence starts a new batch
            self._reset()
            return
        state.mask, state.positions = state.mask[keep], state.positions[keep]
        unused = int(np.argmax(state.mask.any(axis=0)))  # leading columns that are padding in every row
        state.mask, state.cache = state.mask[:, unused:], [c[keep][:, :, unused:] for c in state.cache]

    def step(self, tokens: np.ndarray) -> np.ndarray:
        return self.state.step(tokens)


def serve_generation(decoder: OnnxDecoder, prompts: list[list[int]], new_tokens: int, concurrency: int,
                     max_batch: int, eos_id: int) -> dict[str, Any]:
    """Serve every prompt (greedy, up to ``new_tokens``); the tokens of each and the load's statistics."""
    start = time.perf_counter()
    waiting = [(i, 0.0) for i in range(min(concurrency, len(prompts)))]
    following = iter(range(len(waiting), len(prompts)))
    batch, finished, batch_sizes = _Batch(decoder), {}, []
    while waiting or batch.rows:
        while waiting and len(batch.rows) < max_batch:  # admit: prefill alone, first token
            request, arrived = waiting.pop(0)
            row = _Running(request, arrived)
            first = int(np.argmax(decoder.prefill([prompts[request]])[0]))
            row.tokens.append(first)
            row.first_token_s = time.perf_counter() - start - arrived
            batch.join(row, decoder.cache, len(prompts[request]))
        done = [i for i, r in enumerate(batch.rows) if len(r.tokens) >= new_tokens or r.tokens[-1] == eos_id]
        if not done:
            batch_sizes.append(len(batch.rows))
            picks = batch.step(np.array([r.tokens[-1] for r in batch.rows])).argmax(axis=1)
            for r, token in zip(batch.rows, picks):
                r.tokens.append(int(token))
            continue
        now = time.perf_counter() - start
        for i in done:
            r = batch.rows[i]
            finished[r.request] = {"tokens": r.tokens, "ttft_s": r.first_token_s, "latency_s": now - r.arrived}
            nxt = next(following, None)
            if nxt is not None:
                waiting.append((nxt, now))
        batch.keep([i for i in range(len(batch.rows)) if i not in done])
    seconds = time.perf_counter() - start
    results = [finished[i] for i in range(len(prompts))]
    ttft = [r["ttft_s"] * 1000 for r in results]
    tokens = sum(len(r["tokens"]) for r in results)
    return {"tokens": [r["tokens"] for r in results],
            "stats": {"requests": len(prompts), "seconds": round(seconds, 2), "tokens": tokens,
                      "tokens_per_s": round(tokens / seconds, 1),
                      "ttft_p50_ms": round(float(np.percentile(ttft, 50)), 1),
                      "ttft_p99_ms": round(float(np.percentile(ttft, 99)), 1),
                      "latency_p50_ms": round(1000 * statistics.median(r["latency_s"] for r in results), 1),
                      "mean_decode_batch": round(statistics.mean(batch_sizes), 2) if batch_sizes else 0.0}}
