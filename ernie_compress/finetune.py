"""The ``train`` stage: train a model from a preset, or fine-tune a checkpoint, on a task.

From a preset with no vocabulary, the vocabulary is built from the training texts (see
``data/tokenizer.py``). From a checkpoint, its vocabulary and encoder are kept; the classifier is
re-initialised when the task's labels differ from the checkpoint's (fine-tuning a pre-trained
encoder on a new task). The best epoch on dev is saved; the held-out split is evaluated at the end.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .checkpoint import Checkpoint, config_record, load_checkpoint, save_checkpoint
from .models.layouts import check_layout, check_layout_name
from .data.batching import encode_splits
from .data.tasks import TaskData, TaskSpec, load_task
from .data.tokenizer import ErnieTokenizer, build_vocab
from .errors import UserError
from .models import build_model, count_parameters, load_state_
from .models.config import ErnieConfig, config_from_dict
from .models.presets import resolve_preset
from .paddle_env import seed_everything
from .progress import note
from .train import TrainConfig, TrainHooks, clear_train_state, evaluate_split, resumable, train_model

ARCHITECTURE_FOR_KIND = {"classification": "ErnieForSequenceClassification",
                         "pair_classification": "ErnieForSequenceClassification",
                         "token_classification": "ErnieForTokenClassification",
                         "question_answering": "ErnieForQuestionAnswering"}
DECODER_ARCHITECTURE_FOR_KIND = {"classification": "Ernie4_5ForSequenceClassification",
                                 "pair_classification": "Ernie4_5ForSequenceClassification",
                                 "causal_lm": "Ernie4_5ForCausalLM"}


def architecture_for(model_type: str, kind: str) -> str:
    """The model class that serves a task kind for a model family."""
    if model_type == "ernie4_5":
        if kind not in DECODER_ARCHITECTURE_FOR_KIND:
            raise UserError(f"ERNIE 4.5 models support classification and causal LM (lm, demo:lm) here "
                            f"so far, not {kind}")
        return DECODER_ARCHITECTURE_FOR_KIND[kind]
    if kind not in ARCHITECTURE_FOR_KIND:
        raise UserError(f"ERNIE 3.0 encoders do not do {kind}; use an ERNIE 4.5 preset (ernie45-*)")
    return ARCHITECTURE_FOR_KIND[kind]


@dataclass(frozen=True)
class FinetuneConfig:
    task: TaskSpec | None  # None: the task the --from checkpoint was trained on
    out: Path
    preset: str | None = None  # build a fresh model of this size ...
    init_from: Path | None = None  # ... or start from this checkpoint
    max_seq_length: int = 128  # longer inputs are truncated
    min_vocab_frequency: int = 2  # characters rarer than this map to [UNK] in a built vocabulary
    train: TrainConfig = field(default_factory=TrainConfig)
    overwrite: bool = False
    resume: bool = False  # continue from the state an interrupted run saved beside --out
    layout: str = "ours"  # checkpoint layout to write (models/layouts.py)

    def __post_init__(self) -> None:
        check_layout_name(self.layout)
        if (self.preset is None) == (self.init_from is None):
            raise UserError("pass exactly one of --preset (a fresh model) and --from (a checkpoint)")
        if not 8 <= self.max_seq_length <= 4096:
            raise UserError(f"--max-seq-len must be in [8, 4096], got {self.max_seq_length}")


def resolve_task(name: str | None, data: str | None, checkpoint: Checkpoint | None) -> TaskSpec:
    """The task named on the command line, else the one the checkpoint was trained on."""
    if name:
        return TaskSpec(name=name, data=str(Path(data).expanduser().resolve()) if data else None)
    if data:
        raise UserError("--data needs --task to say the file format")
    if checkpoint is not None and checkpoint.task:
        return TaskSpec.from_dict(checkpoint.task)
    raise UserError("pass --task (the checkpoint does not record one)")


def task_metadata(task: TaskData, max_seq_length: int) -> dict[str, Any]:
    """What a checkpoint records about its task (under config.json's ``ernie_compress`` key)."""
    return {"task": task.spec.to_dict(), "task_kind": task.kind, "max_seq_length": max_seq_length}


def _fresh_model_config(cfg: FinetuneConfig, task: TaskData, vocab_size: int) -> ErnieConfig:
    keys = resolve_preset(cfg.preset)
    keys.update(vocab_size=vocab_size, architectures=[architecture_for(keys.get("model_type", "ernie"), task.kind)],
                id2label=dict(enumerate(task.labels)))
    if cfg.max_seq_length > keys["max_position_embeddings"]:
        raise UserError(f"--max-seq-len {cfg.max_seq_length} exceeds the preset's "
                        f"{keys['max_position_embeddings']} positions")
    return config_from_dict(keys)


def finetune(cfg: FinetuneConfig) -> dict[str, Any]:
    """Run the train stage; returns its result (metrics, parameters, output path)."""
    if Path(cfg.out).expanduser().exists() and not cfg.overwrite:
        raise UserError(f"output {Path(cfg.out).expanduser().resolve()} already exists; choose another "
                        f"--out or pass --overwrite")
    parent = load_checkpoint(cfg.init_from) if cfg.init_from else None
    task = load_task(cfg.task or resolve_task(None, None, parent))
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
        architecture = architecture_for(parent.config.model_type, task.kind)
        same_head = parent.config.labels == task.labels and parent.config.architecture == architecture
        config = parent.config.replace(
            architectures=[architecture],
            id2label=parent.config.id2label if same_head else dict(enumerate(task.labels)))
        model = build_model(config)
        load_state_(model, parent.state, str(parent.path), allow_new_head=not same_head)
        if not same_head:
            note("[yellow]the task's head or labels differ from the checkpoint's: new task head[/yellow]")
    config.extra["ernie_compress"] = task_metadata(task, cfg.max_seq_length)
    check_layout(config, cfg.layout)  # before training: a layout this model cannot take is refused now

    splits = encode_splits(task, tokenizer, config.labels, cfg.max_seq_length)
    hooks = TrainHooks(on_eval=lambda step, m: note(
        f"step {step}: dev " + ", ".join(f"{k} {v:.4f}" for k, v in m.items() if isinstance(v, float))))
    with resumable(cfg.out, cfg.resume) as state_dir:
        result = train_model(model, splits["train"], splits.get("dev"), cfg.train, kind=task.kind,
                             hooks=hooks, description="train", state_dir=state_dir, resume=cfg.resume)
    model.set_state_dict(result.best_state)
    held_out = evaluate_split(model, splits[task.held_out], task.kind)
    metrics = {"dev": result.best_metrics, task.held_out: held_out} if task.held_out != "dev" \
        else {"dev": held_out}
    state = {k: v for k, v in result.best_state.items()}
    stage = {"name": "train", "config": config_record(cfg), "metrics": metrics,
             "seconds": round(result.seconds, 1), "steps": result.steps,
             "best_step": result.best_step, "history": result.history}
    out = save_checkpoint(cfg.out, config, state, tokenizer, stage, parent=parent,
                          overwrite=cfg.overwrite, layout=cfg.layout)
    clear_train_state(cfg.out)
    params = count_parameters({k: v.shape for k, v in state.items()})
    return {"stage": "train", "out": str(out), "task": task.spec.name, "held_out_split": task.held_out,
            "metrics": metrics, "parameters": params, "train_seconds": round(result.seconds, 1),
            "steps": result.steps, "steps_run": result.steps_run}
