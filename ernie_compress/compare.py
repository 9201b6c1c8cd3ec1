"""Side-by-side CPU latency of checkpoints through ONNX Runtime (used by stage reports).

Each checkpoint is exported to a temporary ONNX model (verified as usual) and timed at the same
batch sizes and sequence length in the same process, so the ratios compare like with like.
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

from .runtime.backends import RuntimeConfig
from .runtime.evaluate_export import EvaluateExportConfig, evaluate_export
from .runtime.latency import LatencyConfig
from .stages.export import ExportConfig, export_checkpoint


def onnx_cpu_latency(checkpoints: dict[str, Path], latency: LatencyConfig | None = None,
                     threads: int | None = None) -> dict[str, Any]:
    """``{name: [{batch_size, p50_ms, ...}, ...]}`` for each checkpoint."""
    latency = latency or LatencyConfig(batch_sizes=(1, 32), seq_len=128, iterations=20, warmup=3)
    results = {}
    with tempfile.TemporaryDirectory(prefix="ernie-compress-latency-") as tmp:
        for name, path in checkpoints.items():
            out = Path(tmp) / name
            export_checkpoint(ExportConfig(checkpoint=path, out=out, format="onnx"))
            ev = evaluate_export(EvaluateExportConfig(out, runtime=RuntimeConfig("cpu", "onnxruntime", threads),
                                                      latency=latency))
            results[name] = {"latency": ev["latency"], "metrics": ev["metrics"]}
    return results


def latency_comparison(before: tuple[str, Path], after: tuple[str, Path]) -> dict[str, Any]:
    """Latency of two checkpoints and the speed-up of the second, by batch size."""
    timing = onnx_cpu_latency(dict([before, after]))
    a, b = timing[before[0]]["latency"], timing[after[0]]["latency"]
    return {"latency": {before[0]: a, after[0]: b},
            "speedup": {f"b{p['batch_size']}": p["p50_ms"] / q["p50_ms"] for p, q in zip(a, b)}}
