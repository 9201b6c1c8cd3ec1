"""Import Paddle once, configured for fast CPU work.

``MKL_DEBUG_CPU_TYPE=5`` must be set before Paddle loads MKL: it makes MKL take its AVX2 code
path on AMD CPUs (~2.5x faster matmul, measured in DESIGN.md). Dygraph on CPU uses one thread
unless told otherwise, so the thread count is set here too. Everything that needs Paddle calls
:func:`import_paddle` instead of ``import paddle`` at module level, which keeps ``--help`` and the
ONNX Runtime path free of Paddle's ~2 s import.
"""

from __future__ import annotations

import os
import warnings

TRAINING_DEVICES = ("cpu", "gpu", "npu")
_configured_threads: int | None = None
_default_threads: int | None = None
_sigterm_as_interrupt = False


def _raise_interrupt(signum, frame):
    raise KeyboardInterrupt


def sigterm_as_interrupt() -> None:
    """Make SIGTERM unwind like Ctrl-C (so temporary outputs are cleaned up).

    Importing Paddle installs its own C++ handler that aborts the process on SIGTERM, so the
    Python handler is installed again after every Paddle import (:func:`import_paddle`).
    """
    import signal
    import threading

    global _sigterm_as_interrupt
    _sigterm_as_interrupt = True
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, _raise_interrupt)


def set_default_threads(threads: int | None) -> None:
    """Use ``threads`` CPU threads from now on (``--threads``); None means every core."""
    global _default_threads
    _default_threads = threads


def cpu_threads(requested: int | None = None) -> int:
    """The thread count to use: ``requested``, else ``--threads``, else every usable core."""
    if requested is not None and requested > 0:
        return requested
    if _default_threads:
        return _default_threads
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - non-Linux
        return os.cpu_count() or 1


def import_paddle(threads: int | None = None):
    """Return the ``paddle`` module, imported with the CPU settings above applied."""
    global _configured_threads
    os.environ.setdefault("MKL_DEBUG_CPU_TYPE", "5")
    # MKL's conditional numerical reproducibility: results that do not depend on memory alignment, so that
    # the same computation in another process (a rank of --nproc) gives the same bits (GPTQ's rounding
    # otherwise amplifies last-bit differences of the calibration forward); no speed cost measured
    os.environ.setdefault("MKL_CBWR", "AUTO,STRICT")
    os.environ.setdefault("GLOG_minloglevel", "2")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "No ccache found" on every import
        import paddle
    if _sigterm_as_interrupt:
        sigterm_as_interrupt()
    n = cpu_threads(threads)
    if _configured_threads != n:
        paddle.core.set_num_threads(n)
        limit_numpy_threads(n)
        _configured_threads = n
    return paddle


def limit_numpy_threads(n: int) -> None:
    """NumPy's BLAS (OpenBLAS) on ``n`` threads, as Paddle: its products' last bits depend on its thread
    count (XᵀX of GPTQ's Hessians does), so processes given the same ``--threads`` compute the same bits
    (a rank of ``--nproc`` may otherwise inherit another count than a single process has)."""
    from threadpoolctl import threadpool_limits

    threadpool_limits(limits=n, user_api="blas")


def seed_everything(seed: int) -> None:
    """Seed Paddle, NumPy and Python's ``random`` so a run is reproducible."""
    import random

    import numpy as np

    paddle = import_paddle()
    random.seed(seed)
    np.random.seed(seed)
    paddle.seed(seed)


def training_device(requested: str | None) -> str:
    """The device training runs on (``--device``; default gpu when this Paddle has CUDA and sees a
    GPU, else cpu), refused with what to install when it is missing; Paddle is set to use it."""
    from .errors import UserError

    paddle = import_paddle()
    gpus = paddle.device.cuda.device_count() if paddle.is_compiled_with_cuda() else 0
    device = requested or ("gpu" if gpus else "cpu")
    if device == "gpu" and not gpus:
        why = "this Paddle build has no CUDA (pip install paddlepaddle-gpu)" if not paddle.is_compiled_with_cuda() \
            else "no GPU is visible (check nvidia-smi and CUDA_VISIBLE_DEVICES)"
        raise UserError(f"--device gpu: {why}")
    if device == "npu" and "npu" not in (paddle.device.get_all_custom_device_type() or []):
        raise UserError("--device npu: no 'npu' custom device is registered (install Paddle's NPU plugin, "
                        "paddle-custom-npu)")
    paddle.set_device(device)
    return device
