"""What each command returns: one small typed result per command.

The fields are the contract between a command and its readers: the renderers (``render.py``), the
recipe runner (each stage's result file) and ``--json`` (``to_dict()``; the JSON keys are the field
names). A field holding a section that only some runs have (distill's report, export's INT8
details) is a ``details`` mapping whose keys ``to_dict()`` lifts to the top level, so the JSON stays
flat. Results can be read by key as well (``result["out"]``), the way recipe result files and older
callers read them.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from typing import Any


@dataclass(kw_only=True)
class Result:
    """Base: ``to_dict()`` for JSON, read access by key."""

    def to_dict(self) -> dict[str, Any]:
        data: dict[str, Any] = {}
        for f in fields(self):
            value = getattr(self, f.name)
            if f.name == "details":
                data.update(value)
            elif not (f.metadata.get("omit_if_none") and value is None):
                data[f.name] = value
        return data

    def __getitem__(self, key: str) -> Any:
        return self.to_dict()[key]

    def get(self, key: str, default: Any = None) -> Any:
        return self.to_dict().get(key, default)

    def __contains__(self, key: str) -> bool:
        return key in self.to_dict()


def _optional(default: Any = None) -> Any:
    """A field left out of ``to_dict()`` while it is None."""
    return field(default=default, metadata={"omit_if_none": True})


@dataclass(kw_only=True)
class _Trained(Result):
    """What every stage that trains reports of its training."""

    steps: int
    steps_run: int  # steps this invocation ran (fewer than ``steps`` after --resume)
    train_seconds: float
    samples_per_s: float | None


@dataclass(kw_only=True)
class TrainResult(_Trained):
    out: str
    task: str
    held_out_split: str
    metrics: dict[str, dict[str, float]]
    parameters: dict[str, int]
    stage: str = "train"


@dataclass(kw_only=True)
class PretrainResult(Result):
    out: str
    texts: int
    steps: int
    train_seconds: float
    samples_per_s: float | None
    parameters: dict[str, int]
    final_loss: float
    stage: str = "pretrain"


@dataclass(kw_only=True)
class _SmallerModel(_Trained):
    """A stage that makes a smaller model from a larger one and can time both (``--latency``)."""

    out: str
    task: str
    metric: str
    seconds: float
    details: dict[str, Any]  # the stage's report: parameters and metrics before and after, ...
    latency: dict[str, Any] | None = _optional()  # --latency: both models on ONNX Runtime
    speedup: dict[str, float] | None = _optional()


@dataclass(kw_only=True)
class DistillResult(_SmallerModel):
    stage: str = "distill"


@dataclass(kw_only=True)
class PruneResult(_SmallerModel):
    parent: str
    stage: str = "prune"


@dataclass(kw_only=True)
class QuantizeResult(_Trained):
    stage: str  # quantize-qat, quantize-ptq, quantize-fp16, quantize-weight-only
    out: str
    task: str
    scheme: dict[str, Any]
    metrics: dict[str, dict[str, float]]
    parent_metrics: dict[str, dict[str, float]]
    delta_points: float | None
    quantized_layers: int
    seconds: float


@dataclass(kw_only=True)
class ExportResult(Result):
    out: str
    format: str
    precision: str
    files: dict[str, Any]
    verification: dict[str, Any]
    reference_metrics: dict[str, float] | None
    seconds: float
    details: dict[str, Any] = field(default_factory=dict)  # int8 / fp16 conversion details
    stage: str = "export"


@dataclass(kw_only=True)
class CheckpointEvaluation(Result):
    """``evaluate CKPT``: the metric in Paddle dygraph."""

    path: str
    task: str
    split: str
    metrics: dict[str, float]
    seconds: float
    backend: str = "paddle-dygraph"
    device: str = "cpu"


@dataclass(kw_only=True)
class ExportEvaluation(Result):
    """``evaluate EXPORT``: the metric through a runtime, latency, and for a decoder generation speed."""

    export: str
    task: str
    split: str
    backend: str
    device: str
    providers: list[str] | None
    precision: str | None
    metrics: dict[str, float]
    primary_metric: str
    reference_metrics: dict[str, float] | None
    delta_points: float | None
    eval_seconds: float
    latency: list[dict[str, Any]]
    generation: dict[str, Any] | None
    profile: list[dict[str, Any]] | None
    threads: int | None
    example_stats: Any = _optional()  # numpy per-example statistics (benchmarks' bootstrap intervals)
    scored_with: str | None = _optional()  # the metric came from the KV-cache decoder, not model.onnx


@dataclass(kw_only=True)
class SearchResult(Result):
    """``search``: the study, its Pareto frontier and the point chosen inside the budget."""

    out: str
    study: str
    storage: str
    objectives: list[str]
    metric: str
    teacher_dev: float
    trials: dict[str, int]  # by state: complete, pruned (stopped at the first rung), fail, running
    frontier: list[dict[str, Any]]
    chosen: dict[str, Any] | None
    report: str
    seconds: float
    stage: str = "search"


@dataclass(kw_only=True)
class _ServedLoad(Result):
    """What both kinds of ``bench`` report of the load they served."""

    export: str
    backend: str
    device: str
    concurrency: int
    requests: int
    max_batch: int


@dataclass(kw_only=True)
class BenchResult(_ServedLoad):
    """``bench EXPORT``: dynamic batching against one request per run."""

    max_wait_ms: float
    no_batching: dict[str, float]
    dynamic_batching: dict[str, float]
    speedup_qps: float
    outputs_max_abs_diff: float
    predictions_agree: float


@dataclass(kw_only=True)
class GenerationBenchResult(_ServedLoad):
    """``bench EXPORT`` of a decoder: continuous batching against one request at a time."""

    new_tokens: int
    one_at_a_time: dict[str, float]
    continuous_batching: dict[str, float]
    speedup_tokens_per_s: float
    same_tokens: float
    mode: str = "generation"


@dataclass(kw_only=True)
class GenerationResult(Result):
    """``generate``: the continuation of every prompt and its timings."""

    path: str
    runs_on: str
    temperature: float
    top_p: float
    seed: int
    results: list[dict[str, Any]]


@dataclass(kw_only=True)
class RunResult(Result):
    """``run`` / ``demo``: every stage's result (as its result file holds it) and the report."""

    run_dir: str
    recipe: str
    stages: dict[str, dict[str, Any]]
    seconds: float
    report: dict[str, Any] | None


@dataclass(kw_only=True)
class CheckpointInfo(Result):
    """``info CKPT``."""

    path: str
    model_type: str
    architecture: str
    layers: int
    hidden_size: int
    vocab_size: int
    heads_per_layer: list[int]
    ffn_per_layer: list[int]
    labels: list[str]
    task: dict[str, Any] | None
    parameters: dict[str, int]
    size_bytes: int
    weights_sha256: str
    lineage: list[dict[str, Any]]
    head_importance: Any
    experts_per_layer: list[int] | None = _optional()  # mixture of experts: routed experts (0: a dense layer)
    experts_per_token: int | None = _optional()  # ... and how many of them each token uses (moe_k)
    config_only: bool | None = _optional()  # True: described from config.json or a preset, no weights read
