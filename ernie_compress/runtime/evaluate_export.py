"""``evaluate EXPORT_DIR``: the task metric through a runtime, its difference against the source
checkpoint (measured in Paddle dygraph at export time), latency percentiles and throughput, and
optionally a per-operator time breakdown.

Nothing here imports Paddle unless the Paddle backend is chosen.
"""

from __future__ import annotations

import shutil
import tempfile
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from ..data.encoding import encode_split
from ..data.sp_tokenizer import load_tokenizer
from ..data.tasks import TaskSpec, load_task
from ..errors import UserError
from ..metrics import PRIMARY_METRIC, metric_delta, scored_split
from ..results import ExportEvaluation
from .backends import RuntimeConfig
from .generation_metrics import GenerationConfig, measure_generation
from .latency import LatencyConfig, measure_latency
from .manifest import load_manifest
from .registry import open_session
from .session import DECODER
from .teacher_forcing import teacher_forced_logits


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
    score_with: str = "auto"  # SCORE_WITH: the metric through model.onnx or the KV-cache decoder


SCORE_WITH = ("auto", "model", "decoder")
TEACHER_FORCED = "onnx/decoder.onnx, teacher-forced through its KV cache"


def _through_decoder(score_with: str, manifest: dict[str, Any], kind: str) -> bool:
    """Whether the metric is computed through the export's KV-cache decoder (``teacher_forcing.py``):
    asked for, or (auto) where model.onnx would not show what generation runs: an int8 cache, int8
    activations (W8A8)."""
    decoder = manifest.get("files", {}).get("decoder") or {}
    differs = decoder.get("kv_cache", {}).get("dtype") == "int8" or decoder.get("activations") == "int8"
    if score_with == "model" or (score_with == "auto" and not differs):
        return False
    if not decoder or kind != "causal_lm":
        raise UserError("--score-with decoder scores a causal LM through its onnx/decoder.onnx, which this export "
                        "or task does not have")
    return True


def latency_inputs(examples, tokenizer, seq_len: int):
    """What latency is timed on: up to 64 of the split's texts, padded/truncated to ``seq_len``
    (the timed batches cycle through them)."""
    examples = examples[:64]
    pairs = None if examples[0].text_b is None else [e.text_b for e in examples]
    return tokenizer.encode_batch([e.text_a for e in examples], pairs, max_length=seq_len, pad_to=seq_len)


def _tiled(rows: np.ndarray, batch: int) -> np.ndarray:
    """``batch`` rows [batch, seq], cycling through ``rows``."""
    return np.tile(rows, (-(-batch // len(rows)), 1))[:batch]


def _open_decoder(export_dir: Path, manifest: dict[str, Any], runtime: RuntimeConfig, pad_id: int):
    """The export's KV-cache decoder on the evaluation's device: through ``--backend`` where that
    runtime runs decoders, else where the registry finds one; unprofiled."""
    decoder_runtime = replace(runtime, profile=False, mkldnn=True).for_kind(DECODER)
    return open_session(export_dir, manifest, decoder_runtime, kind=DECODER, pad_id=pad_id)


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

    if manifest.get("decoder_only") or manifest.get("streamed"):
        if cfg.score_with == "model":
            raise UserError(f"{export_dir} holds the KV-cache decoder alone (export --format decoder or --stream): no "
                            f"model.onnx to score with")
        return _evaluate_decoder_only(cfg, manifest, export_dir, tokenizer, spec, task, split_name, split)
    through_decoder = _through_decoder(cfg.score_with, manifest, task.kind)
    profile_dir = Path(tempfile.mkdtemp(prefix="ernie-compress-profile-")) if cfg.runtime.profile else None
    try:
        session = open_session(export_dir, manifest, cfg.runtime, profile_dir)
        score = session.run
        if through_decoder:
            score = teacher_forced_logits(_open_decoder(export_dir, manifest, cfg.runtime, tokenizer.pad_id),
                                          tokenizer.pad_id)
        start = time.perf_counter()
        metrics, example_stats = scored_split(score, split, cfg.eval_batch_size)
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
        if decoder_entry and cfg.generation is not None:
            generation = measure_generation(_open_decoder(export_dir, manifest, cfg.runtime, tokenizer.pad_id),
                                            tokenizer, [e.text_a for e in task.split(split_name)],
                                            decoder_entry["context"], cfg.generation)

        profile = None
        if cfg.runtime.profile:
            b = max(cfg.latency.batch_sizes)
            profile = session.op_profile(_tiled(enc.input_ids, b), _tiled(enc.token_type_ids, b), cfg.top_ops)
    finally:
        if profile_dir is not None:  # the raw trace was summarised into the result
            shutil.rmtree(profile_dir, ignore_errors=True)
    return ExportEvaluation(
        export=str(export_dir), task=spec.name, split=split_name, backend=session.backend, device=session.device,
        providers=getattr(session, "providers", None), precision=manifest.get("precision"), metrics=metrics,
        primary_metric=primary, reference_metrics=reference, delta_points=delta, eval_seconds=round(eval_seconds, 2),
        latency=latency, generation=generation, profile=profile, threads=cfg.runtime.threads,
        example_stats=example_stats if cfg.keep_example_stats else None,
        scored_with=TEACHER_FORCED if through_decoder else None)


def _evaluate_decoder_only(cfg: EvaluateExportConfig, manifest: dict[str, Any], export_dir: Path, tokenizer, spec,
                           task, split_name: str, split) -> ExportEvaluation:
    """An export of the KV-cache decoder alone (``--format decoder``, ``--stream``): its perplexity by teacher
    forcing through the cache (``teacher_forcing.py``), and generation timed as for any decoder; no
    full-sequence latency."""
    if task.kind != "causal_lm":
        raise UserError(f"{export_dir} holds the KV-cache decoder alone: it scores causal-LM tasks, not {task.kind}")
    if cfg.runtime.profile:
        raise UserError("--profile times the full-sequence model, which an export of the decoder alone does not have")
    decoder = _open_decoder(export_dir, manifest, cfg.runtime, tokenizer.pad_id)
    start = time.perf_counter()
    metrics, example_stats = scored_split(teacher_forced_logits(decoder.fork(), tokenizer.pad_id), split,
                                          cfg.eval_batch_size)
    eval_seconds = time.perf_counter() - start
    generation = None
    decoder_entry = manifest.get("files", {}).get("decoder")
    if decoder_entry and cfg.generation is not None:
        generation = measure_generation(decoder, tokenizer, [e.text_a for e in task.split(split_name)],
                                        decoder_entry["context"], cfg.generation)
    return ExportEvaluation(
        export=str(export_dir), task=spec.name, split=split_name, backend="onnxruntime", scored_with=TEACHER_FORCED,
        device=cfg.runtime.device, providers=None, precision=manifest.get("precision"), metrics=metrics,
        primary_metric=PRIMARY_METRIC[task.kind], reference_metrics=None, delta_points=None,
        eval_seconds=round(eval_seconds, 2), latency=[], generation=generation, profile=None,
        threads=cfg.runtime.threads, example_stats=example_stats if cfg.keep_example_stats else None)
