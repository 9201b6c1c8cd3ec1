"""The ``quantize`` stage: INT8 by quantization-aware training (``--qat int8``) or post-training
calibration (``--ptq int8``), or FP16 weights (``--fp16``).

INT8 writes a checkpoint holding FP32 weights (QAT-trained, or the parent's for PTQ) plus the
learned scales (``quantization_scales.json``, see ``scheme.py``); ``export --format onnx`` turns it
into an INT8 QDQ model for ONNX Runtime that uses exactly those scales. FP16 stores the weights in
half precision; its export is an ONNX model with FP16 weights and FP32 inputs/outputs (GPU/NPU
deployment; also runs, for the accuracy check, in ONNX Runtime on CPU). Every run ends by
evaluating the result on held-out data against its parent.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..data.task_options import TaskOptions
from ..losses import hard_label_loss, logit_kd_loss
from ..machine import cpu_has_vnni
from ..metrics import metric_delta
from ..models import model_from_state
from ..models.layouts import check_layout
from ..options import check_options, option
from ..progress import note
from ..quantize.fake_quant import collect_scales, fake_quant_model, float_state
from ..quantize.ptq import calibrate_
from ..quantize.scheme import SCALES_FILE, Int8Scheme, quantized_linear_names
from ..quantize.gptq import collect_hessians, gptq_quantize
from ..quantize.weight_only import BITS, HEAD_BITS, check_group_size, dequantize, lm_head_weight, quantize_rtn
from ..training_loop import LoopConfig, evaluate_split
from ..results import QuantizeResult
from .common import CheckpointOutput, ParentKDOptions, RunOptions, TrainingOptions
from .registry import register
from .skeleton import finish, refuse_existing_output, samples_per_second, start_from, train_resumably

PTQ_OBSERVERS = ("abs_max", "percentile", "mse", "kl")
FP16_SCHEME = {"method": "fp16", "dtype": "fp16"}  # config.json's quantization entry for FP16
INT8_ONLY = "only int8 (ONNX Runtime's CPU integer kernels are 8-bit)"


@dataclass(frozen=True, kw_only=True)
class QuantizeOptions(CheckpointOutput, TaskOptions, RunOptions):
    """What every quantization method shares: the FP32 parent, the task it is checked on, the output."""

    checkpoint: Path = option(argument=True, scope="cli", source="from", help="The FP32 checkpoint to quantize.")


@dataclass(frozen=True, kw_only=True)
class IntegerOptions:
    reduce_range: bool | None = option(None, flag="--reduce-range/--full-range", help=(
        "7-bit weights (needed on CPUs without VNNI) or 8-bit. Default: by this CPU."))


@dataclass(frozen=True, kw_only=True)
class QATConfig(QuantizeOptions, IntegerOptions, ParentKDOptions, TrainingOptions):
    """``quantize --qat int8``: fake-quantized weights (per channel) and activations, fine-tuned."""

    qat: str = option("int8", selects=True, choices=("int8",), help=(
        "Quantization-aware training to this type (int8): fake-quantized weights (per channel) and "
        f"activations, fine-tuned on the task; {INT8_ONLY}."))
    epochs: int = option(1, at_least=0, help="QAT: passes over the training data.")
    lr: float = option(5e-5, above=0, help="QAT: peak learning rate.")
    distill_from_parent: bool = option(False, flag="--distill-from-parent/--no-distill", help=(
        "QAT: add logit distillation from the FP32 parent to the loss."))
    method = "qat"

    def __post_init__(self) -> None:
        check_options(self)
        self.check_accelerator()

    @property
    def train(self) -> LoopConfig:
        return self.loop_config(self.epochs, self.lr)


@dataclass(frozen=True, kw_only=True)
class CalibrationOptions:
    calib_samples: int = option(512, at_least=1, help="PTQ, and --weight-only with --method gptq: training "
                                                      "examples to calibrate on.")


@dataclass(frozen=True, kw_only=True)
class PTQConfig(QuantizeOptions, IntegerOptions, CalibrationOptions):
    """``quantize --ptq int8``: scales from calibration samples, no training."""

    ptq: str = option("int8", selects=True, choices=("int8",), help=(
        f"Post-training quantization to this type (int8) from calibration samples; no training; {INT8_ONLY}."))
    observer: str = option("abs_max", choices=PTQ_OBSERVERS, help="PTQ activation observer: abs_max, percentile, "
                                                                  "mse or kl.")
    percentile: float = option(99.99, above=50, at_most=100, help="PTQ with --observer percentile: which percentile.")
    method = "ptq"

    def __post_init__(self) -> None:
        check_options(self)


@dataclass(frozen=True, kw_only=True)
class FP16Config(QuantizeOptions):
    """``quantize --fp16``: half-precision weights."""

    fp16: bool = option(True, selects=True, flag="--fp16", help=(
        "Half-precision weights, for GPU/NPU deployment (ONNX FP16, TensorRT FP16)."))
    method = "fp16"

    def __post_init__(self) -> None:
        check_options(self)


@dataclass(frozen=True, kw_only=True)
class WeightOnlyConfig(QuantizeOptions, CalibrationOptions):
    """``quantize --weight-only int8|int4``: integer weights, float activations (for decoding)."""

    weight_only: str = option("int4", selects=True, choices=tuple(BITS), help=(
        "Weight-only quantization to int8 (per output channel) or int4 (groups of --group-size input rows) "
        "by --method; activations stay float; a causal LM's output head gets int8 per vocabulary entry; the "
        "checkpoint holds the dequantized weights."))
    group_size: int | None = option(None, at_least=1, help=(
        "Weight-only: input rows per scale (default: the whole column for int8, 32 for int4); must divide "
        "every quantized Linear's input width."))
    method: str = option("rtn", choices=("rtn", "gptq"), help=(
        "Weight-only: rtn (round to nearest) or gptq (rounding errors corrected from calibration inputs, "
        "Frantar et al. 2023)."))

    def __post_init__(self) -> None:
        check_options(self)

    @property
    def groups(self) -> int | None:
        return self.group_size or (None if self.weight_only == "int8" else 32)


QuantizeConfig = QATConfig | PTQConfig | FP16Config | WeightOnlyConfig


@register("quantize", QATConfig, PTQConfig, FP16Config, WeightOnlyConfig)
def quantize_checkpoint(cfg: QuantizeConfig) -> QuantizeResult:
    started = time.perf_counter()
    refuse_existing_output(cfg)
    fp16 = isinstance(cfg, FP16Config)
    no_training = fp16 or (isinstance(cfg, WeightOnlyConfig) and cfg.method == "rtn")
    start = start_from(cfg.checkpoint, cfg.task_spec, fp32_for="quantize its FP32 parent instead",
                       splits=("dev", "test") if no_training else ("train", "dev", "test"))
    parent, task, metric = start.parent, start.task, start.metric
    check_layout(parent.config, cfg.layout)
    steps = steps_run = 0  # only QAT trains
    train_seconds, throughput = 0.0, None
    if fp16:
        state = {k: v.astype(np.float16) if v.dtype.kind == "f" else v for k, v in parent.state.items()}
        qmodel, scheme, extra_files = model_from_state(parent.config, state, str(parent.path)), FP16_SCHEME, None
    elif isinstance(cfg, WeightOnlyConfig):
        state, scheme = _weight_only(cfg, start)
        qmodel, extra_files = model_from_state(parent.config, state, str(parent.path)), None
    else:
        reduce_range = (not cpu_has_vnni()) if cfg.reduce_range is None else cfg.reduce_range
        int8 = Int8Scheme(method=cfg.method, weight_bits=7 if reduce_range else 8, reduce_range=reduce_range,
                          activation_observer="moving_average_abs_max" if isinstance(cfg, QATConfig) else cfg.observer)
        scheme = int8.to_dict()
        qmodel = fake_quant_model(model_from_state(parent.config, parent.state, str(parent.path)), int8)
        if isinstance(cfg, QATConfig):
            loss = (logit_kd_loss(start.model, cfg.kd_weight, cfg.kd_temperature, start.tokenizer.pad_id)
                    if cfg.distill_from_parent else hard_label_loss)
            result = train_resumably(qmodel, start.splits, task.kind, cfg, "qat int8", loss_fn=loss)
            steps, steps_run, train_seconds = result.steps, result.steps_run, result.seconds
            throughput = samples_per_second(result, cfg.batch_size)
        else:
            calibrate_(qmodel, start.splits["train"], cfg.calib_samples, cfg.observer, cfg.percentile)
        qmodel.eval()
        scales = collect_scales(qmodel)
        state, extra_files = float_state(qmodel), {SCALES_FILE: scales}
    metrics = evaluate_split(qmodel, start.held_out, task.kind)
    delta = metric_delta(metric, metrics[metric], start.metrics[metric])

    config = parent.config.replace(extra=dict(parent.config.extra))
    config.extra["quantization"] = scheme
    name = "quantize-weight-only" if isinstance(cfg, WeightOnlyConfig) else f"quantize-{cfg.method}"
    out = finish(cfg, config, state, start.tokenizer, {
        "name": name, "metrics": {task.held_out: metrics, f"parent_{task.held_out}": start.metrics},
        "delta_points": delta, "steps": steps, "seconds": round(time.perf_counter() - started, 1)},
        parent, extra_files)
    what = ("fp16 weights (Paddle, FP32 compute)" if fp16 else
            f"weight-only {scheme['dtype']} ({cfg.method})" if isinstance(cfg, WeightOnlyConfig) else
            f"{cfg.method} int8 (fake-quant, Paddle)")
    note(f"{what}: {metric} {metrics[metric]:.4f} vs FP32 parent {start.metrics[metric]:.4f} ({delta:+.2f} points)")
    quantized = (sum(1 for v in state.values() if v.dtype == np.float16) if fp16 else
                 scheme["linears"] if isinstance(cfg, WeightOnlyConfig) else len(extra_files[SCALES_FILE]))
    return QuantizeResult(stage=name, out=str(out), task=task.spec.name, scheme=scheme,
                          metrics={task.held_out: metrics}, parent_metrics={task.held_out: start.metrics},
                          delta_points=delta, quantized_layers=quantized, steps=steps, steps_run=steps_run,
                          train_seconds=round(train_seconds, 2), samples_per_s=throughput,
                          seconds=round(time.perf_counter() - started, 1))


def _weight_only(cfg: WeightOnlyConfig, start) -> tuple[dict, dict]:
    """The parent's weights with every quantized Linear on ``cfg``'s grid (``--method``: rounded
    to nearest, or by GPTQ), dequantized, and the scheme config.json records."""
    bits, group = BITS[cfg.weight_only], cfg.groups
    state = dict(start.parent.state)
    names = quantized_linear_names(start.model)
    for name in names:
        check_group_size(name, state[f"{name}.weight"].shape[0], group)
    if cfg.method == "gptq":
        train = start.splits["train"]
        order = np.random.default_rng(0).permutation(len(train))[:cfg.calib_samples]  # as PTQ samples
        batches = [train.rows(np.sort(order[i:i + 32])) for i in range(0, len(order), 32)]
        hessians = collect_hessians(start.model, names, batches, start.tokenizer.pad_id)
    weights = {}
    for name in names:
        key = f"{name}.weight"
        codes, scales = (gptq_quantize(state[key], hessians[name], bits, group) if cfg.method == "gptq"
                         else quantize_rtn(state[key], bits, group))
        state[key] = dequantize(codes, scales, group)
        weights[key] = {"bits": bits, "group_size": group}
    head = lm_head_weight(start.parent.config)
    if head is not None:  # int8 per vocabulary entry (see quantize/weight_only.py)
        key, transposed = head
        matrix = state[key].T if transposed else state[key]  # [hidden, vocab]
        matrix = dequantize(*quantize_rtn(matrix, HEAD_BITS, None), None)
        state[key] = np.ascontiguousarray(matrix.T if transposed else matrix)
        weights[key] = {"bits": HEAD_BITS, "group_size": None, "transposed": transposed}
    return state, {"method": f"weight_only_{cfg.method}", "dtype": cfg.weight_only, "weight_bits": bits,
                   "group_size": group, "linears": len(names), "weights": weights}
