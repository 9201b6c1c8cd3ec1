"""Data-parallel training on ``paddle.distributed``'s collective backend (gloo on CPUs, NCCL on GPUs).

Every rank draws the same global batch (same seed, same data order) and trains on its contiguous
share of the rows; each rank's loss is scaled by its share of the batch's weight (examples, or
labeled tokens for token-level tasks), and the gradients are summed across ranks and divided by the
world size in one all-reduce (:func:`all_reduce_gradients`). With dropout off, a step on N ranks
is the step one process takes on the whole batch (Goyal et al. 2017's "linear scaling" setting,
without changing the batch). Only rank 0 writes files and prints.

Processes come from ``python -m paddle.distributed.launch`` (one or several machines; it sets
``PADDLE_TRAINER_ID`` and ``PADDLE_TRAINERS_NUM``) or from :func:`run_workers` (``--nproc N``:
``paddle.distributed.spawn`` on this machine).
"""

from __future__ import annotations

import contextlib
import io
import logging
import os
import sys
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from .errors import UserError
from .paddle_env import import_paddle

_initialised = False


@dataclass(frozen=True)
class World:
    rank: int = 0
    size: int = 1

    @property
    def main(self) -> bool:
        return self.rank == 0


def world() -> World:
    """This process's rank and the number of ranks (1 outside a distributed run)."""
    return World(int(os.environ.get("PADDLE_TRAINER_ID", 0)), int(os.environ.get("PADDLE_TRAINERS_NUM", 1)))


def init() -> World:
    """Join the process group once (no-op in a one-process run)."""
    global _initialised
    w = world()
    if w.size > 1 and not _initialised:
        paddle = import_paddle()
        with contextlib.redirect_stderr(io.StringIO()):  # its banner of modified FLAGS, on every rank
            paddle.distributed.init_parallel_env()
        _initialised = True
    return w


def barrier() -> None:
    """Wait for every rank (no-op in a one-process run)."""
    if init().size > 1:
        import_paddle().distributed.barrier()


def shard_rows(rows: int, w: World) -> slice:
    """This rank's contiguous rows of a global batch (the first ``rows % size`` ranks get one more)."""
    base, extra = divmod(rows, w.size)
    start = w.rank * base + min(w.rank, extra)
    return slice(start, start + base + (1 if w.rank < extra else 0))


def all_reduce_gradients(params: Sequence, w: World) -> None:
    """Sum every parameter's gradient across ranks and divide by the world size (one collective)."""
    paddle = import_paddle()
    with_grad = [p for p in params if p.grad is not None]
    if not with_grad:
        return
    flat = paddle.concat([p.grad.reshape([-1]) for p in with_grad])  # [sum of sizes]
    paddle.distributed.all_reduce(flat)
    flat = flat / w.size
    offset = 0
    for p in with_grad:
        n = int(np.prod(p.shape))
        p.grad.set_value(flat[offset:offset + n].reshape(p.shape))
        offset += n


def sum_across_ranks(arrays: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Each array summed element-wise over the ranks (one all-reduce per array, in name order, so that
    no second copy of them all is held); the arrays themselves in a one-process run."""
    w = init()
    if w.size == 1:
        return arrays
    paddle = import_paddle()
    summed = {}
    for name in sorted(arrays):
        tensor = paddle.to_tensor(arrays[name])
        paddle.distributed.all_reduce(tensor)
        summed[name] = tensor.numpy()
        del tensor
    return {name: summed[name] for name in arrays}


def broadcast_arrays(arrays: dict[str, np.ndarray] | None, like: dict[str, tuple[tuple[int, ...], Any]],
                     src: int) -> dict[str, np.ndarray]:
    """Rank ``src``'s ``arrays`` on every rank; ``like`` gives each one's (shape, dtype), which every
    rank knows (the other ranks pass ``arrays`` None)."""
    w = init()
    if w.size == 1:
        return dict(arrays or {})
    paddle = import_paddle()
    received = {}
    for name in sorted(like):
        shape, dtype = like[name]
        value = arrays[name] if w.rank == src else np.zeros(shape, dtype=dtype)
        tensor = paddle.to_tensor(np.ascontiguousarray(value))
        paddle.distributed.broadcast(tensor, src=src)
        received[name] = tensor.numpy()
    return received


# --- --nproc: workers on this machine --------------------------------------------------------
def _worker(fn: Callable[[Any], Any], arg: Any, outbox: str, show_progress: bool,
            threads: int | None) -> None:
    """One spawned rank: stdout to stderr (the parent prints the result), progress on rank 0 only,
    the CPU threads shared between the ranks unless ``--threads`` says otherwise."""
    from . import progress
    from .paddle_env import set_default_threads, sigterm_as_interrupt

    os.dup2(2, 1)
    sigterm_as_interrupt()
    w = init()
    set_default_threads(threads or max(1, (os.cpu_count() or 1) // w.size))
    progress.set_enabled(show_progress and w.main)
    try:
        result = fn(arg)
    except UserError as exc:
        Path(outbox, f"error-{w.rank}.txt").write_text(str(exc), encoding="utf-8")
        sys.exit(2)
    except KeyboardInterrupt as exc:
        Path(outbox, f"error-{w.rank}.txt").write_text(f"interrupted{f' ({exc.args[0]})' if exc.args else ''}",
                                                       encoding="utf-8")
        sys.exit(130)
    if w.main:  # the typed result, as the stage returned it (results.py)
        import pickle

        Path(outbox, RESULT_FILE).write_bytes(pickle.dumps(result))


def _worker_main(job: str, outbox: str) -> None:
    """Entry of a rank started by ``paddle.distributed.launch`` for :func:`run_nodes`."""
    import pickle

    fn, arg, show_progress, threads = pickle.loads(Path(job).read_bytes())
    _worker(fn, arg, outbox, show_progress, threads)


def _stderr_fd() -> int | None:
    """Where the launcher's output goes: our stderr (stdout carries --json), if it is a real file."""
    try:
        return sys.stderr.fileno()
    except (AttributeError, OSError, ValueError):
        return None


QUIET_RANKS = {"GLOG_minloglevel": "2",  # Paddle's C++ start-up lines in every rank
               "PYTHONWARNINGS": "ignore::UserWarning"}  # and its import-time warnings


def _raise_rank_error(outbox: str) -> None:
    """The first failed rank's message (written by :func:`_worker`) as one error, if any."""
    errors = sorted(Path(outbox).glob("error-*.txt"))
    if not errors:
        return
    message = errors[0].read_text(encoding="utf-8")
    if message.startswith("interrupted"):
        raise KeyboardInterrupt(message[len("interrupted"):].strip(" ()")) from None
    raise UserError(message) from None


MASTER_TIMEOUT_ENV = "ERNIE_COMPRESS_MASTER_TIMEOUT"  # seconds a node waits for --master (default 120)


def check_master(master: str, node_rank: int, timeout: float | None = None) -> None:
    """Node 0 must be able to serve ``master``'s port; every other node must reach it (node 0 may
    start a little later: retried until the timeout)."""
    import socket
    import time

    host, _, port = master.rpartition(":")
    if node_rank == 0:
        try:
            with socket.socket() as s:
                s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                s.bind(("", int(port)))
        except OSError as exc:
            raise UserError(f"--master {master}: node 0 cannot serve port {port} ({exc.strerror or exc})") from None
        return
    timeout = float(os.environ.get(MASTER_TIMEOUT_ENV, 120)) if timeout is None else timeout
    deadline = time.monotonic() + timeout
    while True:
        try:
            socket.create_connection((host, int(port)), timeout=2).close()
            return
        except OSError as exc:
            if time.monotonic() >= deadline:
                raise UserError(f"--master {master} is unreachable from node {node_rank} after {timeout:.0f} s "
                                f"({exc.strerror or exc}); start node 0 first and check the address, port and "
                                f"firewall") from None
            time.sleep(1)


def run_nodes(fn: Callable[[Any], Any], arg: Any, nproc: int, nnodes: int, master: str,
              node_rank: int, threads: int | None = None) -> Any:
    """Run ``fn(arg)`` as this machine's ``nproc`` ranks of an ``nnodes``-machine run through
    ``paddle.distributed.launch``; rank 0's result on node 0, None on the other nodes."""
    import pickle
    import subprocess

    from .progress import enabled

    check_master(master, node_rank)
    with tempfile.TemporaryDirectory(prefix="ernie-compress-node-") as outbox:
        job, script = Path(outbox, "job.pkl"), Path(outbox, "rank.py")
        job.write_bytes(pickle.dumps((fn, arg, enabled(), threads)))
        script.write_text("import sys\nfrom ernie_compress.distributed import _worker_main\n"
                          "_worker_main(sys.argv[1], sys.argv[2])\n", encoding="utf-8")
        env = {**os.environ, **QUIET_RANKS}
        launch = subprocess.run(
            [sys.executable, "-m", "paddle.distributed.launch", "--nnodes", str(nnodes), "--master", master,
             "--rank", str(node_rank), "--nproc_per_node", str(nproc), "--log_level", "ERROR",
             "--log_dir", str(Path(outbox, "log")), str(script), str(job), outbox],
            stdout=_stderr_fd(), stderr=_stderr_fd(), env=env)
        _raise_rank_error(outbox)
        if launch.returncode != 0:
            raise UserError(f"paddle.distributed.launch ended with exit code {launch.returncode} on node "
                            f"{node_rank}; the ranks' logs were in its --log_dir")
        return _read_result(outbox, required=False)


RESULT_FILE = "result.pkl"


def _read_result(outbox: str, required: bool) -> Any:
    """Rank 0's result; None (or, when ``required``, an error) where it left none."""
    import pickle

    path = Path(outbox, RESULT_FILE)
    if not path.is_file():
        if required:
            raise UserError("the workers ended without a result (a rank was killed)")
        return None
    return pickle.loads(path.read_bytes())


def run_workers(fn: Callable[[Any], Any], arg: Any, nproc: int, device: str,
                threads: int | None = None) -> Any:
    """Run ``fn(arg)`` on ``nproc`` ranks of this machine (``paddle.distributed.spawn``); rank 0's
    result. A failing rank ends them all; its message is raised here as one :class:`UserError`."""
    from .progress import enabled

    paddle = import_paddle()
    for name, value in QUIET_RANKS.items():  # the spawned ranks inherit this process's environment
        os.environ.setdefault(name, value)
    with tempfile.TemporaryDirectory(prefix="ernie-compress-ranks-") as outbox:
        logging.disable(logging.INFO)  # the launcher's "find free ports" line
        try:
            paddle.distributed.spawn(_worker, args=(fn, arg, outbox, enabled(), threads), nprocs=nproc,
                                     backend="gloo" if device == "cpu" else "auto")
        except Exception:  # a rank failed: spawn stops the others and raises its traceback
            _raise_rank_error(outbox)
            raise
        finally:
            logging.disable(logging.NOTSET)
        return _read_result(outbox, required=True)
