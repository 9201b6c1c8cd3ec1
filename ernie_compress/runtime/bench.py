"""``bench EXPORT_DIR``: serving-like load from N client threads, with and without dynamic batching.

Requests are held-out texts of the export's task (or of ``--task``/``--data``), each tokenized to its own length (as a server
receives them). Both runs answer the same requests; their outputs are compared so a batching bug
(a lost or swapped row) shows up as a mismatch, not as a better number. An export with a decoder
(ERNIE 4.5 causal LM) is benched on generation requests instead: one request at a time against
continuous batching of decode steps (``continuous_batching.py``), tokens/s and time to first token.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..data.sp_tokenizer import load_tokenizer
from ..data.task_options import TaskOptions
from ..data.tasks import TaskSpec, load_task
from ..errors import UserError
from ..losses import predicted_classes
from ..options import check_options, option
from ..results import BenchResult, GenerationBenchResult
from .backends import RuntimeConfig, RuntimeOptions
from .continuous_batching import serve_generation
from .decoding import prompt_ids
from .dynamic_batching import BatcherConfig, serve_load
from .manifest import load_manifest
from .registry import open_session
from .session import DECODER


@dataclass(frozen=True, kw_only=True)
class BenchConfig(RuntimeOptions, TaskOptions):
    """``ernie-compress bench``: its options, declared once (``options.py``)."""

    export_dir: Path = option(argument=True, scope="cli", help="An export directory.")
    concurrency: int = option(8, at_least=1, help="Client threads sending single requests.")
    requests: int = option(400, at_least=1, help="Requests in total (held-out texts).")
    max_batch: int = option(32, at_least=1, help="Largest batch the batcher forms.")
    max_wait_ms: float = option(5.0, at_least=0, help="Longest a request waits for others to join its batch.")
    new_tokens: int = option(32, at_least=1, help=(
        "Export with a decoder: tokens generated per request at most (greedy; a request's prompt is the first half "
        "of a held-out text)."))

    def __post_init__(self) -> None:
        check_options(self)


def bench_generation(cfg: BenchConfig, export_dir: Path, manifest: dict[str, Any], tokenizer,
                     examples) -> GenerationBenchResult:
    """Generation requests, one at a time and with continuous batching (up to ``cfg.max_batch``)."""
    runtime = RuntimeConfig(device=cfg.device, backend=cfg.backend, threads=cfg.threads).for_kind(DECODER)
    decoder = open_session(export_dir, manifest, runtime, kind=DECODER, pad_id=tokenizer.pad_id, host_cache=True)
    entry = manifest["files"]["decoder"]
    whole = [prompt_ids(tokenizer, e.text_a) for e in examples]  # a request continues the first half of a text
    prompts = [ids[:min(max(2, len(ids) // 2), entry["context"] - cfg.new_tokens)] for ids in whole]
    decoder.prefill([prompts[0]])  # warm-up
    alone = serve_generation(decoder, prompts, cfg.new_tokens, cfg.concurrency, 1, tokenizer.sep_id)
    batched = serve_generation(decoder, prompts, cfg.new_tokens, cfg.concurrency, cfg.max_batch, tokenizer.sep_id)
    return GenerationBenchResult(
        export=str(export_dir), backend=decoder.backend, device=cfg.device, concurrency=cfg.concurrency,
        requests=len(prompts), new_tokens=cfg.new_tokens, max_batch=cfg.max_batch, one_at_a_time=alone["stats"],
        continuous_batching=batched["stats"],
        speedup_tokens_per_s=batched["stats"]["tokens_per_s"] / alone["stats"]["tokens_per_s"],
        same_tokens=float(np.mean([a == b for a, b in zip(alone["tokens"], batched["tokens"])])))


def bench_export(cfg: BenchConfig) -> BenchResult | GenerationBenchResult:
    export_dir = Path(cfg.export_dir).expanduser().resolve()
    manifest = load_manifest(export_dir)
    spec = cfg.task_spec or (TaskSpec.from_dict(manifest["task"]) if manifest.get("task") else None)
    if spec is None:
        raise UserError(f"{export_dir}: the export records no task to draw requests from; pass --task (and --data)")
    task = load_task(spec)
    tokenizer = load_tokenizer(export_dir)
    examples = task.split(task.held_out)
    examples = [examples[i % len(examples)] for i in range(cfg.requests)]
    if manifest.get("files", {}).get("decoder"):
        return bench_generation(cfg, export_dir, manifest, tokenizer, examples)
    requests = []
    for e in examples:
        enc = tokenizer.encode_batch([e.text_a], None if e.text_b is None else [e.text_b],
                                     max_length=manifest.get("max_seq_length", 128))
        requests.append((enc.input_ids[0], enc.token_type_ids[0]))
    session = open_session(export_dir, manifest, RuntimeConfig(device=cfg.device, backend=cfg.backend,
                                                               threads=cfg.threads))
    batcher = BatcherConfig(cfg.max_batch, cfg.max_wait_ms, tokenizer.pad_id)
    session.run(*[np.stack([r[i] for r in requests[:1]]) for i in (0, 1)])  # warm-up
    baseline = serve_load(session.run, requests, cfg.concurrency, None)
    batched = serve_load(session.run, requests, cfg.concurrency, batcher)
    kind = manifest.get("task_kind") or "classification"
    return BenchResult(
        export=str(export_dir), backend=session.backend, device=session.device, concurrency=cfg.concurrency,
        requests=cfg.requests, max_batch=cfg.max_batch, max_wait_ms=cfg.max_wait_ms,
        no_batching=baseline["stats"], dynamic_batching=batched["stats"],
        speedup_qps=batched["stats"]["qps"] / baseline["stats"]["qps"],
        outputs_max_abs_diff=float(max(np.abs(x - y).max() for x, y in zip(baseline["outputs"], batched["outputs"]))),
        predictions_agree=float(np.mean([np.array_equal(predicted_classes(kind, x[None]), predicted_classes(kind, y[None]))
                                         for x, y in zip(baseline["outputs"], batched["outputs"])])))
