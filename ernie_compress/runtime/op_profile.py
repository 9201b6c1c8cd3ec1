"""Per-operator time tables from each runtime's own profiler (``evaluate --profile``).

ONNX Runtime writes a Chrome trace when ``SessionOptions.enable_profiling`` is set (one
``*_kernel_time`` event per node run); Paddle Inference is profiled with ``paddle.profiler``. Both
are summed by operator type and ranked by total time.
"""

from __future__ import annotations

import json
import tempfile
from collections import defaultdict
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from ..paddle_env import import_paddle


def rank_ops(totals: dict[str, float], calls: dict[str, int], top_n: int) -> list[dict[str, Any]]:
    """Operators by total time, with their share of all operator time, largest first."""
    grand = sum(totals.values()) or 1.0
    rows = [{"op": op, "total_ms": ms, "calls": calls[op], "share": ms / grand}
            for op, ms in totals.items()]
    return sorted(rows, key=lambda r: -r["total_ms"])[:top_n]


def onnxruntime_op_profile(profile_file: str, top_n: int) -> list[dict[str, Any]]:
    """Sum ONNX Runtime's per-node kernel times by operator type, largest first."""
    events = json.loads(Path(profile_file).read_text())
    totals: dict[str, float] = defaultdict(float)
    calls: dict[str, int] = defaultdict(int)
    for event in events:
        if event.get("cat") == "Node" and event.get("name", "").endswith("_kernel_time"):
            op = event.get("args", {}).get("op_name", "?")
            totals[op] += event.get("dur", 0) / 1000.0
            calls[op] += 1
    return rank_ops(totals, calls, top_n)


def paddle_op_profile(run: Callable[[np.ndarray, np.ndarray], Any], ids: np.ndarray, types: np.ndarray,
                      top_n: int) -> list[dict[str, Any]]:
    """Per-operator CPU time of five Paddle Inference runs on ``ids``/``types``, via ``paddle.profiler``."""
    import_paddle()
    import paddle.profiler as profiler

    with tempfile.TemporaryDirectory() as tmp:
        prof = profiler.Profiler(targets=[profiler.ProfilerTarget.CPU],
                                 on_trace_ready=profiler.export_chrome_tracing(tmp))
        prof.start()
        for _ in range(5):
            run(ids, types)
            prof.step()
        prof.stop()
        traces = list(Path(tmp).glob("*.json"))
        if not traces:
            return []
        events = json.loads(traces[0].read_text()).get("traceEvents", [])
    totals: dict[str, float] = defaultdict(float)
    calls: dict[str, int] = defaultdict(int)
    for event in events:
        if event.get("cat") in ("Operator", "OperatorInner") and event.get("ph") == "X":
            name = event.get("name", "?").split("::")[-1]
            totals[name] += event.get("dur", 0) / 1000.0
            calls[name] += 1
    return rank_ops(totals, calls, top_n)
