"""The ``train`` stage: train a model from a preset, or fine-tune a checkpoint, on a task.

From a preset with no vocabulary, the vocabulary is built from the training texts (see
``data/tokenizer.py``). From a checkpoint, its vocabulary and encoder are kept; the classifier is
re-initialised when the task's labels differ from the checkpoint's (fine-tuning a pre-trained
encoder on a new task). The best epoch on dev is saved; the held-out split is evaluated at the end.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..checkpoint import load_checkpoint
from ..data.encoding import encode_splits
from ..data.task_options import TaskOptions
from ..data.tasks import TaskData, load_task, resolve_task
from ..data.tokenizer import ErnieTokenizer, build_vocab
from ..errors import UserError
from ..models import build_model, count_parameters, load_state_
from ..models.config import ErnieConfig
from ..models.families import config_from_dict, family_of, family_of_keys
from ..models.layouts import check_layout
from ..models.presets import resolve_preset
from ..options import check_options, fail, option
from ..paddle_env import seed_everything
from ..progress import note
from ..training_loop import LoopConfig, TrainHooks, evaluate_split
from ..results import TrainResult
from .common import CheckpointOutput, TrainingOptions
from .registry import register
from .skeleton import finish, refuse_existing_output, samples_per_second, train_resumably

@dataclass(frozen=True, kw_only=True)
class TrainConfig(CheckpointOutput, TaskOptions, TrainingOptions):
    """``ernie-compress train``: a fresh model from ``preset``, or fine-tuning ``init_from``."""

    preset: str | None = option(None, help="Train a fresh model of this size: xbase (alias xxl), base, medium, "
                                            "mini, micro, nano, demo-teacher, demo-base, demo-mini, tiny.")
    init_from: Path | None = option(None, flag="--from", source="from",
                                    help="Fine-tune this checkpoint instead of a fresh model.")
    epochs: int = option(3, at_least=0, help="Passes over the training data.")
    lr: float = option(5e-4, above=0, help="Peak learning rate (AdamW, linear warm-up/decay).")
    warmup: float = option(0.1, at_least=0, below=1, help="Fraction of steps spent warming up.")
    weight_decay: float = option(0.01, at_least=0, help="AdamW weight decay.")
    max_seq_len: int = option(128, at_least=8, at_most=4096, help="Truncate inputs to this many tokens.")
    eval_every: int | None = option(None, at_least=1, help="Also evaluate on dev every N steps (default: each epoch).")
    min_vocab_frequency: int = 2  # characters rarer than this map to [UNK] in a built vocabulary

    def __post_init__(self) -> None:
        check_options(self)
        self.check_accelerator()
        if (self.preset is None) == (self.init_from is None):
            fail("pass exactly one of {preset} (a fresh model) and {init_from} (a checkpoint)", "preset", "init_from")

    @property
    def train(self) -> LoopConfig:
        return self.loop_config(self.epochs, self.lr, warmup_ratio=self.warmup, weight_decay=self.weight_decay,
                                eval_every=self.eval_every)


def task_metadata(task: TaskData, max_seq_length: int) -> dict[str, Any]:
    """What a checkpoint records about its task (under config.json's ``ernie_compress`` key)."""
    return {"task": task.spec.to_dict(), "task_kind": task.kind, "max_seq_length": max_seq_length}


def _fresh_model_config(cfg: TrainConfig, task: TaskData, vocab_size: int) -> ErnieConfig:
    keys = resolve_preset(cfg.preset)
    keys.update(vocab_size=vocab_size, architectures=[family_of_keys(keys).architecture_for(task.kind)],
                id2label=dict(enumerate(task.labels)))
    if cfg.max_seq_len > keys["max_position_embeddings"]:
        raise UserError(f"--max-seq-len {cfg.max_seq_len} exceeds the preset's "
                        f"{keys['max_position_embeddings']} positions")
    return config_from_dict(keys)


@register("train", TrainConfig)
def train(cfg: TrainConfig) -> TrainResult:
    """Run the train stage; returns its result (metrics, parameters, output path)."""
    refuse_existing_output(cfg)
    parent = load_checkpoint(cfg.init_from) if cfg.init_from else None
    task = load_task(cfg.task_spec or resolve_task(None, None, parent.task if parent else None))
    for line in task.notes:
        note(f"[dim]{task.spec.name}: {line}[/dim]")
    seed_everything(cfg.train.seed)
    if parent is None:
        texts = [t for e in task.split("train") for t in (e.text_a, e.text_b) if t]
        tokenizer = ErnieTokenizer(build_vocab(texts, cfg.min_vocab_frequency))
        config = _fresh_model_config(cfg, task, tokenizer.vocab_size)
        model = build_model(config)
    else:
        tokenizer = parent.tokenizer()  # checked against the model's vocab_size
        architecture = family_of(parent.config).architecture_for(task.kind)
        same_head = parent.config.labels == task.labels and parent.config.architecture == architecture
        config = parent.config.replace(
            architectures=[architecture],
            id2label=parent.config.id2label if same_head else dict(enumerate(task.labels)))
        model = build_model(config)
        load_state_(model, parent.state, str(parent.path), allow_new_head=not same_head)
        if not same_head:
            note("[yellow]the task's head or labels differ from the checkpoint's: new task head[/yellow]")
    config.extra["ernie_compress"] = task_metadata(task, cfg.max_seq_len)
    check_layout(config, cfg.layout)  # before training: a layout this model cannot take is refused now

    splits = encode_splits(task, tokenizer, config.labels, cfg.max_seq_len)
    hooks = TrainHooks(on_eval=lambda step, m: note(
        f"step {step}: dev " + ", ".join(f"{k} {v:.4f}" for k, v in m.items() if isinstance(v, float))))
    result = train_resumably(model, splits, task.kind, cfg, "train", hooks=hooks)
    held_out = evaluate_split(model, splits[task.held_out], task.kind)
    metrics = {"dev": result.best_metrics, task.held_out: held_out} if task.held_out != "dev" \
        else {"dev": held_out}
    state = {k: v for k, v in result.best_state.items()}
    out = finish(cfg, config, state, tokenizer, {
        "name": "train", "metrics": metrics, "seconds": round(result.seconds, 1), "steps": result.steps,
        "best_step": result.best_step, "history": result.history}, parent)
    params = count_parameters({k: v.shape for k, v in state.items()})
    return TrainResult(out=str(out), task=task.spec.name, held_out_split=task.held_out, metrics=metrics,
                       parameters=params, train_seconds=round(result.seconds, 2),
                       samples_per_s=samples_per_second(result, cfg.batch_size), steps=result.steps,
                       steps_run=result.steps_run)
