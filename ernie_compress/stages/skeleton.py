"""The steps every checkpoint stage shares, so that no stage repeats them.

0. :func:`refuse_existing_output` — an existing ``--out`` is refused before any work.
1. :func:`start_from` — load the input checkpoint (refused if quantized when the stage needs
   FP32 weights), the task it is judged on (its own unless the options name one), the tokenized
   splits, the input model and its held-out metrics: the reference the stage's result is compared
   with.
2. :func:`train_resumably` — the training loop with a resumable state beside ``--out``
   (``--save-every``, ``--resume``), returning the loop's result with the best weights loaded.
3. :func:`finish` — write the new checkpoint atomically with its lineage entry and remove the
   resumable state.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..checkpoint import Checkpoint, config_record, load_checkpoint, save_checkpoint
from ..data.batching import EncodedSplit
from ..data.encoding import encode_splits
from ..data.tasks import TaskData, load_task_for_model
from ..distributed import world
from ..errors import UserError
from ..metrics import PRIMARY_METRIC
from ..models import model_from_state
from ..models.families import family_of
from ..quantize.scheme import quantization_info
from ..training_loop import TrainResult, clear_train_state, evaluate_split, resumable, train_model


@dataclass
class Start:
    """A stage's starting point (see :func:`start_from`)."""

    parent: Checkpoint
    task: TaskData
    tokenizer: Any
    splits: dict[str, EncodedSplit]
    model: Any  # the input checkpoint's model, in eval mode
    metrics: dict[str, float]  # its metrics on the held-out split

    @property
    def metric(self) -> str:
        return PRIMARY_METRIC[self.task.kind]

    @property
    def held_out(self) -> EncodedSplit:
        return self.splits[self.task.held_out]


def refuse_existing_output(cfg) -> None:
    """Before any work: an existing ``--out`` is refused unless ``--overwrite`` (the write at the
    end refuses it too; this saves the training time)."""
    out = Path(cfg.out).expanduser()
    if out.exists() and not cfg.overwrite:
        raise UserError(f"output {out.resolve()} already exists; choose another --out or pass --overwrite")


def refuse_quantized(ckpt: Checkpoint, what_to_do: str) -> None:
    """A stage that changes FP32 weights cannot start from a quantized checkpoint."""
    quant = quantization_info(ckpt.config)
    if quant:
        raise UserError(f"{ckpt.path} is already quantized ({quant.get('method')}); {what_to_do}")


def start_from(checkpoint: Checkpoint | Path | str, task_spec, fp32_for: str | None = None,
               splits: tuple[str, ...] = ("train", "dev", "test"), tokenizer: Path | None = None) -> Start:
    """Load ``checkpoint`` (a path, or one loaded already; its tokenizer checked before its weights are
    read, from ``tokenizer`` when given) and what a stage compares against. ``fp32_for`` says what to do
    instead when the input is quantized (which is then refused)."""
    parent = (checkpoint if isinstance(checkpoint, Checkpoint)
              else load_checkpoint(checkpoint, tokenizer=tokenizer, check_tokenizer=True))
    if fp32_for:
        refuse_quantized(parent, fp32_for)
    if family_of(parent.config).serves(parent.config, "masked_lm"):
        raise UserError(f"{parent.path} is a pre-trained (masked-LM) model; fine-tune it on a task with "
                        f"`train --from` first")
    task = load_task_for_model(task_spec, parent.task, parent.config.labels)
    tokenizer = parent.tokenizer()
    encoded = encode_splits(task, tokenizer, parent.config.labels, parent.max_seq_length, names=splits)
    model = model_from_state(parent.config, parent.state, str(parent.path))
    return Start(parent, task, tokenizer, encoded, model, evaluate_split(model, encoded[task.held_out], task.kind))


def train_resumably(model, splits: dict[str, EncodedSplit], kind: str, cfg, description: str,
                    **loop_options) -> TrainResult:
    """Train ``model`` on ``splits["train"]`` (best epoch on dev) with ``cfg.train``; the state is
    saved beside ``cfg.out`` every ``cfg.save_every`` steps and continued with ``cfg.resume``. The
    model ends with the best weights. ``loop_options`` go to the loop (``loss_fn``, ``hooks``, ...)."""
    with resumable(cfg.out, cfg.resume) as state_dir:
        result = train_model(model, splits["train"], splits.get("dev"), cfg.train, kind=kind,
                             description=description, state_dir=state_dir, resume=cfg.resume, **loop_options)
    model.set_state_dict(result.best_state)
    return result


def samples_per_second(result: TrainResult, global_batch: int) -> float | None:
    """Training throughput of the steps this process ran (evaluation and loading not counted)."""
    return round(result.steps_run * global_batch / result.step_seconds, 1) if result.step_seconds else None


def finish(cfg, config, state: dict, tokenizer, record: dict[str, Any], parent: Checkpoint | None,
           extra_files: dict[str, Any] | None = None) -> Path:
    """Write the stage's checkpoint (``record`` is its lineage entry; the config is added) in
    ``cfg.layout`` to ``cfg.out``, then drop the resumable training state."""
    if not world().main:  # data-parallel ranks hold the same weights: rank 0 writes them
        return Path(cfg.out).expanduser().resolve()
    record = {"name": record["name"], "config": config_record(cfg), **{k: v for k, v in record.items() if k != "name"}}
    out = save_checkpoint(cfg.out, config, state, tokenizer, record, parent=parent, overwrite=cfg.overwrite,
                          extra_files=extra_files, layout=cfg.layout)
    clear_train_state(cfg.out)
    return out
