"""``evaluate EXPORT_DIR``: the task metric through a runtime, its difference against the source
checkpoint (measured in Paddle dygraph at export time), latency percentiles and throughput, and
optionally a per-operator time breakdown.

Nothing here imports Paddle unless the Paddle backend is chosen.
"""

from __future__ import annotations

import json
import shutil
import tempfile
import time
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..data.encoding import encode_split
from ..data.sp_tokenizer import load_tokenizer
from ..data.tasks import TaskSpec, load_task
from ..errors import UserError
from ..metrics import PRIMARY_METRIC, metric_delta, scored_split
from ..paddle_env import import_paddle
from ..results import ExportEvaluation
from .backends import RuntimeConfig, open_session
from .decoding import OnnxDecoder
from .generation_metrics import GenerationConfig, measure_generation
from .latency import LatencyConfig, measure_latency
from .manifest import load_manifest


@dataclass(frozen=True)
class EvaluateExportConfig:
    export_dir: Path
    runtime: RuntimeConfig = field(default_factory=RuntimeConfig)
    latency: LatencyConfig = field(default_factory=LatencyConfig)
    task: str | None = None  # default: the task recorded in the manifest
    data: str | None = None
    split: str | None = None  # default: the task's held-out split
    eval_batch_size: int = 32
    top_ops: int = 10  # with runtime.profile: how many operators to list
    keep_example_stats: bool = False  # add per-example metric statistics (numpy) for bootstrap intervals
    generation: GenerationConfig | None = None  # exports with a decoder: time generation too (evaluate asks)


def _rank_ops(totals: dict[str, float], calls: dict[str, int], top_n: int) -> list[dict[str, Any]]:
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
    return _rank_ops(totals, calls, top_n)


def paddle_op_profile(run, ids, types, top_n: int) -> list[dict[str, Any]]:
    """Per-operator CPU time of a Paddle Inference run, via ``paddle.profiler``."""
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
    return _rank_ops(totals, calls, top_n)


def latency_inputs(examples, tokenizer, seq_len: int):
    """What latency is timed on: up to 64 of the split's texts, padded/truncated to ``seq_len``
    (the timed batches cycle through them)."""
    examples = examples[:64]
    pairs = None if examples[0].text_b is None else [e.text_b for e in examples]
    return tokenizer.encode_batch([e.text_a for e in examples], pairs, max_length=seq_len, pad_to=seq_len)


def evaluate_export(cfg: EvaluateExportConfig) -> ExportEvaluation:
    manifest = load_manifest(cfg.export_dir)
    export_dir = Path(cfg.export_dir).expanduser().resolve()
    labels = manifest.get("labels") or []
    tokenizer = load_tokenizer(export_dir)
    if cfg.task:
        spec = TaskSpec(cfg.task, str(Path(cfg.data).expanduser().resolve()) if cfg.data else None)
    elif manifest.get("task"):
        spec = TaskSpec.from_dict(manifest["task"])
    else:
        raise UserError("pass --task (the export does not record one)")
    task = load_task(spec)
    task.check_labels(labels)
    split_name = cfg.split or task.held_out
    split = encode_split(task.kind, task.split(split_name), tokenizer, labels, manifest.get("max_seq_length", 128))

    profile_dir = Path(tempfile.mkdtemp(prefix="ernie-compress-profile-")) if cfg.runtime.profile else None
    try:
        session = open_session(export_dir, manifest, cfg.runtime, profile_dir)
        start = time.perf_counter()
        metrics, example_stats = scored_split(session.run, split, cfg.eval_batch_size)
        eval_seconds = time.perf_counter() - start

        primary = PRIMARY_METRIC[task.kind]
        reference = (manifest.get("reference") or {}).get("metrics")
        same_data = manifest.get("task") == spec.to_dict() and split_name == task.held_out
        delta = metric_delta(primary, metrics[primary], reference[primary]) if reference and same_data else None

        enc = latency_inputs(task.split(split_name), tokenizer, cfg.latency.seq_len)
        latency = [measure_latency(session.run, enc.input_ids, enc.token_type_ids, b, cfg.latency)
                   for b in cfg.latency.batch_sizes]

        generation = None
        decoder_entry = manifest.get("files", {}).get("decoder")
        if decoder_entry and cfg.generation is not None:  # the KV-cache decoder always runs on ONNX Runtime
            runtime = RuntimeConfig(device=cfg.runtime.device, threads=cfg.runtime.threads, tensorrt=cfg.runtime.tensorrt)
            decoder = OnnxDecoder.open(export_dir / decoder_entry["model"], runtime, tokenizer.pad_id)
            generation = measure_generation(decoder, tokenizer, [e.text_a for e in task.split(split_name)],
                                            decoder_entry["context"], cfg.generation)

        profile = None
        if cfg.runtime.profile:
            if session.backend == "onnxruntime":
                profile = onnxruntime_op_profile(session.end_profiling(), cfg.top_ops)
            else:
                b = max(cfg.latency.batch_sizes)
                profile = paddle_op_profile(session.run, np.tile(enc.input_ids, (-(-b // 64), 1))[:b],
                                            np.tile(enc.token_type_ids, (-(-b // 64), 1))[:b], cfg.top_ops)
    finally:
        if profile_dir is not None:  # the raw trace was summarised into the result
            shutil.rmtree(profile_dir, ignore_errors=True)
    return ExportEvaluation(
        export=str(export_dir), task=spec.name, split=split_name, backend=session.backend, device=session.device,
        providers=getattr(session, "providers", None), precision=manifest.get("precision"), metrics=metrics,
        primary_metric=primary, reference_metrics=reference, delta_points=delta, eval_seconds=round(eval_seconds, 2),
        latency=latency, generation=generation, profile=profile, threads=cfg.runtime.threads,
        example_stats=example_stats if cfg.keep_example_stats else None)
