"""The ``prune`` stage: score heads (and FFN neurons), remove the least important physically, and
recover accuracy by fine-tuning with logit distillation from the unpruned parent.

See ``importance.py`` (Michel et al. 2019), ``selection.py`` (what ``--heads``/``--ffn``/``--params``
mean) and ``physical.py`` (slicing the weights). The report gives heads removed per layer,
parameters before/after, accuracy before and after recovery against the parent, and CPU latency
of parent and pruned model through ONNX Runtime.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..checkpoint import config_record, load_checkpoint, save_checkpoint
from ..data.batching import encode_splits
from ..data.tasks import TaskSpec, load_task_for_model
from ..errors import UserError
from ..metrics import PRIMARY_METRIC, metric_delta
from ..models import count_parameters, model_from_state
from ..models.layouts import check_layout, check_layout_name
from ..progress import note
from ..train import TrainConfig, clear_train_state, evaluate_split, resumable, train_model
from .importance import HEAD_METHODS, ffn_importance, head_importance
from .physical import prune_state
from .selection import (heads_to_keep_by_fraction, neurons_to_keep_by_fraction,
                        select_for_parameter_target)


@dataclass(frozen=True)
class PruneConfig:
    checkpoint: Path
    out: Path
    heads: float | None = None  # fraction of all attention heads to remove
    ffn: float | None = None  # fraction of each layer's FFN neurons to remove
    params: float | None = None  # fraction of non-embedding parameters to remove (heads + FFN)
    importance: str = "gradient"  # head scores: gradient (Michel et al.) or magnitude
    importance_samples: int = 512  # training examples for gradient importance
    task: TaskSpec | None = None
    recover_epochs: int = 1  # fine-tuning after pruning; 0 = none
    distill_from_parent: bool = True  # recovery loss: CE + logit KD from the unpruned parent
    kd_alpha: float = 0.5
    kd_temperature: float = 2.0
    train: TrainConfig = field(default_factory=lambda: TrainConfig(epochs=1, learning_rate=1e-4))
    measure_latency: bool = True
    overwrite: bool = False
    resume: bool = False  # continue the training an interrupted run saved beside --out
    gqa: str = "queries"  # ERNIE 4.5: remove query heads per group, or whole KV groups ("groups")
    uniform: bool = False  # ERNIE 3.0: the same head count and FFN width in every layer (a standard model)
    layout: str = "ours"  # checkpoint layout to write (models/layouts.py)

    def __post_init__(self) -> None:
        check_layout_name(self.layout)
        if self.params is None and self.heads is None and self.ffn is None:
            raise UserError("say what to remove: --heads R, --ffn R and/or --params R")
        if self.params is not None and (self.heads is not None or self.ffn is not None):
            raise UserError("--params chooses heads and FFN neurons itself; do not combine it with "
                            "--heads or --ffn")
        for name in ("heads", "ffn", "params"):
            value = getattr(self, name)
            if value is not None and not 0 < value < 1:
                raise UserError(f"--{name} is a fraction in (0, 1), got {value}")
        if self.importance not in HEAD_METHODS:
            raise UserError(f"--importance must be one of {', '.join(HEAD_METHODS)}, got '{self.importance}'")
        if self.gqa not in ("queries", "groups"):
            raise UserError(f"--gqa must be one of queries, groups, got '{self.gqa}'")
        if self.recover_epochs < 0:
            raise UserError(f"--recover-epochs must be >= 0, got {self.recover_epochs}")


def _select(cfg: PruneConfig, head_scores, neuron_scores, config, before):
    """ERNIE 3.0: heads and FFN neurons to keep per layer (sizes may differ between layers)."""
    if cfg.params is not None:
        return select_for_parameter_target(head_scores, neuron_scores, config, cfg.params, before["non_embedding"],
                                           cfg.uniform)
    heads = heads_to_keep_by_fraction(head_scores, cfg.heads, cfg.uniform) if cfg.heads else \
        [list(range(len(s))) for s in head_scores]
    neurons = neurons_to_keep_by_fraction(neuron_scores, cfg.ffn) if cfg.ffn else None
    return heads, neurons, None


def prune_checkpoint(cfg: PruneConfig) -> dict[str, Any]:
    start = time.perf_counter()
    parent = load_checkpoint(cfg.checkpoint)
    check_layout(parent.config, cfg.layout, structure=False)
    if parent.config.extra.get("quantization"):
        raise UserError(f"{parent.path} is quantized ({parent.config.extra['quantization'].get('method')}); "
                        f"prune its FP32 parent, then quantize the pruned model")
    if parent.config.architecture == "ErnieForMaskedLM":
        raise UserError(f"{parent.path} is a pre-trained (masked-LM) model; fine-tune it on a task "
                        f"with `train --from` first: importance is measured on the task loss")
    task = load_task_for_model(cfg.task, parent.task, parent.config.labels)
    metric = PRIMARY_METRIC[task.kind]
    tokenizer = parent.tokenizer()
    splits = encode_splits(task, tokenizer, parent.config.labels, parent.max_seq_length)
    held_out = splits[task.held_out]

    model = model_from_state(parent.config, parent.state, str(parent.path))
    parent_metrics = evaluate_split(model, held_out, task.kind)
    before = count_parameters({k: v.shape for k, v in parent.state.items()})
    gqa_report = None
    if parent.config.model_type == "ernie4_5":  # grouped-query attention: see gqa.py
        from . import gqa

        removal = gqa.plan_removal(parent.config, cfg.gqa, cfg.heads, cfg.ffn, cfg.params)
        head_scores = (gqa.magnitude_query_importance(parent.state, parent.config) if cfg.importance == "magnitude"
                       else head_importance(cfg.importance, model, parent.state, splits["train"],
                                            cfg.importance_samples))
        neuron_scores = gqa.swiglu_importance(parent.state, parent.config)
        heads, groups, neurons = gqa.keep_lists(head_scores, neuron_scores, parent.config, cfg.gqa, *removal)
        state, config = gqa.prune_gqa_state(parent.state, parent.config, heads, groups, neurons)
        ratio = cfg.params
        gqa_report = {"mode": cfg.gqa, "kv_heads": [parent.config.num_key_value_heads, config.num_key_value_heads],
                      "queries_per_group": [parent.config.queries_per_group, config.queries_per_group],
                      "kv_groups_kept_per_layer": groups}
    else:
        head_scores = head_importance(cfg.importance, model, parent.state, splits["train"], cfg.importance_samples)
        neuron_scores = ffn_importance(parent.state, parent.config)
        heads, neurons, ratio = _select(cfg, head_scores, neuron_scores, parent.config, before)
        state, config = prune_state(parent.state, parent.config, heads, neurons)
    after = count_parameters({k: v.shape for k, v in state.items()})
    check_layout(config, cfg.layout)  # before recovery training: a layout the result cannot take is refused now

    pruned = model_from_state(config, state, "pruned model")
    before_recovery = evaluate_split(pruned, held_out, task.kind)
    recovered, steps, steps_run = before_recovery, 0, 0
    if cfg.recover_epochs > 0:
        from ..losses import hard_label_loss, logit_kd_loss

        loss = (logit_kd_loss(model, cfg.kd_alpha, cfg.kd_temperature, tokenizer.pad_id)
                if cfg.distill_from_parent else hard_label_loss)
        train_cfg = TrainConfig(**{**cfg.train.__dict__, "epochs": cfg.recover_epochs})
        with resumable(cfg.out, cfg.resume) as state_dir:
            result = train_model(pruned, splits["train"], splits.get("dev"), train_cfg, kind=task.kind,
                                 loss_fn=loss, description="recover", state_dir=state_dir, resume=cfg.resume)
        pruned.set_state_dict(result.best_state)
        state = {k: v for k, v in result.best_state.items()}
        recovered = evaluate_split(pruned, held_out, task.kind)
        steps, steps_run = result.steps, result.steps_run

    removed_per_layer = [parent.config.heads_in_layer(i) - len(k) for i, k in enumerate(heads)]
    report = {
        "heads_before": parent.config.heads_per_layer, "heads_after": config.heads_per_layer,
        "heads_removed_per_layer": removed_per_layer,
        "ffn_before": parent.config.ffn_per_layer, "ffn_after": config.ffn_per_layer,
        "parameters_before": before, "parameters_after": after,
        "removed_fraction_total": 1 - after["total"] / before["total"],
        "removed_fraction_non_embedding": 1 - after["non_embedding"] / before["non_embedding"],
        "removed_fraction_heads": sum(removed_per_layer) / max(1, sum(parent.config.heads_per_layer)),
        "params_ratio_used": ratio,
        "accuracy": {"parent": parent_metrics, "before_recovery": before_recovery, "after_recovery": recovered},
        "delta_points_before_recovery": metric_delta(metric, before_recovery[metric], parent_metrics[metric]),
        "delta_points": metric_delta(metric, recovered[metric], parent_metrics[metric]),
        "head_importance": [s.round(6).tolist() for s in head_scores],
        "gqa": gqa_report,
    }
    stage = {"name": "prune", "config": config_record(cfg), "metrics": {task.held_out: recovered},
             "report": report, "steps": steps, "seconds": round(time.perf_counter() - start, 1)}
    out = save_checkpoint(cfg.out, config, state, tokenizer, stage, parent=parent, overwrite=cfg.overwrite,
                          layout=cfg.layout)
    clear_train_state(cfg.out)
    if cfg.measure_latency:
        from ..compare import latency_comparison

        note("measuring CPU latency of parent and pruned model (ONNX Runtime)")
        report.update(latency_comparison(("parent", parent.path), ("pruned", out)))
    return {"stage": "prune", "out": str(out), "task": task.spec.name, "metric": metric, **report,
            "steps": steps, "steps_run": steps_run, "seconds": round(time.perf_counter() - start, 1)}
