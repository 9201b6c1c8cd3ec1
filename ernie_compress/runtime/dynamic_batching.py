"""Dynamic batching for serving-like load, and the benchmark that compares it with none.

Clients submit single requests; a worker thread collects them into one batch until it holds
``max_batch`` requests or the oldest has waited ``max_wait_ms``, pads the batch to its longest
row, runs it once and hands each client its own row back (the design of Triton's dynamic batcher
and TF-Serving's batching layer). Every request gets exactly the output of its own input: rows
are matched by position, never by order of completion.
"""

from __future__ import annotations

import queue
import threading
import time
from concurrent.futures import Future
from dataclasses import dataclass

import numpy as np

from ..errors import UserError
from .latency import percentiles


@dataclass(frozen=True)
class BatcherConfig:
    max_batch: int = 32
    max_wait_ms: float = 5.0
    pad_id: int = 0

    def __post_init__(self) -> None:
        if self.max_batch < 1:
            raise UserError(f"--max-batch must be >= 1, got {self.max_batch}")
        if self.max_wait_ms < 0:
            raise UserError(f"--max-wait-ms must be >= 0, got {self.max_wait_ms}")


@dataclass
class _Request:
    input_ids: np.ndarray  # [seq]
    token_type_ids: np.ndarray  # [seq]
    future: Future
    arrived: float


class DynamicBatcher:
    """Groups single requests into batches for ``run(ids [b, s], types [b, s]) -> [b, ...]``."""

    def __init__(self, run, config: BatcherConfig):
        self._run = run
        self.config = config
        self._queue: queue.Queue[_Request | None] = queue.Queue()
        self.batch_sizes: list[int] = []
        self._worker = threading.Thread(target=self._loop, name="dynamic-batcher", daemon=True)
        self._worker.start()

    def submit(self, input_ids: np.ndarray, token_type_ids: np.ndarray) -> Future:
        future: Future = Future()
        self._queue.put(_Request(np.asarray(input_ids), np.asarray(token_type_ids), future,
                                 time.perf_counter()))
        return future

    def close(self) -> None:
        self._queue.put(None)
        self._worker.join()

    def __enter__(self) -> "DynamicBatcher":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def _loop(self) -> None:
        while True:
            first = self._queue.get()
            if first is None:
                return
            batch = [first]
            deadline = first.arrived + self.config.max_wait_ms / 1000
            stop = False
            while len(batch) < self.config.max_batch:
                timeout = deadline - time.perf_counter()
                try:
                    item = self._queue.get(timeout=max(timeout, 0)) if timeout > 0 else self._queue.get_nowait()
                except queue.Empty:
                    break
                if item is None:
                    stop = True
                    break
                batch.append(item)
            self._execute(batch)
            if stop:
                return

    def _execute(self, batch: list[_Request]) -> None:
        seq = max(len(r.input_ids) for r in batch)
        ids = np.full((len(batch), seq), self.config.pad_id, dtype=np.int64)
        types = np.zeros((len(batch), seq), dtype=np.int64)
        for row, r in enumerate(batch):
            ids[row, :len(r.input_ids)] = r.input_ids
            types[row, :len(r.token_type_ids)] = r.token_type_ids
        self.batch_sizes.append(len(batch))
        try:
            out = self._run(ids, types)
        except Exception as exc:  # hand the failure to every waiting client
            for r in batch:
                r.future.set_exception(exc)
            return
        for row, r in enumerate(batch):
            # per-position outputs (tags, spans, LM) come back cut to the request's own length
            r.future.set_result(out[row] if out.ndim == 2 else out[row, :len(r.input_ids)])


def serve_load(run, requests: list[tuple[np.ndarray, np.ndarray]], concurrency: int,
               batcher: BatcherConfig | None) -> dict:
    """Send ``requests`` from ``concurrency`` client threads (each waits for its answer before
    sending the next); with ``batcher`` through a :class:`DynamicBatcher`, else one run each."""
    if concurrency < 1:
        raise UserError(f"--concurrency must be >= 1, got {concurrency}")
    latencies: list[float] = []
    outputs: list[np.ndarray | None] = [None] * len(requests)
    lock = threading.Lock()
    next_index = iter(range(len(requests)))
    dyn = DynamicBatcher(run, batcher) if batcher else None

    def client() -> None:
        while True:
            with lock:
                i = next(next_index, None)
            if i is None:
                return
            ids, types = requests[i]
            t = time.perf_counter()
            if dyn is not None:
                out = dyn.submit(ids, types).result()
            else:
                out = run(ids[None, :], types[None, :])[0]
            elapsed = (time.perf_counter() - t) * 1000
            with lock:
                latencies.append(elapsed)
                outputs[i] = out

    start = time.perf_counter()
    threads = [threading.Thread(target=client) for _ in range(concurrency)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - start
    sizes = dyn.batch_sizes if dyn else [1] * len(requests)
    if dyn is not None:
        dyn.close()
    stats = percentiles(latencies)
    stats.update(qps=len(requests) / wall, requests=len(requests), seconds=wall,
                 mean_batch=float(np.mean(sizes)), batches=len(sizes))
    return {"stats": stats, "outputs": outputs}
