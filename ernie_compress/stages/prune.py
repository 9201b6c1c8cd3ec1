"""The ``prune`` stage: score heads (and FFN neurons), or the routed experts of a mixture-of-experts
model, remove the least important physically, and recover accuracy by fine-tuning with logit
distillation from the unpruned parent.

See ``importance.py`` (Michel et al. 2019), ``selection.py`` (what ``--heads``/``--ffn``/``--params``
mean), ``physical.py`` (slicing the weights), ``experts.py`` (``--experts``: REAP or routing
frequency) and ``strategies.py`` (the strategy the model family's head layout picks). The report
gives heads (and experts) per layer, parameters before/after (total, non-embedding and, for
mixture-of-experts models, active per token), accuracy (perplexity) before and after recovery
against the parent, and (``prune`` on the command line) CPU latency of parent and pruned model
through ONNX Runtime.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

from ..checkpoint import load_checkpoint
from ..data.task_options import TaskOptions
from ..losses import hard_label_loss, logit_kd_loss
from ..metrics import metric_delta
from ..models import count_parameters, model_from_state
from ..models.layouts import check_layout
from ..options import check_options, fail, option
from ..prune.experts import EXPERT_METHODS
from ..prune.importance import HEAD_METHODS
from ..prune.strategies import PruneOutcome, PruneRequest, pruning_strategy
from ..training_loop import LoopConfig, evaluate_split
from ..results import PruneResult
from .common import CheckpointOutput, ParentKDOptions, TrainingOptions
from .registry import register
from .skeleton import finish, refuse_existing_output, samples_per_second, start_from, train_resumably


@dataclass(frozen=True, kw_only=True)
class PruneConfig(CheckpointOutput, TaskOptions, ParentKDOptions, TrainingOptions):
    """``ernie-compress prune``: remove the least important heads (and FFN neurons), then recover."""

    checkpoint: Path = option(argument=True, scope="cli", source="from", help="The FP32 task checkpoint to prune.")
    heads: float | None = option(None, above=0, below=1, help="Fraction of all attention heads to remove "
                                 "(attention is ~1/3 of a layer's parameters, so 0.15 removes ~5% of them; see --params).")
    ffn: float | None = option(None, above=0, below=1, help="Fraction of every layer's FFN neurons to remove.")
    params: float | None = option(None, above=0, below=1, help="Fraction of non-embedding parameters to remove, "
                                                               "choosing heads and FFN neurons.")
    experts: float | None = option(None, above=0, below=1, help=(
        "Mixture-of-experts models: fraction of routed experts to remove, round(R x experts) from every MoE "
        "layer (the same count in each, so the config keeps one moe_num_experts; moe_k is clamped if fewer "
        "experts remain). Dense layers and shared experts stay; not combined with --heads/--ffn/--params yet."))
    importance: str | None = option(None, choices=HEAD_METHODS + EXPERT_METHODS, help=(
        "Scores. Heads: gradient (default; Michel et al. 2019, on task data) or magnitude. Experts: reap "
        "(default; router weight x expert output norm, Lasby et al. 2025) or frequency (tokens routed), on the "
        "train split."))
    importance_samples: int = option(512, at_least=1, help="Training examples for gradient, REAP or frequency "
                                                           "scores.")
    gqa: str = option("queries", choices=("queries", "groups"), help=(
        "ERNIE 4.5 (grouped-query attention): 'queries' removes the same number of query heads from every KV "
        "group, 'groups' removes whole KV groups; either way every layer keeps the same shape, so the result "
        "loads in the standard layout."))
    uniform: bool = option(False, flag="--uniform", help=(
        "ERNIE 3.0: remove the same number of heads (and FFN neurons) from every layer, so the result stays a "
        "standard model (what --layout paddlenlp needs for FFN pruning; PaddleNLP cannot express pruned heads "
        "at all)."))
    recover_epochs: int = option(1, at_least=0, help="Fine-tuning epochs after pruning (0 = none).")
    distill_from_parent: bool = option(True, flag="--distill-from-parent/--no-distill", help=(
        "Recover with hard labels + logit KD from the unpruned parent (default), or hard labels only."))
    lr: float = option(1e-4, above=0, help="Recovery learning rate.")

    def __post_init__(self) -> None:
        check_options(self)
        self.check_accelerator()
        if self.params is None and self.heads is None and self.ffn is None and self.experts is None:
            fail("say what to remove: {heads} R, {ffn} R and/or {params} R, or {experts} R",
                 "heads", "ffn", "params", "experts")
        if self.params is not None and (self.heads is not None or self.ffn is not None):
            fail("{params} chooses heads and FFN neurons itself; do not combine it with {heads} or {ffn}",
                 "params", "heads", "ffn")
        self._check_units()

    def _check_units(self) -> None:
        """--experts alone, scored by an expert method; heads by a head method."""
        if self.experts is not None and (self.heads is not None or self.ffn is not None or self.params is not None):
            fail("{experts} prunes mixture-of-experts models and is not combined with {heads}, {ffn} or {params} "
                 "yet", "experts", "heads", "ffn", "params")
        if self.experts is not None and self.importance in HEAD_METHODS:
            fail(f"{{importance}} {self.importance} scores heads; {{experts}} are scored by "
                 f"{' or '.join(EXPERT_METHODS)}", "importance", "experts")
        if self.experts is None and self.importance in EXPERT_METHODS:
            fail(f"{{importance}} {self.importance} scores routed experts ({{experts}}); heads are scored by "
                 f"{' or '.join(HEAD_METHODS)}", "importance", "experts")

    @property
    def train(self) -> LoopConfig:
        return self.loop_config(self.recover_epochs, self.lr)


def _request(cfg: PruneConfig) -> PruneRequest:
    importance = cfg.importance or (EXPERT_METHODS[0] if cfg.experts is not None else HEAD_METHODS[0])
    return PruneRequest(heads=cfg.heads, ffn=cfg.ffn, params=cfg.params, importance=importance,
                        importance_samples=cfg.importance_samples, gqa=cfg.gqa, uniform=cfg.uniform,
                        experts=cfg.experts)


@register("prune", PruneConfig)
def prune_checkpoint(cfg: PruneConfig) -> PruneResult:
    started = time.perf_counter()
    refuse_existing_output(cfg)
    request = _request(cfg)
    parent = load_checkpoint(cfg.checkpoint)
    strategy = pruning_strategy(parent.config)
    strategy.check(request, parent.config)  # before any work: what this model cannot lose is refused
    start = start_from(parent, cfg.task_spec, fp32_for="prune its FP32 parent, then quantize the pruned model")
    task, metric, splits, model = start.task, start.metric, start.splits, start.model
    check_layout(parent.config, cfg.layout, structure=False)
    before = count_parameters({k: v.shape for k, v in parent.state.items()}, parent.config)
    outcome = strategy.prune(request, model, parent.state, parent.config, splits["train"], before["non_embedding"])
    state, config = outcome.state, outcome.config
    after = count_parameters({k: v.shape for k, v in state.items()}, config)
    check_layout(config, cfg.layout)  # before recovery training: a layout the result cannot take is refused now

    pruned = model_from_state(config, state, "pruned model")
    before_recovery = evaluate_split(pruned, start.held_out, task.kind)
    recovered, steps, steps_run, train_seconds, throughput = before_recovery, 0, 0, 0.0, None
    if cfg.recover_epochs > 0:
        loss = (logit_kd_loss(model, cfg.kd_weight, cfg.kd_temperature, start.tokenizer.pad_id)
                if cfg.distill_from_parent else hard_label_loss)
        result = train_resumably(pruned, splits, task.kind, cfg, "recover", loss_fn=loss)
        state = dict(result.best_state)
        recovered = evaluate_split(pruned, start.held_out, task.kind)
        steps, steps_run, train_seconds = result.steps, result.steps_run, result.seconds
        throughput = samples_per_second(result, cfg.batch_size)

    report = _report(start, outcome, (before, after), (before_recovery, recovered))
    out = finish(cfg, config, state, start.tokenizer, {
        "name": "prune", "metrics": {task.held_out: recovered}, "report": report, "steps": steps,
        "seconds": round(time.perf_counter() - started, 1)}, parent)
    return PruneResult(out=str(out), parent=str(parent.path), task=task.spec.name, metric=metric, details=report,
                       steps=steps, steps_run=steps_run, train_seconds=round(train_seconds, 2),
                       samples_per_s=throughput, seconds=round(time.perf_counter() - started, 1))


def _report(start, outcome: PruneOutcome, parameters: tuple[dict, dict], metrics: tuple[dict, dict]) -> dict:
    """The stage's report: heads, FFN widths (and experts) per layer, parameters and the metric before
    pruning, after pruning and after recovery."""
    parent, config, heads, metric = start.parent.config, outcome.config, outcome.heads, start.metric
    (before, after), (before_recovery, recovered) = parameters, metrics
    removed_per_layer = [parent.heads_in_layer(i) - len(k) for i, k in enumerate(heads)]
    report = {
        "heads_before": parent.heads_per_layer, "heads_after": config.heads_per_layer,
        "heads_removed_per_layer": removed_per_layer,
        "ffn_before": parent.ffn_per_layer, "ffn_after": config.ffn_per_layer,
        "parameters_before": before, "parameters_after": after,
        "removed_fraction_total": 1 - after["total"] / before["total"],
        "removed_fraction_non_embedding": 1 - after["non_embedding"] / before["non_embedding"],
        "removed_fraction_heads": sum(removed_per_layer) / max(1, sum(parent.heads_per_layer)),
        "params_ratio_used": outcome.ratio,
        "accuracy": {"parent": start.metrics, "before_recovery": before_recovery, "after_recovery": recovered},
        "delta_points_before_recovery": metric_delta(metric, before_recovery[metric], start.metrics[metric]),
        "delta_points": metric_delta(metric, recovered[metric], start.metrics[metric]),
        "head_importance": [s.round(6).tolist() for s in outcome.head_scores],
        "gqa": outcome.details,
    }
    if outcome.experts is not None:  # mixture of experts: experts per layer, moe_k, active parameters
        report["experts"] = outcome.experts
        report["removed_fraction_active"] = 1 - after["active"] / before["active"]
    return report
