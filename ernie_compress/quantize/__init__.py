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
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..checkpoint import config_record, load_checkpoint, save_checkpoint
from ..models.layouts import check_layout, check_layout_name
from ..data.batching import encode_splits
from ..data.tasks import TaskSpec, load_task_for_model
from ..errors import UserError
from ..metrics import PRIMARY_METRIC, metric_delta
from ..models import model_from_state
from ..progress import note
from ..train import TrainConfig, clear_train_state, evaluate_split, resumable, train_model
from ..machine import cpu_has_vnni
from .scheme import SCALES_FILE, Int8Scheme, quantization_info

PTQ_OBSERVERS = ("abs_max", "percentile", "mse", "kl")


@dataclass(frozen=True)
class QuantizeConfig:
    checkpoint: Path
    out: Path
    qat: str | None = None  # "int8"
    ptq: str | None = None  # "int8"
    fp16: bool = False  # half-precision weights
    task: TaskSpec | None = None  # default: the checkpoint's task
    reduce_range: bool | None = None  # None: on unless the CPU has VNNI
    distill_from_parent: bool = False  # QAT: add logit KD from the FP32 parent
    kd_alpha: float = 0.5
    kd_temperature: float = 2.0
    calib_samples: int = 512  # PTQ: training examples run through the observers
    observer: str = "abs_max"  # PTQ activation observer
    percentile: float = 99.99  # with observer=percentile
    train: TrainConfig = field(default_factory=lambda: TrainConfig(epochs=1, learning_rate=5e-5))
    overwrite: bool = False
    resume: bool = False  # continue the training an interrupted run saved beside --out
    layout: str = "ours"  # checkpoint layout to write (models/layouts.py)

    def __post_init__(self) -> None:
        check_layout_name(self.layout)
        modes = [m for m in (self.qat, self.ptq, "fp16" if self.fp16 else None) if m is not None]
        if len(modes) != 1:
            raise UserError("pass exactly one of --qat int8, --ptq int8 and --fp16")
        if modes[0] not in ("int8", "fp16"):
            flag = "--qat" if self.qat is not None else "--ptq"
            raise UserError(f"{flag} {modes[0]} is not supported: only int8 "
                            f"(ONNX Runtime's CPU integer kernels are 8-bit)")
        if self.observer not in PTQ_OBSERVERS:
            raise UserError(f"--observer must be one of {', '.join(PTQ_OBSERVERS)}, got '{self.observer}'")
        if self.calib_samples < 1:
            raise UserError(f"--calib-samples must be >= 1, got {self.calib_samples}")
        if not 0 <= self.kd_alpha <= 1:
            raise UserError(f"--kd-alpha must be in [0, 1], got {self.kd_alpha}")
        if not 50 < self.percentile <= 100:
            raise UserError(f"--percentile must be in (50, 100], got {self.percentile}")

    @property
    def method(self) -> str:
        return "qat" if self.qat else "ptq" if self.ptq else "fp16"


def quantize_checkpoint(cfg: QuantizeConfig) -> dict[str, Any]:
    from .fake_quant import collect_scales, fake_quant_model, float_state

    start = time.perf_counter()
    parent = load_checkpoint(cfg.checkpoint)
    check_layout(parent.config, cfg.layout)
    if quantization_info(parent.config):
        raise UserError(f"{parent.path} is already quantized "
                        f"({quantization_info(parent.config).get('method')}); quantize its FP32 parent instead")
    task = load_task_for_model(cfg.task, parent.task, parent.config.labels)
    if cfg.fp16:
        return _quantize_fp16(cfg, parent, task, start)
    reduce_range = (not cpu_has_vnni()) if cfg.reduce_range is None else cfg.reduce_range
    scheme = Int8Scheme(method=cfg.method, weight_bits=7 if reduce_range else 8,
                        reduce_range=reduce_range,
                        activation_observer="moving_average_abs_max" if cfg.qat else cfg.observer)
    tokenizer = parent.tokenizer()
    splits = encode_splits(task, tokenizer, parent.config.labels, parent.max_seq_length)
    held_out = splits[task.held_out]
    metric = PRIMARY_METRIC[task.kind]

    fp32 = model_from_state(parent.config, parent.state, str(parent.path))
    parent_metrics = evaluate_split(fp32, held_out, task.kind)
    qmodel = fake_quant_model(model_from_state(parent.config, parent.state, str(parent.path)), scheme)

    if cfg.qat:
        from ..losses import hard_label_loss, logit_kd_loss

        loss = (logit_kd_loss(fp32, cfg.kd_alpha, cfg.kd_temperature, tokenizer.pad_id)
                if cfg.distill_from_parent else hard_label_loss)
        with resumable(cfg.out, cfg.resume) as state_dir:
            result = train_model(qmodel, splits["train"], splits.get("dev"), cfg.train, kind=task.kind,
                                 loss_fn=loss, description="qat int8", state_dir=state_dir, resume=cfg.resume)
        qmodel.set_state_dict(result.best_state)
        steps, steps_run, train_seconds = result.steps, result.steps_run, result.seconds
    else:
        from .ptq import calibrate_

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


def _quantize_fp16(cfg: QuantizeConfig, parent, task, start: float) -> dict[str, Any]:
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
