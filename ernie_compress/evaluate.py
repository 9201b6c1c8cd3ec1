"""Evaluate a checkpoint in Paddle dygraph on a task's held-out split.

This is the reference every other number is compared with: exported models, quantized models and
compressed models report their metric difference against the parent run here.
"""

from __future__ import annotations

import time
from pathlib import Path

from .checkpoint import Checkpoint, load_checkpoint
from .data.encoding import encode_split
from .data.tasks import resolve_task, TaskData, TaskSpec, load_task
from .errors import UserError
from .models import model_from_state
from .training_loop import evaluate_split
from .results import CheckpointEvaluation

SPLITS = ("train", "dev", "test")


def evaluate_loaded(ckpt: Checkpoint, model, tokenizer, task: TaskData | None = None,
                    split: str | None = None, batch_size: int = 64) -> dict[str, float]:
    """Metrics of an already-built ``model`` on ``split`` (default: held-out) of its task."""
    task = task or load_task(TaskSpec.from_dict(ckpt.task))
    task.check_labels(ckpt.config.labels)
    encoded = encode_split(task.kind, task.split(split or task.held_out), tokenizer, ckpt.config.labels,
                           ckpt.max_seq_length)
    return evaluate_split(model, encoded, task.kind, batch_size)


def evaluate_checkpoint(path: str | Path, task_name: str | None = None, data: str | None = None,
                        split: str | None = None, batch_size: int = 64) -> CheckpointEvaluation:
    if split is not None and split not in SPLITS:
        raise UserError(f"--split must be one of {', '.join(SPLITS)}, got '{split}'")
    if batch_size < 1:
        raise UserError(f"--batch-size must be >= 1, got {batch_size}")
    ckpt = load_checkpoint(path)
    task = load_task(resolve_task(task_name, data, ckpt.task))
    task.check_labels(ckpt.config.labels)
    split = split or task.held_out
    model = model_from_state(ckpt.config, ckpt.state, str(ckpt.path))
    start = time.perf_counter()
    metrics = evaluate_loaded(ckpt, model, ckpt.tokenizer(), task, split, batch_size)
    return CheckpointEvaluation(path=str(ckpt.path), task=task.spec.name, split=split, metrics=metrics,
                                seconds=round(time.perf_counter() - start, 2))
