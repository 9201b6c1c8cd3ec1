"""The one training loop: fine-tuning, pruning recovery, QAT and distillation all run through it.

AdamW (Loshchilov & Hutter 2019) with linear warm-up and linear decay, global-norm gradient
clipping, evaluation on dev after every epoch (or every ``eval_every`` steps) and the best
weights kept. What differs between stages is the loss: :data:`LossFn` takes the model and a batch
and returns the loss plus named parts for the progress bar (e.g. ``kd``, ``hidden``); the default
is cross-entropy on the labels. ``hooks`` see every step and every evaluation.
"""

from __future__ import annotations

import contextlib
import math
import os
import shutil
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from .data.batching import IGNORE_INDEX, Batch, EncodedSplit
from .distributed import World, all_reduce_gradients, barrier, shard_rows, world
from .distributed import init as init_distributed
from .errors import UserError
from .losses import hard_label_loss
from .metrics import PRIMARY_METRIC, is_better, score_split
from .paddle_env import import_paddle, seed_everything
from .progress import progress_bar
from .shard_progress import PROGRESS_FILE


@dataclass(frozen=True)
class LoopConfig:
    epochs: int = 3
    batch_size: int = 32
    learning_rate: float = 5e-4  # peak rate after warm-up; small models trained from scratch like it high
    weight_decay: float = 0.01
    warmup_ratio: float = 0.1  # fraction of all steps spent warming up
    grad_clip: float = 1.0  # global-norm clip; 0 disables
    seed: int = 42
    max_steps: int | None = None  # stop after this many optimizer steps (quick runs, tests)
    eval_every: int | None = None  # evaluate every N steps as well as at each epoch end
    eval_batch_size: int = 64
    save_every: int | None = None  # steps between resumable training states (with a state dir)
    grad_accum: int = 1  # micro-batches per optimizer step (each rank's share of a batch, split further)
    amp: str = "off"  # mixed precision: "fp16" (with loss scaling) or "bf16"; master weights stay FP32

    def __post_init__(self) -> None:
        if self.epochs < 0:
            raise UserError(f"--epochs must be >= 0, got {self.epochs}")
        if self.batch_size < 1:
            raise UserError(f"--batch-size must be >= 1, got {self.batch_size}")
        if not self.learning_rate > 0:
            raise UserError(f"--lr must be > 0, got {self.learning_rate}")
        if not 0 <= self.warmup_ratio < 1:
            raise UserError(f"--warmup must be in [0, 1), got {self.warmup_ratio}")
        if self.max_steps is not None and self.max_steps < 1:
            raise UserError(f"--max-steps must be >= 1, got {self.max_steps}")
        if self.save_every is not None and self.save_every < 1:
            raise UserError(f"--save-every must be >= 1, got {self.save_every}")


@dataclass
class TensorBatch:
    """A batch as Paddle tensors: ids [batch, seq], labels [batch]; ``index`` into the split."""

    input_ids: Any
    token_type_ids: Any
    labels: Any
    index: np.ndarray
    whole: Batch | None = None  # the global batch this is a share of (data parallel, --grad-accum)
    weight_share: float | None = None  # the loop's weight for this share, as a fraction of the whole's

    def token_share(self, valid, pad_id: int) -> float:
        """For a loss term that averages over ``valid`` tokens while the loop weights this share
        by ``weight_share`` (its rows, or its labelled tokens for token-level heads; see
        :func:`batch_weight`): the factor that makes the term's gradients add up to the whole
        batch's. 1.0 when this is the whole batch."""
        if self.whole is None or len(self.whole.index) == len(self.index):
            return 1.0
        share = len(self.index) / len(self.whole.index) if self.weight_share is None else self.weight_share
        tokens, all_tokens = float(valid.sum()), int((self.whole.input_ids != pad_id).sum())
        return (tokens / all_tokens) / share if all_tokens and share else 0.0


class LossFn(Protocol):
    def __call__(self, model, batch: TensorBatch) -> tuple[Any, dict[str, Any]]: ...




@dataclass
class TrainHooks:
    on_step: Callable[[int, dict[str, float]], None] | None = None
    on_eval: Callable[[int, dict[str, float]], None] | None = None


@dataclass
class TrainResult:
    best_state: dict[str, np.ndarray]
    best_metrics: dict[str, float]
    best_step: int
    steps: int
    seconds: float
    history: list[dict[str, Any]] = field(default_factory=list)
    steps_run: int = 0  # optimizer steps this process executed (fewer than ``steps`` after --resume)
    step_seconds: float = 0.0  # time in those steps alone (forward, backward, all-reduce, update)


def to_tensors(batch: Batch) -> TensorBatch:
    paddle = import_paddle()
    return TensorBatch(paddle.to_tensor(batch.input_ids), paddle.to_tensor(batch.token_type_ids),
                       paddle.to_tensor(batch.labels), batch.index)


def evaluate_split(model, split: EncodedSplit, kind: str, batch_size: int = 64) -> dict[str, float]:
    """The task metrics of ``model`` on a labeled split (Paddle dygraph)."""
    paddle = import_paddle()
    was_training = model.training
    model.eval()

    def run(ids, types):
        return model(paddle.to_tensor(ids), paddle.to_tensor(types)).numpy()

    with paddle.no_grad():
        metrics = score_split(run, split, batch_size)
    if was_training:
        model.train()
    return metrics


def _no_decay(name: str) -> bool:
    return name.endswith(".bias") or ".norm" in name or "layer_norm" in name


STATE_FILE = "train_state.pdstate"


def train_state_dir(out: Path) -> Path:
    """Where an interrupted stage keeps its resumable training state: a hidden sibling of --out."""
    out = Path(out).expanduser().resolve()
    return out.parent / f".{out.name}.train-state"


def has_train_state(out: Path) -> bool:
    """Whether an interrupted stage writing ``out`` left a state to resume from (a training state, or the
    shards of a streamed write: ``shard_progress.py``)."""
    return any((train_state_dir(out) / name).is_file() for name in (STATE_FILE, PROGRESS_FILE))


def clear_train_state(out: Path) -> None:
    """Remove the resumable state of a stage once its output is written."""
    shutil.rmtree(train_state_dir(out), ignore_errors=True)


@contextlib.contextmanager
def resumable(out: Path, resume: bool, state_file: str = STATE_FILE):
    """Yield the state directory for a stage writing ``out``; a fresh run clears an old state, an
    interrupted one keeps it (when ``state_file`` was written in it) and says how to continue. Callers
    remove it once ``out`` is written."""
    state_dir = train_state_dir(out)
    if not resume and state_dir.exists() and world().main:
        shutil.rmtree(state_dir)
    barrier()
    try:
        yield state_dir
    except KeyboardInterrupt:
        if (state_dir / state_file).exists():
            raise KeyboardInterrupt(f"{'training' if state_file == STATE_FILE else 'the work done so far'} saved "
                                    f"in {state_dir}; continue with --resume") from None
        raise


def _save_state(path: Path, state: dict[str, Any]) -> None:
    """Write the resumable state atomically (a kill mid-write leaves the previous one)."""
    paddle = import_paddle()
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    paddle.save(state, str(tmp))
    os.replace(tmp, path)


def load_train_state(state_dir: Path) -> dict[str, Any] | None:
    """The saved training state in ``state_dir`` (our own file, written by :func:`train_model`)."""
    path = Path(state_dir) / STATE_FILE
    if not path.is_file():
        return None
    try:
        return import_paddle().load(str(path))
    except Exception as exc:  # paddle.load raises assorted errors for damaged files
        raise UserError(f"{path}: cannot read the saved training state ({exc.__class__.__name__}); "
                        f"delete {state_dir} and start again") from None


TOKEN_LEVEL_KINDS = ("token_classification", "causal_lm")  # losses average over labeled tokens


def batch_weight(batch: Batch, kind: str) -> int:
    """What a batch's loss averages over: its labeled tokens for token-level kinds, else its rows."""
    if kind in TOKEN_LEVEL_KINDS:
        return int((batch.labels != IGNORE_INDEX).sum())
    return len(batch.index)


def _rows(batch: Batch, rows: slice | np.ndarray) -> Batch:
    return Batch(batch.input_ids[rows], batch.token_type_ids[rows], batch.labels[rows], batch.index[rows])


def _accumulate(model, batch: Batch, loss_fn: LossFn, kind: str, w: World, pieces: int, amp: str,
                scaler) -> dict[str, float]:
    """Backward of this rank's share of a global batch, in ``pieces`` micro-batches, each loss
    scaled by its share of the batch's weight times the world size (so that the all-reduced mean
    of the gradients is the gradient of the whole batch's loss); the loss parts for the progress
    bar, weighted the same way. One rank, one piece: the plain ``loss.backward()``."""
    paddle = import_paddle()
    mine = _rows(batch, shard_rows(len(batch.index), w))
    total = batch_weight(batch, kind)
    values: dict[str, float] = {}
    for part in range(pieces):
        piece = _rows(mine, shard_rows(len(mine.index), World(part, pieces)))
        weight = batch_weight(piece, kind) if len(piece.index) else 0
        if weight == 0:  # nothing of this batch here: a zero-weighted row keeps the gradients in step
            piece, weight = _rows(batch, slice(0, 1)), 0
        tensors = to_tensors(piece)
        tensors.whole, tensors.weight_share = batch, weight / total if total else 0.0
        with paddle.amp.auto_cast(enable=amp != "off", dtype="float16" if amp == "fp16" else "bfloat16"):
            loss, parts = loss_fn(model, tensors)
        scale = w.size * weight / total if total else 0.0
        if scale != 1.0:
            loss = loss * scale
        (scaler.scale(loss) if scaler is not None else loss).backward()
        for k, v in parts.items():
            values[k] = values.get(k, 0.0) + float(v) * scale
    return values


@dataclass
class _Optimizer:
    """What updates the weights: the trained parameters, AdamW, its learning-rate schedule and
    the fp16 loss scaler (None without ``--amp fp16``)."""

    params: list
    adamw: Any
    schedule: Any
    scaler: Any

    def step(self) -> None:
        """Apply the accumulated (and all-reduced) gradients, clear them, advance the schedule."""
        if self.scaler is not None:
            self.scaler.step(self.adamw)
            self.scaler.update()
        else:
            self.adamw.step()
        self.adamw.clear_grad()
        self.schedule.step()


def _build_optimizer(model, parameters: Sequence | None, config: LoopConfig, total: int) -> _Optimizer:
    """AdamW with linear warm-up over ``warmup_ratio`` of ``total`` steps then linear decay to 0,
    no weight decay on biases and norms, global-norm clipping (Loshchilov & Hutter 2019)."""
    paddle = import_paddle()
    params = [p for p in (parameters or model.parameters()) if not p.stop_gradient]
    names = {id(p): n for n, p in model.named_parameters()}
    warmup = int(total * config.warmup_ratio)

    def lr_factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        return max(0.0, (total - step) / max(1, total - warmup))

    schedule = paddle.optimizer.lr.LambdaDecay(config.learning_rate, lr_factor)
    decay_names = {p.name for p in params if not _no_decay(names.get(id(p), ""))}
    adamw = paddle.optimizer.AdamW(
        learning_rate=schedule, parameters=params, weight_decay=config.weight_decay,
        apply_decay_param_fun=lambda n: n in decay_names,
        grad_clip=paddle.nn.ClipGradByGlobalNorm(config.grad_clip) if config.grad_clip > 0 else None)
    scaler = paddle.amp.GradScaler(init_loss_scaling=2.0 ** 15) if config.amp == "fp16" else None
    return _Optimizer(params, adamw, schedule, scaler)


def _weights(model) -> dict[str, np.ndarray]:
    return {k: v.numpy().copy() for k, v in model.state_dict().items()}


@dataclass
class LoopState:
    """Where the loop stands and the best weights so far: with the model, optimizer and random
    generators, what a resumable training state holds. ``epoch_rng_state`` draws the data order of
    ``epoch``, of which ``batch_in_epoch`` batches are done."""

    best_state: dict[str, np.ndarray]
    epoch_rng_state: dict[str, Any]
    step: int = 0
    last_eval: int = 0
    epoch: int = 0
    batch_in_epoch: int = 0
    best_metrics: dict[str, float] = field(default_factory=dict)
    best_step: int = 0
    history: list[dict[str, Any]] = field(default_factory=list)
    steps_run: int = 0  # optimizer steps this process executed (not counting those before --resume)
    step_seconds: float = 0.0

    @classmethod
    def restore(cls, saved: dict[str, Any], model, optimizer: _Optimizer,
                extra_layers: dict[str, Any]) -> LoopState:
        """Load a saved state (see :meth:`save`) into the model, optimizer and Paddle's generator."""
        model.set_state_dict(saved["model"])
        for name, layer in extra_layers.items():
            layer.set_state_dict(saved["extra"][name])
        optimizer.adamw.set_state_dict(saved["optimizer"])
        optimizer.schedule.set_state_dict(saved["schedule"])
        import_paddle().set_rng_state(saved["paddle_rng"])
        return cls(saved["best_state"], saved["epoch_rng_state"], step=saved["step"], last_eval=saved["last_eval"],
                   epoch=saved["epoch"], batch_in_epoch=saved["batch_in_epoch"],
                   best_metrics=saved["best_metrics"], best_step=saved["best_step"], history=saved["history"])

    def save(self, state_dir: Path, run: dict[str, int], model, optimizer: _Optimizer,
             extra_layers: dict[str, Any]) -> None:
        """Write the resumable state of this point; ``run`` (total steps, seed) identifies the run."""
        _save_state(Path(state_dir) / STATE_FILE, {
            **run, "step": self.step, "last_eval": self.last_eval, "epoch": self.epoch,
            "batch_in_epoch": self.batch_in_epoch, "epoch_rng_state": self.epoch_rng_state,
            "model": model.state_dict(), "optimizer": optimizer.adamw.state_dict(),
            "extra": {name: layer.state_dict() for name, layer in extra_layers.items()},
            "schedule": optimizer.schedule.state_dict(), "paddle_rng": import_paddle().get_rng_state(),
            "best_state": self.best_state, "best_metrics": self.best_metrics, "best_step": self.best_step,
            "history": self.history})


def _initial_state(model, optimizer: _Optimizer, config: LoopConfig, total: int, rng, state_dir: Path | None,
                   resume: bool, extra_layers: dict[str, Any]) -> LoopState:
    """A fresh state, or with ``resume`` the one saved in ``state_dir`` (same steps and seed only)."""
    if not resume:
        return LoopState(_weights(model), rng.bit_generator.state)
    saved = load_train_state(state_dir) if state_dir is not None else None
    if saved is None:
        raise UserError(f"nothing to resume: no saved training state in {state_dir}")
    if saved["total"] != total or saved["seed"] != config.seed:
        raise UserError(f"the saved state in {state_dir} is from a run with other settings "
                        f"(steps {saved['total']}, seed {saved['seed']}); start again without --resume")
    return LoopState.restore(saved, model, optimizer, extra_layers)


@dataclass
class _Loop:
    """One training run: what it trains on and with, and its :class:`LoopState`."""

    model: Any
    train: EncodedSplit
    dev: EncodedSplit | None
    config: LoopConfig
    kind: str
    loss_fn: LossFn
    hooks: TrainHooks
    world: World
    optimizer: _Optimizer
    state: LoopState
    total: int
    state_dir: Path | None
    extra_layers: dict[str, Any]

    def run(self, rng, bar) -> None:
        """The remaining epochs, each in the data order its random state draws."""
        start_epoch, skip = self.state.epoch, self.state.batch_in_epoch
        for epoch in range(start_epoch, self.config.epochs):
            if self.state.step >= self.total:
                break
            rng.bit_generator.state = self.state.epoch_rng_state  # the data order of this epoch
            self.state.epoch, self.state.batch_in_epoch = epoch, skip if epoch == start_epoch else 0
            batches = self.train.train_batches(self.config.batch_size, rng)
            for _ in range(self.state.batch_in_epoch):
                next(batches)
            for batch in batches:
                if self.state.step >= self.total:
                    break
                self.step(batch, bar)
            if self.state.last_eval != self.state.step:
                self.evaluate()
            self.state.epoch_rng_state = rng.bit_generator.state

    def step(self, batch: Batch, bar) -> None:
        """One optimizer step on a global batch, then the hooks, evaluation and state saving it is due."""
        state, config = self.state, self.config
        start = time.perf_counter()
        values = _accumulate(self.model, batch, self.loss_fn, self.kind, self.world, config.grad_accum,
                             config.amp, self.optimizer.scaler)
        if self.world.size > 1:
            all_reduce_gradients(self.optimizer.params, self.world)
        self.optimizer.step()
        state.step_seconds += time.perf_counter() - start
        state.step += 1
        state.steps_run += 1
        state.batch_in_epoch += 1
        if not all(math.isfinite(v) for v in values.values()):
            raise UserError(f"the loss became {values} at step {state.step}; lower --lr")
        bar.advance(values)
        if self.hooks.on_step:
            self.hooks.on_step(state.step, values)
        if config.eval_every and state.step % config.eval_every == 0:
            self.evaluate()
        if self.state_dir is not None and config.save_every and state.step % config.save_every == 0 \
                and self.world.main:
            state.save(self.state_dir, {"total": self.total, "seed": config.seed}, self.model, self.optimizer,
                       self.extra_layers)

    def evaluate(self) -> None:
        """Score dev (when there is one), record it, keep the weights if they are the best so far."""
        state = self.state
        state.last_eval = state.step
        if self.dev is None:
            return
        metrics = evaluate_split(self.model, self.dev, self.kind, self.config.eval_batch_size)
        epoch = state.step / self.train.num_train_batches(self.config.batch_size)
        state.history.append({"step": state.step, "epoch": round(epoch, 3),
                              **{f"dev_{k}": v for k, v in metrics.items()}})
        if self.hooks.on_eval:
            self.hooks.on_eval(state.step, metrics)
        metric = PRIMARY_METRIC[self.kind]
        if not state.best_metrics or is_better(metric, metrics[metric], state.best_metrics[metric]):
            state.best_state, state.best_metrics, state.best_step = _weights(self.model), metrics, state.step


def train_model(model, train: EncodedSplit, dev: EncodedSplit | None, config: LoopConfig,
                kind: str = "classification", loss_fn: LossFn = hard_label_loss,
                hooks: TrainHooks | None = None,
                parameters: Sequence | None = None, description: str = "train",
                state_dir: Path | None = None, resume: bool = False,
                extra_layers: dict[str, Any] | None = None) -> TrainResult:
    """Train ``model`` in place and return the best weights by the dev metric.

    ``parameters`` restricts what the optimizer updates (default: every trainable parameter).
    Without ``dev`` the final weights are the result. With ``state_dir`` and
    ``config.save_every``, a resumable state (weights, optimizer, schedule, data order, random
    generators, best so far) is saved every ``save_every`` steps; ``resume`` continues from it and
    reaches the same result as an uninterrupted run with the same seed. ``extra_layers`` are
    trained layers outside ``model`` (distillation's projection) whose weights the state keeps too.
    """
    extra_layers = extra_layers or {}
    w = init_distributed()
    if config.batch_size % (w.size * config.grad_accum):
        raise UserError(f"--batch-size {config.batch_size} (the global batch) must divide by the number of "
                        f"processes x --grad-accum ({w.size} x {config.grad_accum})")
    seed_everything(config.seed)
    rng = np.random.default_rng(config.seed)
    total = train.num_train_batches(config.batch_size) * config.epochs
    if config.max_steps is not None:
        total = min(total, config.max_steps)
    optimizer = _build_optimizer(model, parameters, config, total)
    start = time.perf_counter()
    state = _initial_state(model, optimizer, config, total, rng, state_dir, resume, extra_layers)
    loop = _Loop(model, train, dev, config, kind, loss_fn, hooks or TrainHooks(), w, optimizer, state, total,
                 state_dir, extra_layers)
    model.train()
    with progress_bar(total, description) as bar:
        bar.advance(steps=state.step)
        loop.run(rng, bar)
    model.eval()
    if dev is None:
        state.best_state, state.best_step = _weights(model), state.step
    return TrainResult(state.best_state, state.best_metrics, state.best_step, state.step,
                       time.perf_counter() - start, state.history, state.steps_run, state.step_seconds)
