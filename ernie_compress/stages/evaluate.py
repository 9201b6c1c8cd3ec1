"""The ``evaluate`` stage: the task metric on held-out data, of a checkpoint (Paddle dygraph) or of
an export (on a runtime, with latency percentiles and throughput; ``runtime/evaluate_export.py``).
In a recipe it measures every variant of the run and writes the report (``report.evaluate_run``).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from ..data.task_options import TaskOptions
from ..errors import UserError
from ..evaluate import evaluate_checkpoint, SPLITS
from ..options import check_options, option
from ..results import CheckpointEvaluation, ExportEvaluation
from ..runtime.backends import RuntimeConfig, RuntimeOptions
from ..runtime.evaluate_export import SCORE_WITH, EvaluateExportConfig, evaluate_export
from ..runtime.generation_metrics import GenerationConfig
from ..runtime.latency import LatencyConfig
from ..runtime.manifest import MANIFEST_FILE
from .registry import register


def parse_batch_sizes(text: str) -> tuple[int, ...]:
    """``"1,32"`` -> ``(1, 32)``."""
    try:
        return tuple(int(x) for x in text.split(",") if x.strip())
    except ValueError:
        raise UserError(f"comma-separated integers expected, got '{text}'") from None


@dataclass(frozen=True, kw_only=True)
class EvaluateConfig(TaskOptions, RuntimeOptions):
    """``ernie-compress evaluate``: metric (and for an export latency/QPS) on held-out data; the
    runtime options apply to an export (a checkpoint runs in Paddle dygraph on cpu)."""

    path: Path = option(argument=True, scope="cli", help=(
        "A checkpoint directory (runs in Paddle dygraph) or an export directory (runs on a runtime, with "
        "latency and throughput)."))
    split: str | None = option(None, scope="cli", choices=SPLITS, help=(
        "Which split: train, dev or test (default: the task's held-out split)."))
    batch_sizes: tuple[int, ...] = option((1, 32), at_least=1, parse=parse_batch_sizes, cli_default="1,32",
                                          help="Export only: batch sizes to time, comma-separated.")
    seq_len: int = option(128, at_least=1, at_most=4096, help="Export only: sequence length for timing.")
    iterations: int = option(30, at_least=1, help="Export only: timed runs per batch size.")
    warmup: int = option(5, at_least=0, help="Export only: untimed runs first.")
    tensorrt: bool = option(False, help="Export only, gpu: use TensorRT (FP16).")
    mkldnn: bool = option(True, flag="--mkldnn/--no-mkldnn", help=(
        "Export only, paddle on cpu: oneDNN kernels (default) or plain kernels."))
    profile: bool = option(False, scope="cli", help="Export only: show where the time goes, per operator.")
    top: int = option(10, scope="cli", at_least=1, help="With --profile: how many operators to list.")
    batch_size: int = option(32, at_least=1, help="Examples per forward pass for the metric.")
    prompt_lengths: tuple[int, ...] = option((32, 128, 512), at_least=1, parse=parse_batch_sizes,
                                             cli_default="32,128,512", help=(
        "Export with a decoder (ERNIE 4.5 causal LM): prompt lengths to time the first token at, comma-separated."))
    decode_batch_sizes: tuple[int, ...] = option((1, 8), at_least=1, parse=parse_batch_sizes, cli_default="1,8",
                                                 help=("Export with a decoder: batch sizes to time decoding at "
                                                       "(prefill and decode steps timed apart)."))
    new_tokens: int = option(32, at_least=1, help="Export with a decoder: decode steps timed per batch size.")
    score_with: str = option("auto", choices=SCORE_WITH, help=(
        "Export of a causal LM: what the metric is computed through. model: onnx/model.onnx over whole "
        "sequences; decoder: onnx/decoder.onnx fed one token at a time through its KV cache (teacher "
        "forcing: what generation runs, its integer kernels and cache included); auto: the decoder where "
        "the export's KV cache is int8 or the export holds the decoder alone, else model."))

    def __post_init__(self) -> None:
        check_options(self)

    def runtime_config(self) -> RuntimeConfig:
        return RuntimeConfig(device=self.device, backend=self.backend, threads=self.threads,
                             tensorrt=self.tensorrt, mkldnn=self.mkldnn, profile=self.profile)

    def generation_config(self) -> GenerationConfig:
        return GenerationConfig(prompt_lengths=tuple(self.prompt_lengths), batch_sizes=tuple(self.decode_batch_sizes),
                                new_tokens=self.new_tokens)

    def latency_config(self) -> LatencyConfig:
        return LatencyConfig(batch_sizes=tuple(self.batch_sizes), seq_len=self.seq_len,
                             iterations=self.iterations, warmup=self.warmup)


@register("evaluate", EvaluateConfig)
def evaluate(cfg: EvaluateConfig) -> ExportEvaluation | CheckpointEvaluation:
    """An export through its runtime, or a checkpoint in Paddle dygraph (on cpu)."""
    data = None if cfg.data is None else str(cfg.data)
    if (cfg.path / MANIFEST_FILE).is_file():
        return evaluate_export(EvaluateExportConfig(
            export_dir=cfg.path, task=cfg.task, data=data, split=cfg.split, eval_batch_size=cfg.batch_size,
            runtime=cfg.runtime_config(), latency=cfg.latency_config(), top_ops=cfg.top,
            generation=cfg.generation_config(), score_with=cfg.score_with))
    if cfg.device != "cpu" or cfg.backend:
        raise UserError(f"{cfg.path} is a checkpoint (runs in Paddle dygraph on cpu); export it "
                        f"first to evaluate on --device/--backend")

    return evaluate_checkpoint(cfg.path, cfg.task, data, cfg.split, cfg.batch_size)
