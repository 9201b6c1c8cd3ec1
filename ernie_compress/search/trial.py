"""One trial of a compression search: the recipe its suggested values make, run in its own folder by
the recipe runner (``pipeline.run_parsed_recipe``), and what it measures.

A trial's recipe distils the teacher into the suggested student, then (where suggested) prunes it and
quantizes it, and exports ONNX: the same file ``ernie-compress run`` takes, so every point the search
reports is rebuilt by its recipe. The objectives are measured on the exported model: the task metric
on the dev split (the test split is left for the report, so that choosing does not see it), latency
p50 at the target batch size through the deployment runtime (ONNX Runtime with the target threads),
and the size of the ONNX files.

Multi-fidelity (Li et al. 2018, Hyperband's successive halving; here as Optuna's median rule): the
distilled student is the cheap first rung. Its dev metric is compared with the students of the same
architecture that earlier trials distilled; a trial whose student is below their median stops there
(Optuna's ``PRUNED``), before pruning, quantization, export and timing are paid for.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import UserError
from ..metrics import LOWER_IS_BETTER
from ..runtime.backends import RuntimeConfig
from ..runtime.latency import LatencyConfig
from .space import PRECISION, PRECISIONS

RECIPE_HEADER = "# a search trial: `ernie-compress run THIS_FILE` rebuilds its model\n"
EXPORT_STAGE = "export"
STUDENT_STAGE = "student"
MIN_RUNG_PEERS = 2  # earlier students of the same architecture before the median rule stops a trial


@dataclass(frozen=True)
class SearchTarget:
    """What every trial shares: the teacher, the task, and how the candidates are measured."""

    teacher: Path
    task: str
    data: str | None
    metric: str  # the task's primary metric (higher is better)
    seed: int = 42
    threads: int | None = None  # training threads (the recipe's)
    runtime: RuntimeConfig = field(default_factory=RuntimeConfig)  # where latency is measured
    latency: LatencyConfig = field(default_factory=lambda: LatencyConfig(batch_sizes=(1,)))

    def __post_init__(self) -> None:
        if self.metric in LOWER_IS_BETTER:
            raise UserError(f"search maximizes the task metric; {self.task}'s is {self.metric} (causal LMs are not "
                            f"searched yet): use a classification or tagging task")


def _left_out(stage_values: dict[str, Any]) -> bool:
    """A stage is left out of a trial when a searched value of it is None ("no pruning")."""
    return any(v is None for v in stage_values.values())


def trial_recipe(target: SearchTarget, values: dict[str, dict[str, Any]], name: str) -> str:
    """The recipe YAML of a trial with the suggested ``values`` ({stage: {option: value}})."""
    import yaml

    stages: list[dict[str, Any]] = [{"distill": {"name": STUDENT_STAGE, "teacher": str(target.teacher),
                                                 **values.get("distill", {})}}]
    prune = values.get("prune", {})
    if prune and not _left_out(prune):
        stages.append({"prune": {"name": "pruned", **prune}})
    quantize = dict(values.get("quantize", {}))
    precision = quantize.pop(PRECISION, "fp32")
    if PRECISIONS[precision] is not None:
        stages.append({"quantize": {"name": precision, **PRECISIONS[precision], **quantize}})
    stages.append({"export": {"name": EXPORT_STAGE, "format": "onnx"}})
    doc: dict[str, Any] = {"name": name, "task": target.task}
    if target.data:
        doc["data"] = target.data
    doc["seed"] = target.seed
    if target.threads:
        doc["threads"] = target.threads
    doc["stages"] = stages
    return RECIPE_HEADER + yaml.safe_dump(doc, sort_keys=False, allow_unicode=True, default_flow_style=None)


def describe(values: dict[str, dict[str, Any]]) -> str:
    """A trial's values in a few words (progress lines, the report's table)."""
    parts = [f"{stage}.{option}={value}" for stage, options in values.items() for option, value in options.items()]
    return ", ".join(parts)


class RungStopped(Exception):
    """The first rung's student shows no promise (the median rule): the trial stops there."""

    def __init__(self, message: str, student_dev: float):
        super().__init__(message)
        self.student_dev = student_dev


@dataclass
class TrialOutcome:
    """What a finished trial measured (objectives and what the report shows beside them)."""

    accuracy: float  # the dev metric, in points
    latency: float  # p50 ms at the target batch size
    size: float  # MB of the ONNX files
    export: str
    recipe: str
    student_dev: float

    def objectives(self) -> dict[str, float]:
        return {"accuracy": self.accuracy, "latency": self.latency, "size": self.size}


def onnx_megabytes(export_dir: Path) -> float:
    """The size of the export's ONNX files (weights included), MB."""
    files = [p for p in (export_dir / "onnx").rglob("*") if p.is_file()]
    return sum(p.stat().st_size for p in files) / 1e6


def student_dev_metric(student_dir: Path, target: SearchTarget) -> float:
    """The distilled student's dev metric, points (the first rung)."""
    from ..evaluate import evaluate_checkpoint

    evaluation = evaluate_checkpoint(student_dir, target.task, target.data, split="dev")
    return 100 * evaluation.metrics[target.metric]


def run_trial(target: SearchTarget, values: dict[str, dict[str, Any]], run_dir: Path,
              rung_peers: list[float]) -> TrialOutcome:
    """Run one trial's recipe in ``run_dir`` and measure its export. ``rung_peers``: the dev metrics of
    the students of the same architecture that earlier trials distilled (the median rule's sample).
    Raises :class:`RungStopped` when the student is below their median."""
    import statistics

    from ..pipeline import RECIPE_FILE, run_parsed_recipe
    from ..recipe import parse_recipe
    from ..runtime.evaluate_export import EvaluateExportConfig, evaluate_export

    run_dir.mkdir(parents=True, exist_ok=True)
    text = trial_recipe(target, values, f"trial-{run_dir.name}")
    recipe = parse_recipe(text, f"{run_dir.name} recipe")
    seen: dict[str, float] = {}

    def after_stage(stage, result: dict[str, Any]) -> None:
        if stage.name != STUDENT_STAGE:
            return
        seen["student"] = student_dev_metric(run_dir / STUDENT_STAGE, target)
        if len(rung_peers) >= MIN_RUNG_PEERS and seen["student"] < statistics.median(rung_peers):
            raise RungStopped(f"student dev {target.metric} {seen['student']:.2f} below the median "
                              f"{statistics.median(rung_peers):.2f} of {len(rung_peers)} earlier students of its shape",
                              seen["student"])

    run_parsed_recipe(recipe, run_dir, after_stage=after_stage)
    export_dir = run_dir / EXPORT_STAGE
    evaluation = evaluate_export(EvaluateExportConfig(export_dir, runtime=target.runtime, latency=target.latency,
                                                      split="dev"))
    return TrialOutcome(accuracy=100 * evaluation.metrics[target.metric],
                        latency=float(evaluation.latency[0]["p50_ms"]), size=onnx_megabytes(export_dir),
                        export=str(export_dir), recipe=str(run_dir / RECIPE_FILE), student_dev=seen["student"])
