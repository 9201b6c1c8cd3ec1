"""The ``distill`` stage: teach a small student to imitate a large teacher on a task.

The loss mixes, with weights from the options: hard-label cross-entropy, soft-label KD on logits
(Hinton et al. 2015), hidden-state MSE through a learned projection (TinyBERT-style, uniform or
explicit layer mapping) and MiniLM attention/value relations from one teacher layer to the
student's last layer (see ``losses.py``). The teacher runs in eval mode without gradients. The
student uses the teacher's vocabulary; it is a preset (fresh, optionally initialised from every
k-th teacher layer) or a checkpoint, of the teacher's family or of one the teacher's family teaches
(``Distillation.students``: an ERNIE 4.5 mixture-of-experts teacher teaches dense ERNIE 4.5 students
and the other way round; they share a tokenizer). A mixture-of-experts student adds its router's
load-balancing loss, as in training. ``--baseline`` trains the same student with hard labels only
for the same number of steps, to show what distillation adds.
"""

from __future__ import annotations

import math
import os
import time
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from ..checkpoint import Checkpoint, load_checkpoint
from ..data.task_options import TaskOptions
from ..distill.losses import hidden_mse, parse_layer_map, relation_kl, relation_log_probs, uniform_layer_map
from ..errors import UserError
from ..losses import (KD_TEMPERATURE_HELP, TeacherLogitCache, hard_label_loss, kd_temperature, soft_label_kd,
                      task_loss, with_auxiliary_loss)
from ..metrics import percent_of
from ..models import build_model, count_parameters, load_state_
from ..models.config import ErnieConfig
from ..models.families import (ModelFamily, config_from_dict, family_of, family_of_keys, require_distillation,
                               require_teachable)
from ..models.layouts import check_layout
from ..models.presets import is_preset, resize_preset, resolve_preset
from ..options import check_options, fail, option
from ..paddle_env import import_paddle, seed_everything
from ..progress import note
from ..training_loop import LoopConfig, TrainHooks, evaluate_split, train_model
from ..results import DistillResult
from .common import CheckpointOutput, TrainingOptions
from .registry import register
from .skeleton import finish, refuse_existing_output, refuse_quantized, samples_per_second, start_from, train_resumably

MODELS_DIR_ENV = "ERNIE_COMPRESS_MODELS"


@dataclass(frozen=True, kw_only=True)
class DistillConfig(CheckpointOutput, TaskOptions, TrainingOptions):
    """``ernie-compress distill``: a student trained to imitate a teacher (logits, hidden states,
    MiniLM relations)."""

    teacher: str = option(source="teacher", help="Teacher checkpoint directory, or a name (e.g. xxl) in "
                                                 "--models-dir / $ERNIE_COMPRESS_MODELS.")
    student: str = option(help="Student: a preset (mini, micro, nano, demo-mini, tiny, ...) or a checkpoint "
                               "directory sharing the teacher's vocabulary.")
    student_layers: int | None = option(None, at_least=1, help=(
        "With a preset --student: this many layers instead of the preset's (a depth between presets)."))
    student_hidden: int | None = option(None, at_least=1, help=(
        "With a preset --student: this hidden size instead of the preset's; the attention heads keep the "
        "preset's head size (their count follows) and the FFN its ratio to the hidden size."))
    models_dir: Path | None = option(None, help="Where teacher names resolve.")
    init_from_teacher: bool = option(False, help="Initialise the student from the teacher's embeddings and "
                                                 "every k-th layer (equal widths).")
    ce_weight: float = option(0.5, at_least=0, help="Weight of the hard-label cross-entropy.")
    kd_weight: float = option(0.5, at_least=0, help="Weight of soft-label KD on logits.")
    kd_temperature: float | None = option(None, above=0, help=KD_TEMPERATURE_HELP)
    hidden_weight: float = option(0.0, at_least=0, help="Weight of hidden-state MSE (learned projection).")
    attention_weight: float = option(0.0, at_least=0, help="Weight of MiniLM attention + value-relation KL "
                                                           "(teacher layer -> student's last).")
    attention_teacher_layer: int = option(-1, help="Teacher layer for the attention loss (negative counts "
                                                   "from the end).")
    relation_heads: int | None = option(None, at_least=1, help="Relation heads for the attention loss "
                                                               "(default: gcd of the head counts).")
    layer_map: str | None = option(None, help="Hidden-loss layer pairs student:teacher, e.g. 0:1,1:3 "
                                              "(default: uniform).")
    baseline: bool = option(False, help="Also train the student on hard labels alone for the same steps, "
                                        "for comparison.")
    epochs: int = option(3, at_least=0, help="Passes over the training data.")
    lr: float = option(5e-4, above=0, help="Peak learning rate.")

    def __post_init__(self) -> None:
        check_options(self)
        self.check_accelerator()
        if (self.student_layers or self.student_hidden) and not is_preset(self.student):
            fail("{student_layers} and {student_hidden} resize a preset --student, not a checkpoint",
                 "student_layers", "student_hidden")
        if self.ce_weight + self.kd_weight + self.hidden_weight + self.attention_weight == 0:
            fail("every loss weight is 0 ({ce_weight}, {kd_weight}, {hidden_weight}, {attention_weight}): "
                 "nothing to train on", "ce_weight", "kd_weight", "hidden_weight", "attention_weight")

    @property
    def train(self) -> LoopConfig:
        return self.loop_config(self.epochs, self.lr)


def resolve_teacher(name: str, models_dir: Path | None) -> Path:
    """A teacher checkpoint directory from a path or a name in the models directory."""
    path = Path(name).expanduser()
    if path.exists():
        return path
    root = models_dir or (Path(os.environ[MODELS_DIR_ENV]) if os.environ.get(MODELS_DIR_ENV) else None)
    if root is not None and (Path(root) / name).is_dir():
        return Path(root) / name
    where = f" or {root / name}" if root is not None else f" (set --models-dir or ${MODELS_DIR_ENV})"
    raise UserError(f"teacher '{name}' not found: no directory {path}{where}")


def _student_architecture(teacher_config, student: ModelFamily) -> list[str]:
    """``architectures`` of a student of family ``student`` for the teacher's task kind (an MoE
    causal LM teaches a dense causal LM)."""
    teacher = family_of(teacher_config)
    kinds = [k for k, a in teacher.architecture_for_kind.items() if a == teacher_config.architecture]
    return [student.architecture_for(kinds[0])] if kinds else list(teacher_config.architectures)


def _student(cfg: DistillConfig, teacher: Checkpoint) -> tuple[ErnieConfig, dict | None, str]:
    """(student config, initial state or None, description)."""
    if is_preset(cfg.student):
        keys = resize_preset(resolve_preset(cfg.student), cfg.student, cfg.student_layers, cfg.student_hidden)
        family = family_of_keys(keys)
        require_teachable(teacher.config, family, f"preset '{cfg.student}'")
        keys.update(vocab_size=teacher.config.vocab_size, architectures=_student_architecture(teacher.config, family),
                    id2label=teacher.config.id2label, pad_token_id=teacher.config.pad_token_id,
                    max_position_embeddings=max(keys["max_position_embeddings"], teacher.max_seq_length))
        family.student_keys(keys, teacher.config)
        config = config_from_dict(keys)
        config.extra["ernie_compress"] = dict(teacher.config.extra.get("ernie_compress", {}))
        resized = (f" at {config.num_hidden_layers} layers x {config.hidden_size}"
                   if cfg.student_layers or cfg.student_hidden else "")
        return config, None, f"preset {cfg.student}{resized}"
    path = Path(cfg.student).expanduser()
    if not path.exists():
        raise UserError(f"student '{cfg.student}' is neither a preset nor a checkpoint directory")
    student = load_checkpoint(path)
    require_teachable(teacher.config, family_of(student.config), f"checkpoint {path}")
    if student.tokenizer().vocab != teacher.tokenizer().vocab or student.config.vocab_size != teacher.config.vocab_size:
        raise UserError(f"the student {path} and the teacher {teacher.path} have different vocabularies; "
                        f"a student must use its teacher's vocabulary (start from a preset instead)")
    config = student.config.replace(id2label=teacher.config.id2label, extra=dict(student.config.extra))
    config.extra["ernie_compress"] = dict(teacher.config.extra.get("ernie_compress", {}))
    return config, student.state, f"checkpoint {path}"


def init_from_teacher(student_config: ErnieConfig, teacher: Checkpoint) -> dict[str, np.ndarray]:
    """Embeddings, pooler, classifier and every k-th teacher layer, for a student of equal width."""
    t = teacher.config
    if family_of(student_config) is not family_of(t):
        raise UserError(f"--init-from-teacher copies the teacher's layers: it needs a student of the teacher's "
                        f"family ({t.model_type}), not {student_config.model_type}")
    if student_config.hidden_size != t.hidden_size:
        raise UserError(f"--init-from-teacher needs equal widths: student hidden {student_config.hidden_size} "
                        f"vs teacher {t.hidden_size}")
    if student_config.heads_per_layer[0] != t.heads_per_layer[0] or student_config.intermediate_size != t.ffn_per_layer[0] \
            or getattr(student_config, "num_key_value_heads", None) != getattr(t, "num_key_value_heads", None):
        raise UserError("--init-from-teacher needs the same heads and FFN width per layer as the teacher")
    layers = family_of(t).layer_prefix
    k = max(1, t.num_hidden_layers // student_config.num_hidden_layers)
    state = {name: value for name, value in teacher.state.items() if not name.startswith(layers)}
    for i in range(student_config.num_hidden_layers):
        src = min(t.num_hidden_layers - 1, (i + 1) * k - 1)
        prefix = f"{layers}{src}."
        for name, value in teacher.state.items():
            if name.startswith(prefix):
                state[f"{layers}{i}." + name[len(prefix):]] = value
    return state


@dataclass(frozen=True)
class _Student:
    config: ErnieConfig
    initial_state: dict | None  # what the student starts from (None: a fresh initialisation)
    source: str  # for the report
    model: object
    parameters: dict[str, int]  # count_parameters


def _build_student(cfg: DistillConfig, teacher_ckpt: Checkpoint, teacher_params: dict[str, int]) -> _Student:
    """The student model (seeded), warning when it is not smaller than the teacher."""
    config, state, source = _student(cfg, teacher_ckpt)
    check_layout(config, cfg.layout)  # before training
    if cfg.init_from_teacher:
        state = init_from_teacher(config, teacher_ckpt)
    seed_everything(cfg.train.seed)
    model = build_model(config)
    if state is not None:
        load_state_(model, state, "student", allow_new_head=True)
    params = count_parameters({k: list(v.shape) for k, v in model.state_dict().items()}, config)
    if params["non_embedding"] >= teacher_params["non_embedding"]:
        note(f"[yellow]warning: the student ({params['non_embedding']:,} non-embedding parameters) is "
             f"not smaller than its teacher ({teacher_params['non_embedding']:,})[/yellow]")
    return _Student(config, state, source, model, params)


@dataclass(frozen=True)
class _Alignment:
    """Which student layer learns from which teacher layer."""

    layer_map: list[tuple[int, int]]  # hidden-state pairs (student, teacher)
    teacher_layer: int  # attention relations: this teacher layer ...
    student_layer: int  # ... to the student's last
    relation_heads: int


def _alignment(cfg: DistillConfig, teacher, student) -> _Alignment:
    """Layer pairs for the hidden-state and attention losses, checked against both configs."""
    mapping = (parse_layer_map(cfg.layer_map, student.num_hidden_layers, teacher.num_hidden_layers)
               if cfg.layer_map else uniform_layer_map(student.num_hidden_layers, teacher.num_hidden_layers))
    t_layer = cfg.attention_teacher_layer % teacher.num_hidden_layers
    s_layer = student.num_hidden_layers - 1
    t_heads, s_heads = teacher.heads_in_layer(t_layer), student.heads_in_layer(s_layer)
    relation_heads = cfg.relation_heads or math.gcd(t_heads, s_heads)
    if cfg.attention_weight > 0:
        require_distillation(teacher, "attention_relations")
        widths = (t_heads * teacher.head_dim, s_heads * student.head_dim)
        if min(t_heads, s_heads) == 0 or any(w % relation_heads for w in widths):
            raise UserError(f"--relation-heads {relation_heads} must divide both attention widths {widths}")
    return _Alignment(mapping, t_layer, s_layer, relation_heads)


def _internal_losses(cfg: DistillConfig, record, t_record, batch, pad_id: int, projection, align: _Alignment):
    """Hidden-state MSE and MiniLM relation KLs (weighted sum, parts) from both models' records."""
    paddle = import_paddle()
    valid = paddle.cast(batch.input_ids != pad_id, "float32")  # [b, s]
    share = batch.token_share(valid, pad_id)  # token-averaged terms, data parallel
    parts, total = {}, 0.0
    if cfg.hidden_weight:
        h = sum(hidden_mse(record["hidden_states"][s], t_record["hidden_states"][t], projection, valid)
                for s, t in align.layer_map) / len(align.layer_map)
        parts["hidden"] = h
        total = total + cfg.hidden_weight * share * h
    if cfg.attention_weight:
        bias = paddle.unsqueeze((1.0 - valid) * -1e4, axis=[1, 2])  # [b, 1, 1, s]
        tq, tk, tv = t_record["qkv"][align.teacher_layer]
        sq, sk, sv = record["qkv"][align.student_layer]
        heads = align.relation_heads
        att = relation_kl(relation_log_probs(tq, tk, heads, bias), relation_log_probs(sq, sk, heads, bias), valid)
        val = relation_kl(relation_log_probs(tv, tv, heads, bias), relation_log_probs(sv, sv, heads, bias), valid)
        parts["attn"], parts["value"] = att, val
        total = total + cfg.attention_weight * share * (att + val)
    return total, parts


def _distill_loss(cfg: DistillConfig, teacher, pad_id: int, projection, align: _Alignment):
    """The training loss: hard labels, logit KD, and the internal losses when weighted."""
    paddle = import_paddle()
    needs_internals = cfg.hidden_weight > 0 or cfg.attention_weight > 0
    cached_teacher = TeacherLogitCache(teacher, pad_id)
    kind = teacher.task_kind

    def loss_fn(model, batch):
        record = {} if needs_internals else None
        logits = model(batch.input_ids, batch.token_type_ids, record=record)
        parts = {}
        total = 0.0
        if cfg.ce_weight:
            parts["ce"] = task_loss(kind, logits, batch.labels)
            total = total + cfg.ce_weight * parts["ce"]
        t_record = {} if needs_internals else None
        if needs_internals:
            with paddle.no_grad():
                t_logits = teacher(batch.input_ids, batch.token_type_ids, record=t_record)
        elif cfg.kd_weight:  # no teacher forward at all when nothing reads it
            t_logits = cached_teacher(batch)
        if cfg.kd_weight:
            parts["kd"] = soft_label_kd(logits, t_logits, cfg.kd_temperature, kind, batch.labels)
            total = total + cfg.kd_weight * parts["kd"]
        if needs_internals:
            internal, internal_parts = _internal_losses(cfg, record, t_record, batch, pad_id, projection, align)
            parts.update(internal_parts)
            total = total + internal
        return with_auxiliary_loss(model, total, parts)  # an MoE student's router balance

    return loss_fn


class _AuxiliaryLossLog:
    """The student's auxiliary loss (an MoE router's load balancing, ``aux`` among the loss parts) at
    each training step, for the report: the mean of the first and of the last ``window`` steps."""

    def __init__(self, window: int = 10):
        self.window = window
        self.values: list[float] = []

    def on_step(self, step: int, parts: dict[str, float]) -> None:
        if "aux" in parts:
            self.values.append(parts["aux"])

    def summary(self) -> dict[str, float] | None:
        if not self.values:
            return None
        first, last = self.values[:self.window], self.values[-self.window:]
        return {"first": float(np.mean(first)), "last": float(np.mean(last)), "window": self.window,
                "steps": len(self.values)}


def _baseline(cfg: DistillConfig, student: _Student, splits, held_out, kind: str, steps: int) -> dict:
    """The same student trained on hard labels alone for the same number of steps."""
    seed_everything(cfg.train.seed)
    plain = build_model(student.config)
    if student.initial_state is not None:
        load_state_(plain, student.initial_state, "student", allow_new_head=True)
    base = train_model(plain, splits["train"], splits.get("dev"), replace(cfg.train, max_steps=steps), kind=kind,
                       loss_fn=hard_label_loss, description="baseline")
    plain.set_state_dict(base.best_state)
    return {"metrics": evaluate_split(plain, held_out, kind), "steps": base.steps}


@register("distill", DistillConfig)
def distill(cfg: DistillConfig) -> DistillResult:
    paddle = import_paddle()
    started = time.perf_counter()
    refuse_existing_output(cfg)
    teacher_ckpt = load_checkpoint(resolve_teacher(cfg.teacher, cfg.models_dir))
    refuse_quantized(teacher_ckpt, "distill from its FP32 parent")
    t_params = count_parameters({k: v.shape for k, v in teacher_ckpt.state.items()}, teacher_ckpt.config)
    student = _build_student(cfg, teacher_ckpt, t_params)

    start = start_from(teacher_ckpt, cfg.task_spec)  # the teacher: task, splits, model, held-out metrics
    task, metric, tokenizer, splits, held_out = start.task, start.metric, start.tokenizer, start.splits, start.held_out
    teacher, teacher_metrics = start.model, start.metrics
    for p in teacher.parameters():
        p.stop_gradient = True

    align = _alignment(cfg, teacher_ckpt.config, student.config)
    projection = paddle.nn.Linear(student.config.hidden_size, teacher_ckpt.config.hidden_size)
    loss_fn = _distill_loss(cfg, teacher, tokenizer.pad_id, projection, align)
    params = list(student.model.parameters()) + (list(projection.parameters()) if cfg.hidden_weight else [])
    aux_log = _AuxiliaryLossLog()
    result = train_resumably(student.model, splits, task.kind, cfg, "distill", loss_fn=loss_fn, parameters=params,
                             extra_layers={"projection": projection} if cfg.hidden_weight else None,
                             hooks=TrainHooks(on_step=aux_log.on_step))
    student_metrics = evaluate_split(student.model, held_out, task.kind)
    baseline = _baseline(cfg, student, splits, held_out, task.kind, result.steps) if cfg.baseline else None

    s_params = student.parameters
    report = {
        "teacher": str(teacher_ckpt.path), "student_source": student.source,
        "teacher_metrics": teacher_metrics, "student_metrics": student_metrics,
        "percent_of_teacher": percent_of(metric, student_metrics[metric], teacher_metrics[metric]),
        "baseline": baseline,
        "parameters": {"teacher": t_params, "student": s_params,
                       "non_embedding_ratio": s_params["non_embedding"] / t_params["non_embedding"]},
        "losses": {"ce": cfg.ce_weight, "kd": cfg.kd_weight, "hidden": cfg.hidden_weight,
                   "attention": cfg.attention_weight, "kd_temperature": kd_temperature(task.kind, cfg.kd_temperature)},
        "layer_map": align.layer_map if cfg.hidden_weight else None,
        "relation_heads": align.relation_heads if cfg.attention_weight else None,
        "aux_loss": aux_log.summary(),  # an MoE student's router load-balancing term, None without one
    }
    out = finish(cfg, student.config, result.best_state, tokenizer, {
        "name": "distill", "metrics": {task.held_out: student_metrics}, "report": report, "steps": result.steps,
        "seconds": round(time.perf_counter() - started, 1)}, teacher_ckpt)
    return DistillResult(out=str(out), task=task.spec.name, metric=metric, details=report, steps=result.steps,
                         steps_run=result.steps_run, train_seconds=round(result.seconds, 2),
                         samples_per_s=samples_per_second(result, cfg.batch_size),
                         seconds=round(time.perf_counter() - started, 1))
