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
from typing import Any

from ..checkpoint import config_record, load_checkpoint, save_checkpoint
from ..data.encoding import encode_splits
from ..data.tasks import load_task_for_model
from ..errors import UserError
from ..losses import hard_label_loss, logit_kd_loss
from ..machine import cpu_has_vnni
from ..metrics import PRIMARY_METRIC, metric_delta
from ..models import model_from_state
from ..models.layouts import check_layout
from ..options import check_options, option
from ..progress import note
from ..quantize.fake_quant import collect_scales, fake_quant_model, float_state
from ..quantize.ptq import calibrate_
from ..quantize.scheme import SCALES_FILE, Int8Scheme, quantization_info
from ..training_loop import LoopConfig, clear_train_state, evaluate_split, resumable, train_model
from .common import CheckpointOutput, ParentKDOptions, RunOptions, TaskOptions, TrainingOptions
from .registry import register

PTQ_OBSERVERS = ("abs_max", "percentile", "mse", "kl")


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

    @property
    def train(self) -> LoopConfig:
        return self.loop_config(self.epochs, self.lr)


@dataclass(frozen=True, kw_only=True)
class PTQConfig(QuantizeOptions, IntegerOptions):
    """``quantize --ptq int8``: scales from calibration samples, no training."""

    ptq: str = option("int8", selects=True, choices=("int8",), help=(
        f"Post-training quantization to this type (int8) from calibration samples; no training; {INT8_ONLY}."))
    calib_samples: int = option(512, at_least=1, help="PTQ: training examples to calibrate on.")
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


QuantizeConfig = QATConfig | PTQConfig | FP16Config


@register("quantize", QATConfig, PTQConfig, FP16Config, summary="INT8 quantization (QAT or PTQ) or FP16 weights; ends with the held-out metric against the FP32 parent.")
def quantize_checkpoint(cfg: QuantizeConfig) -> dict[str, Any]:
    start = time.perf_counter()
    parent = load_checkpoint(cfg.checkpoint)
    check_layout(parent.config, cfg.layout)
    if quantization_info(parent.config):
        raise UserError(f"{parent.path} is already quantized "
                        f"({quantization_info(parent.config).get('method')}); quantize its FP32 parent instead")
    task = load_task_for_model(cfg.task_spec, parent.task, parent.config.labels)
    if isinstance(cfg, FP16Config):
        return _quantize_fp16(cfg, parent, task, start)
    reduce_range = (not cpu_has_vnni()) if cfg.reduce_range is None else cfg.reduce_range
    scheme = Int8Scheme(method=cfg.method, weight_bits=7 if reduce_range else 8,
                        reduce_range=reduce_range,
                        activation_observer="moving_average_abs_max" if isinstance(cfg, QATConfig) else cfg.observer)
    tokenizer = parent.tokenizer()
    splits = encode_splits(task, tokenizer, parent.config.labels, parent.max_seq_length)
    held_out = splits[task.held_out]
    metric = PRIMARY_METRIC[task.kind]

    fp32 = model_from_state(parent.config, parent.state, str(parent.path))
    parent_metrics = evaluate_split(fp32, held_out, task.kind)
    qmodel = fake_quant_model(model_from_state(parent.config, parent.state, str(parent.path)), scheme)

    if isinstance(cfg, QATConfig):
        loss = (logit_kd_loss(fp32, cfg.kd_weight, cfg.kd_temperature, tokenizer.pad_id)
                if cfg.distill_from_parent else hard_label_loss)
        with resumable(cfg.out, cfg.resume) as state_dir:
            result = train_model(qmodel, splits["train"], splits.get("dev"), cfg.train, kind=task.kind,
                                 loss_fn=loss, description="qat int8", state_dir=state_dir, resume=cfg.resume)
        qmodel.set_state_dict(result.best_state)
        steps, steps_run, train_seconds = result.steps, result.steps_run, result.seconds
    else:
        calibrate_(qmodel, splits["train"], cfg.calib_samples, cfg.observer, cfg.percentile)
        steps, steps_run, train_seconds = 0, 0, 0.0
    qmodel.eval()
    metrics = evaluate_split(qmodel, held_out, task.kind)
    scales = collect_scales(qmodel)
    delta = metric_delta(metric, metrics[metric], parent_metrics[metric])

    config = parent.config.replace(extra=dict(parent.config.extra))
    config.extra["quantization"] = scheme.to_dict()
    stage = {"name": f"quantize-{cfg.method}", "config": config_record(cfg),
             "metrics": {task.held_out: metrics, f"parent_{task.held_out}": parent_metrics},
             "delta_points": delta, "steps": steps, "seconds": round(time.perf_counter() - start, 1)}
    out = save_checkpoint(cfg.out, config, float_state(qmodel), tokenizer, stage, parent=parent,
                          overwrite=cfg.overwrite, extra_files={SCALES_FILE: scales}, layout=cfg.layout)
    clear_train_state(cfg.out)
    note(f"{cfg.method} int8 (fake-quant, Paddle): {metric} {metrics[metric]:.4f} vs FP32 parent "
         f"{parent_metrics[metric]:.4f} ({delta:+.2f} points)")
    return {"stage": f"quantize-{cfg.method}", "out": str(out), "task": task.spec.name,
            "scheme": scheme.to_dict(), "metrics": {task.held_out: metrics},
            "parent_metrics": {task.held_out: parent_metrics}, "delta_points": delta,
            "quantized_layers": len(scales), "steps": steps, "steps_run": steps_run, "train_seconds": round(train_seconds, 1),
            "seconds": round(time.perf_counter() - start, 1)}


def _quantize_fp16(cfg: FP16Config, parent, task, start: float) -> dict[str, Any]:
    """Round every floating-point weight to FP16 and measure what that costs on held-out data."""
    import numpy as np

    tokenizer = parent.tokenizer()
    held_out = encode_splits(task, tokenizer, parent.config.labels, parent.max_seq_length,
                             names=(task.held_out,))[task.held_out]
    metric = PRIMARY_METRIC[task.kind]
    parent_metrics = evaluate_split(model_from_state(parent.config, parent.state, str(parent.path)),
                                    held_out, task.kind)
    state = {k: v.astype(np.float16) if v.dtype.kind == "f" else v for k, v in parent.state.items()}
    metrics = evaluate_split(model_from_state(parent.config, state, str(parent.path)), held_out, task.kind)
    delta = metric_delta(metric, metrics[metric], parent_metrics[metric])
    config = parent.config.replace(extra=dict(parent.config.extra))
    config.extra["quantization"] = {"method": "fp16", "dtype": "fp16"}
    stage = {"name": "quantize-fp16", "config": config_record(cfg),
             "metrics": {task.held_out: metrics, f"parent_{task.held_out}": parent_metrics},
             "delta_points": delta, "seconds": round(time.perf_counter() - start, 1)}
    out = save_checkpoint(cfg.out, config, state, tokenizer, stage, parent=parent, overwrite=cfg.overwrite,
                          layout=cfg.layout)
    note(f"fp16 weights (Paddle, FP32 compute): {metric} {metrics[metric]:.4f} vs FP32 parent "
         f"{parent_metrics[metric]:.4f} ({delta:+.2f} points)")
    return {"stage": "quantize-fp16", "out": str(out), "task": task.spec.name,
            "scheme": config.extra["quantization"], "metrics": {task.held_out: metrics},
            "parent_metrics": {task.held_out: parent_metrics}, "delta_points": delta,
            "quantized_layers": sum(1 for v in state.values() if v.dtype == np.float16), "steps": 0,
            "train_seconds": 0.0, "seconds": round(time.perf_counter() - start, 1)}
