"""The ``quantize`` stage: INT8 by quantization-aware training (``--qat int8``) or post-training
calibration (``--ptq int8``), weight-only INT8/INT4 (``--weight-only``, rounded to nearest or by
GPTQ), or FP16 weights (``--fp16``).

INT8 writes a checkpoint holding FP32 weights (QAT-trained, or the parent's for PTQ) plus the
learned scales (``quantization_scales.json``, see ``scheme.py``); ``export --format onnx`` turns it
into an INT8 QDQ model for ONNX Runtime that uses exactly those scales. FP16 stores the weights in
half precision; its export is an ONNX model with FP16 weights and FP32 inputs/outputs (GPU/NPU
deployment; also runs, for the accuracy check, in ONNX Runtime on CPU). Weight-only keeps the
dequantized weights (``quantize/weight_only.py``); in a mixture-of-experts model every routed and
shared expert is quantized (GPTQ: each routed expert from the calibration tokens routed to it, RTN
for an expert that gets fewer than ``--min-expert-tokens``) and the router stays FP32. Every run ends
by evaluating the result on held-out data against its parent.

One runner per method, registered by its config type (:func:`runs`): it gets the shared start
(parent, task, splits) and returns what it made (:class:`Quantized`); :func:`quantize_checkpoint`
looks the runner up and hands its output to the shared finish (evaluation, checkpoint, lineage,
result). A new method is a config class, a runner, and, where it deploys differently from the
existing schemes, an entry in ``quantize/registry.py`` with its export path in ``stages/export.py``.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from ..checkpoint import config_record, save_sharded_checkpoint
from ..data.encoding import encode_splits
from ..data.task_options import TaskOptions
from ..data.tasks import load_task_for_model
from ..distributed import broadcast_arrays, sum_across_ranks, world
from ..errors import UserError
from ..lazy_checkpoint import open_checkpoint
from ..losses import hard_label_loss, logit_kd_loss
from ..machine import cpu_has_vnni, peak_resident_bytes
from ..metrics import is_better, metric_delta
from ..models import model_from_state
from ..models.families import family_of
from ..models.layouts import check_layout
from ..models.stored_codes import STORAGE_HELP, STORAGES
from ..options import check_options, fail, option
from ..paddle_env import import_paddle
from ..progress import note, progress_bar
from ..shard_progress import PROGRESS_FILE, ShardProgress, fingerprint_tag
from ..quantize import awq, smoothquant
from ..quantize.fake_quant import collect_scales, fake_quant_model, float_state
from ..quantize.ptq import calibrate_
from ..quantize.scheme import SCALES_FILE, Int8Scheme, quantized_linear_names
from ..quantize.calibration_ranks import my_batches, solve_divided
from ..quantize.gptq import calibration_batches, collect_hessians, gptq_roundings
from ..quantize.sequential import (GPTQSettings, SavedWalk, SequentialRecord, gptq_memory_need, layer_seconds,
                                  stream_gptq)
from ..quantize.streaming import (check_disk, check_streamable, memory_need, quantized_linears, scheme_weights,
                                  stream_rtn)
from ..quantize.weight_only import (BITS, HeadGrid, check_group_sizes, check_head, quantize_rtn, round_head_,
                                   round_linears_, store_codes_)
from ..training_loop import LoopConfig, TrainResult, clear_train_state, evaluate_split, resumable
from ..results import QuantizeResult
from .common import (CheckpointOutput, ParentKDOptions, ProcessOptions, ResumeOption, RunOptions, TokenizerOption,
                     TrainingOptions)
from .registry import register
from .skeleton import (Start, finish, refuse_existing_output, refuse_quantized, samples_per_second, start_from,
                       train_resumably)

PTQ_OBSERVERS = ("abs_max", "percentile", "mse", "kl")
FP16_SCHEME = {"method": "fp16", "dtype": "fp16"}  # config.json's quantization entry for FP16
INT8_ONLY = "only int8 (ONNX Runtime's CPU integer kernels are 8-bit)"


@dataclass(frozen=True, kw_only=True)
class QuantizeOptions(CheckpointOutput, TokenizerOption, TaskOptions, RunOptions):
    """What every quantization method shares: the FP32 parent, the task it is checked on, the output."""

    checkpoint: Path = option(argument=True, scope="cli", source="from", help="The FP32 checkpoint to quantize.")
    reads_train: ClassVar[bool] = True  # the method trains or calibrates on the training split


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
    reads_train: ClassVar[bool] = False

    def __post_init__(self) -> None:
        check_options(self)


# -- weight-only roundings (``--weight-only ... --method``) ---------------------------------------

Rounder = Callable[[np.ndarray], tuple[np.ndarray, np.ndarray]]  # weight [in, out] -> codes, scales


@dataclass(frozen=True)
class Plan:
    """How a weight-only ``--method`` rounds each quantized Linear."""

    roundings: dict[str, tuple[str, Rounder]]  # Linear name -> (the rounding it gets: "gptq", "awq" or "rtn", its function)
    experts: dict[str, dict[str, Any]] | None = None  # GPTQ: per routed expert {"tokens": calibration tokens it
    # got, "needed": the threshold, "starved": True when fewer (it is rounded to nearest instead)}
    replaced: dict[str, np.ndarray] | None = None  # AWQ: weights with the smoothing scales folded in (before rounding)
    record: dict[str, Any] | None = None  # what the scheme records besides the roundings (AWQ's search)


@dataclass(frozen=True)
class Rounding:
    """A weight-only ``--method``: ``prepare(cfg, start, names)`` plans how each named Linear's
    weight is put on the grid."""

    prepare: Callable[[Any, Start, list[str]], Plan]
    calibrates: bool  # reads ``--calib-samples`` training examples


def _rtn(cfg, start: Start, names: list[str]) -> Plan:
    """Round to nearest: every weight on its own (``quantize/weight_only.py``)."""
    rtn = ("rtn", lambda weight: quantize_rtn(weight, BITS[cfg.weight_only], cfg.groups))
    return Plan(dict.fromkeys(names, rtn))


def _gptq(cfg, start: Start, names: list[str]) -> Plan:
    """GPTQ (Frantar et al. 2023, ``quantize/gptq.py``): rounding errors corrected with the input
    second moments of ``cfg.calib_samples`` training examples, taken from the FP32 parent; a routed
    expert that receives fewer calibration tokens than ``cfg.min_expert_tokens`` is rounded to nearest."""
    batches = my_batches(calibration_batches(start.splits["train"], cfg.calib_samples))  # all, with one rank
    seen = collect_hessians(start.model, names, batches, start.tokenizer.pad_id,  # summed over the ranks
                            skip_starved=True, min_expert_tokens=cfg.min_expert_tokens)
    layers = dict(start.model.named_sublayers())
    widths = {name: layers[name].weight.shape[0] for name in names}
    roundings, experts = gptq_roundings(family_of(start.model.config), names, seen, widths, BITS[cfg.weight_only],
                                        cfg.groups, cfg.min_expert_tokens)
    return Plan(solve_divided(roundings, start.parent.state, cfg.groups), experts)


def _awq(cfg, start: Start, names: list[str]) -> Plan:
    """AWQ (Lin et al. 2024, ``quantize/awq.py``): per edge of the family's smoothing map, input-channel
    scales searched on the output error over ``cfg.calib_samples`` training examples (statistics from the
    FP32 parent) and folded into the weights; then every Linear rounded to nearest."""
    config = start.model.config
    family = family_of(config)
    edges = family.smoothing_edges(config, names)
    consumers = sorted({name for edge in edges for name in edge.layers})
    batches = my_batches(calibration_batches(start.splits["train"], cfg.calib_samples))  # all, with one rank
    seen = collect_hessians(start.model, consumers, batches, start.tokenizer.pad_id)  # summed over the ranks
    bits, group = BITS[cfg.weight_only], cfg.groups
    rtn = lambda weight: quantize_rtn(weight, bits, group)  # noqa: E731
    state, searches = dict(start.parent.state), []
    with progress_bar(len(edges), "awq search") as bar:
        for edge in edges:
            weights = [state[f"{name}.weight"].astype(np.float64) for name in edge.layers]  # [in, out]
            columns, index = family.smoothing_columns(config, edge, weights[0].shape[0])
            found, scales = awq.search_edge(edge, weights, [seen.hessians[n] for n in edge.layers],
                                            [seen.tokens[n] for n in edge.layers], rtn, index, int(index.max()) + 1)
            awq.fold_scales_(state, edge, scales, columns, index)
            searches.append(found)
            bar.advance({"alpha": found.alpha})
    replaced = {name: value for name, value in state.items() if value is not start.parent.state[name]}
    gain = [f.loss / f.rtn_loss for f in searches if f.rtn_loss > 0]
    record = {"awq": {"edges": len(edges), "grid": awq.AWQ_GRID,
                      "alpha": {f.edge.prev: f.alpha for f in searches},
                      "error_vs_rtn_median": float(np.median(gain)) if gain else None}}
    return Plan({name: ("awq" if name in consumers else "rtn", rtn) for name in names}, replaced=replaced, record=record)


ROUNDINGS = {"rtn": Rounding(_rtn, calibrates=False), "gptq": Rounding(_gptq, calibrates=True),
             "awq": Rounding(_awq, calibrates=True)}


@dataclass(frozen=True, kw_only=True)
class WeightOnlyConfig(QuantizeOptions, CalibrationOptions, ProcessOptions, ResumeOption):
    """``quantize --weight-only int8|int4``: integer weights, float activations (for decoding)."""

    weight_only: str = option("int4", selects=True, choices=tuple(BITS), help=(
        "Weight-only quantization to int8 (per output channel) or int4 (groups of --group-size input rows) "
        "by --method; activations stay float; a causal LM's output head is rounded to nearest as --head says; "
        "the checkpoint holds the dequantized weights (or their codes: --store)."))
    head: str = option("int8", choices=tuple(BITS), help=(
        "Weight-only: a causal LM's output head (the tied embedding table included) in int8 per vocabulary "
        "entry, or int4 in groups of 32 hidden units (onnxruntime-genai's default: a smaller file and a "
        "faster decode step; the head is a third of ERNIE-4.5-0.3B's weights). Always rounded to nearest."))
    group_size: int | None = option(None, at_least=1, help=(
        "Weight-only: input rows per scale (default: the whole column for int8, 32 for int4); must divide "
        "every quantized Linear's input width."))
    method: str = option("rtn", choices=tuple(ROUNDINGS), help=(
        "Weight-only: rtn (round to nearest), gptq (rounding errors corrected from calibration inputs, "
        "Frantar et al. 2023), or awq (input-channel scales searched on calibration inputs and folded into "
        "the feeding norm or Linear, then round to nearest: Lin et al. 2024; decoders, in memory)."))
    min_expert_tokens: int | None = option(None, at_least=1, help=(
        "Weight-only GPTQ of a mixture-of-experts model: a routed expert that receives fewer calibration "
        "tokens than this is rounded to nearest (RTN) instead, since its Hessian would rest on too few "
        "inputs (the report counts them). Default: the expert's widest Linear input (the hidden size): "
        "with fewer tokens than inputs the Hessian is singular."))
    stream: bool = option(False, flag="--stream/--in-memory", help=(
        "Weight-only quantization of a decoder one layer at a time (memory: one layer, whatever the depth) "
        "into sharded safetensors. RTN writes the same tensors as in memory; GPTQ runs the calibration hidden "
        "states (kept in memory) through each layer and feeds the *quantized* layer's outputs to the next "
        "(llm-compressor's sequential pipeline; in memory, every layer is calibrated on the FP32 model). The "
        "result is not evaluated against its parent (that needs the whole model): run `evaluate` on it."))
    store: str = option("float", choices=STORAGES, help=STORAGE_HELP)
    max_memory: float | None = option(None, above=0, help=(
        "With --stream: the memory (GiB) the run may use; refused before any weight is read when the "
        "largest layer (or the embedding and head) would not fit, with GPTQ's calibration hidden states, "
        "Hessians and solve."))

    def __post_init__(self) -> None:
        check_options(self)
        if self.min_expert_tokens is not None and self.method != "gptq":
            fail("{min_expert_tokens} applies to {method} gptq", "min_expert_tokens", "method")
        if self.max_memory is not None and not self.stream:
            fail("{max_memory} bounds a streamed run: add {stream}", "max_memory", "stream")
        if self.processes > 1 and not ROUNDINGS[self.method].calibrates:
            fail(f"{{nproc}} x {{nnodes}} divide calibration between processes; {{method}} {self.method} has none "
                 f"(use one process)", "nproc", "nnodes", "method")
        if self.store == "codes" and self.layout != "ours":
            fail(f"{{store}} codes is our layout's; {{layout}} {self.layout} holds float weights on the grid for its "
                 f"loaders (use --store float, or export --layout compressed-tensors|gptq|gguf for packed codes)",
                 "store", "layout")
        if self.method == "awq" and self.stream:
            fail("{method} awq runs in memory (its scales fold across Linears); drop {stream}, or use gptq or rtn",
                 "method", "stream")
        if self.resume and not self.stream:
            fail("{resume} continues a streamed run (add {stream}); an in-memory quantize keeps nothing to resume "
                 "from", "resume", "stream")
        self.check_processes()

    @property
    def reads_train(self) -> bool:
        return ROUNDINGS[self.method].calibrates

    @property
    def groups(self) -> int | None:
        return self.group_size or (None if self.weight_only == "int8" else 32)

    @property
    def head_grid(self) -> HeadGrid:
        return HeadGrid.named(self.head)


W8A8_METHODS = ("smoothquant", "rtn")


@dataclass(frozen=True, kw_only=True)
class W8A8Config(QuantizeOptions, CalibrationOptions):
    """``quantize --w8a8 smoothquant|rtn``: int8 weights and int8 activations, for dense decoders."""

    w8a8: str = option("smoothquant", selects=True, choices=W8A8_METHODS, help=(
        "W8A8 for dense ERNIE 4.5 decoders: int8 weights per output channel and int8 activations quantized at "
        "run time per tensor (onnx/decoder.onnx runs ONNX Runtime's DynamicQuantizeMatMul); smoothquant first "
        "moves activation outliers into the weights (Xiao et al. 2023, scales from --calib-samples training "
        "texts), rtn does not; the output head stays int8 weight-only."))
    alpha: float | None = option(None, at_least=0, at_most=1, help=(
        "W8A8 smoothquant: migration strength (0: none, 0.5: the paper's default). Default: the best of "
        "0, 0.3 ... 0.8 on the task's dev split."))
    method = "w8a8"

    def __post_init__(self) -> None:
        check_options(self)
        if self.alpha is not None and self.w8a8 != "smoothquant":
            fail("{alpha} is smoothquant's migration strength; drop it with {w8a8} rtn", "alpha", "w8a8")


QuantizeConfig = QATConfig | PTQConfig | FP16Config | WeightOnlyConfig | W8A8Config


# -- the shared start and finish, and the runner lookup ----------------------------------------------

@dataclass(frozen=True)
class Quantized:
    """What a method's runner made, for the shared finish."""

    name: str  # the lineage entry and the result's stage: quantize-qat, quantize-weight-only, ...
    model: Any  # what is evaluated on the held-out split
    state: dict[str, np.ndarray]  # the weights written
    scheme: dict[str, Any]  # config.json's quantization entry; its method names a quantize/registry scheme
    description: str  # how the progress line names the result
    layers: int  # the result's quantized_layers
    extra_files: dict[str, Any] | None = None  # written beside the weights (INT8: the scales)
    training: TrainResult | None = None  # QAT: the fine-tuning run


@dataclass(frozen=True)
class Runner:
    run: Callable[[Any, Start], Quantized]
    methods: tuple[str, ...]  # the scheme methods it writes (each registered in quantize/registry.py)


RUNNERS: dict[type, Runner] = {}


def runs(config_type: type, methods: tuple[str, ...]):
    """Decorator: ``fn(cfg, start) -> Quantized`` is the runner of ``config_type`` (a method of the
    quantize stage from now on), writing schemes with these ``methods``."""

    def wrap(fn: Callable[[Any, Start], Quantized]):
        RUNNERS[config_type] = Runner(fn, methods)
        register("quantize", config_type)(quantize_checkpoint)
        return fn

    return wrap


def quantize_checkpoint(cfg: QuantizeConfig) -> QuantizeResult:
    """Quantize as ``cfg``'s method says: the runner registered for its config type, between the
    shared start and finish."""
    started = time.perf_counter()
    if isinstance(cfg, WeightOnlyConfig) and cfg.stream:
        return _streamed(cfg, started)
    runner = RUNNERS[type(cfg)]
    start = _start(cfg)
    made = runner.run(cfg, start)
    assert made.scheme["method"] in runner.methods, f"{made.name} wrote an undeclared method"
    return _finish(cfg, start, made, started)


def _start(cfg: QuantizeConfig) -> Start:
    """The parent and its task (the training split only for methods that read it)."""
    refuse_existing_output(cfg)
    start = start_from(cfg.checkpoint, cfg.task_spec, fp32_for="quantize its FP32 parent instead",
                       splits=("train", "dev", "test") if cfg.reads_train else ("dev", "test"),
                       tokenizer=cfg.tokenizer)
    check_layout(start.parent.config, cfg.layout)
    return start


def _finish(cfg: QuantizeConfig, start: Start, made: Quantized, started: float) -> QuantizeResult:
    """Every method ends here: ``made`` evaluated on the held-out split against the parent, written
    as a checkpoint (config.json's quantization entry, the lineage record), reported."""
    task, metric, parent = start.task, start.metric, start.parent
    metrics = evaluate_split(made.model, start.held_out, task.kind)
    delta = metric_delta(metric, metrics[metric], start.metrics[metric])
    config = parent.config.replace(extra=dict(parent.config.extra))
    config.extra["quantization"] = made.scheme
    if not parent.task:  # a parent without a task (random weights, a base model) records the one given here
        config.extra["ernie_compress"] = {**config.extra.get("ernie_compress", {}), "task": task.spec.to_dict()}
    trained = made.training
    steps = trained.steps if trained else 0
    out = finish(cfg, config, made.state, start.tokenizer, {
        "name": made.name, "metrics": {task.held_out: metrics, f"parent_{task.held_out}": start.metrics},
        "delta_points": delta, "steps": steps, "seconds": round(time.perf_counter() - started, 1)},
        parent, made.extra_files)
    note(f"{made.description}: {metric} {metrics[metric]:.4f} vs FP32 parent {start.metrics[metric]:.4f} "
         f"({delta:+.2f} points)")
    return QuantizeResult(stage=made.name, out=str(out), task=task.spec.name, scheme=made.scheme,
                          metrics={task.held_out: metrics}, parent_metrics={task.held_out: start.metrics},
                          delta_points=delta, quantized_layers=made.layers, steps=steps,
                          steps_run=trained.steps_run if trained else 0,
                          train_seconds=round(trained.seconds if trained else 0.0, 2),
                          samples_per_s=samples_per_second(trained, cfg.batch_size) if trained else None,
                          seconds=round(time.perf_counter() - started, 1))


# -- one runner per method ------------------------------------------------------------------------

@runs(QATConfig, methods=("qat",))
def _qat(cfg: QATConfig, start: Start) -> Quantized:
    """Fake-quantized weights and activations fine-tuned on the task, on the hard labels or with
    logit distillation from the FP32 parent (``--distill-from-parent``)."""
    int8 = _int8_scheme(cfg, "moving_average_abs_max")
    qmodel = _fake_quant(start, int8)
    loss = (logit_kd_loss(start.model, cfg.kd_weight, cfg.kd_temperature, start.tokenizer.pad_id)
            if cfg.distill_from_parent else hard_label_loss)
    trained = train_resumably(qmodel, start.splits, start.task.kind, cfg, "qat int8", loss_fn=loss)
    return _int8_result(cfg, int8, qmodel, trained)


@runs(PTQConfig, methods=("ptq",))
def _ptq(cfg: PTQConfig, start: Start) -> Quantized:
    """The parent's weights; activation scales from ``--calib-samples`` training examples by ``--observer``."""
    int8 = _int8_scheme(cfg, cfg.observer)
    qmodel = _fake_quant(start, int8)
    calibrate_(qmodel, start.splits["train"], cfg.calib_samples, cfg.observer, cfg.percentile)
    return _int8_result(cfg, int8, qmodel)


@runs(FP16Config, methods=(FP16_SCHEME["method"],))
def _fp16(cfg: FP16Config, start: Start) -> Quantized:
    """Every float tensor of the parent in half precision (the Paddle model computes in FP32)."""
    parent = start.parent
    state = {k: v.astype(np.float16) if v.dtype.kind == "f" else v for k, v in parent.state.items()}
    return Quantized(f"quantize-{cfg.method}", model_from_state(parent.config, state, str(parent.path)), state,
                     FP16_SCHEME, "fp16 weights (Paddle, FP32 compute)",
                     layers=sum(1 for v in state.values() if v.dtype == np.float16))


@runs(WeightOnlyConfig, methods=tuple(f"weight_only_{name}" for name in ROUNDINGS))
def _weight_only(cfg: WeightOnlyConfig, start: Start) -> Quantized:
    """Integer weights on ``cfg``'s grid by its rounding (``--method``), stored dequantized (or, with
    ``--store codes``, as their codes and scales: the model evaluated holds the dequantized weights)."""
    kept = {} if cfg.store == "codes" else None
    state, scheme = _weight_only_state(cfg, start, kept)
    model = model_from_state(start.parent.config, state, str(start.parent.path))
    if kept is not None:
        state = store_codes_(dict(state), kept, scheme["weights"])
    return Quantized("quantize-weight-only", model, state, scheme, f"weight-only {scheme['dtype']} ({cfg.method})",
                     layers=scheme["linears"])


@runs(W8A8Config, methods=tuple(f"w8a8_{name}" for name in W8A8_METHODS))
def _w8a8(cfg: W8A8Config, start: Start) -> Quantized:
    """SmoothQuant (``quantize/smoothquant.py``) at the given alpha or the best of a grid on the dev split,
    then int8 weights per channel (RTN) and the head int8 per vocabulary entry; the model returned (and
    evaluated) quantizes its Linears' inputs as the exported kernels do."""
    config = start.model.config
    family = family_of(config)
    if not family.serves(config, "causal_lm") or family.routed_experts is not None:
        raise UserError(f"--w8a8 quantizes dense ERNIE 4.5 decoders (causal LM); {config.architecture}: use --ptq or "
                        f"--qat int8 for encoders, --weight-only for mixtures of experts")
    names = quantized_linear_names(start.model)
    edges = family.smoothing_edges(config, names)
    alphas = (0.0,) if cfg.w8a8 == "rtn" else smoothquant.ALPHAS if cfg.alpha is None else (cfg.alpha,)
    if len(alphas) > 1 and start.task.held_out == "dev":
        raise UserError("the task's dev split is its held-out split: give --alpha (the search would tune on "
                        "the data the result is reported on)")
    maxima = {}
    if any(alphas):
        batches = calibration_batches(start.splits["train"], cfg.calib_samples)
        maxima = smoothquant.collect_channel_absmax(start.model, sorted({n for e in edges for n in e.layers}),
                                                    batches, start.tokenizer.pad_id)
    searched, best = {}, None
    with progress_bar(len(alphas), "w8a8 alpha") as bar:
        for alpha in alphas:
            state = dict(start.parent.state)
            if alpha:
                smoothquant.smooth_(state, family, config, edges, maxima, alpha)
            weights = round_linears_(state, dict.fromkeys(names, lambda w: quantize_rtn(w, 8, None)), 8, None)
            for entry in weights.values():
                entry["activations"] = "int8"  # the export's DynamicQuantizeMatMul
            weights.update(round_head_(state, config))  # int8 weight-only, float activations
            model = model_from_state(config, state, str(start.parent.path))
            smoothquant.dynamic_int8_inputs(model, names)
            if len(alphas) > 1:
                searched[alpha] = evaluate_split(model, start.splits["dev"], start.task.kind)[start.metric]
                bar.advance({start.metric: searched[alpha]})
            if best is None or (searched and is_better(start.metric, searched[alpha], searched[best[0]])):
                best = (alpha, state, weights, model)
    alpha, state, weights, model = best
    scheme = {"method": f"w8a8_{cfg.w8a8}", "dtype": "int8", "weight_bits": 8, "group_size": None,
              "activations": "int8, per tensor at run time (DynamicQuantizeLinear)", "linears": len(names),
              "alpha": alpha, "smoothed_edges": len(edges) if alpha else 0,
              **({"alpha_search": {"split": "dev", start.metric: {str(a): v for a, v in searched.items()}}}
                 if searched else {}), "weights": weights}
    return Quantized("quantize-w8a8", model, state, scheme, f"W8A8 ({cfg.w8a8}, alpha {alpha:g})", layers=len(names))


# -- what the runners share -----------------------------------------------------------------------

def _int8_scheme(cfg: QATConfig | PTQConfig, observer: str) -> Int8Scheme:
    """7-bit weights where ``--reduce-range`` says so (default: on CPUs without VNNI)."""
    reduce_range = (not cpu_has_vnni()) if cfg.reduce_range is None else cfg.reduce_range
    return Int8Scheme(method=cfg.method, weight_bits=7 if reduce_range else 8, reduce_range=reduce_range,
                      activation_observer=observer)


def _fake_quant(start: Start, int8: Int8Scheme):
    """A fresh copy of the parent with fake-quantized Linears (the parent's model stays FP32)."""
    parent = start.parent
    return fake_quant_model(model_from_state(parent.config, parent.state, str(parent.path)), int8)


def _int8_result(cfg: QATConfig | PTQConfig, int8: Int8Scheme, qmodel,
                 trained: TrainResult | None = None) -> Quantized:
    """A fake-quant model as an INT8 checkpoint: its float weights and learned scales."""
    qmodel.eval()
    scales = collect_scales(qmodel)
    return Quantized(f"quantize-{cfg.method}", qmodel, float_state(qmodel), int8.to_dict(),
                     f"{cfg.method} int8 (fake-quant, Paddle)", layers=len(scales),
                     extra_files={SCALES_FILE: scales}, training=trained)


def _weight_only_state(cfg: WeightOnlyConfig, start: Start, kept: dict | None = None) -> tuple[dict, dict]:
    """The parent's weights with every quantized Linear on ``cfg``'s grid (``--method``: rounded
    to nearest, or by GPTQ), dequantized, and the scheme config.json records; ``kept`` receives the
    codes (``round_linears_``)."""
    bits, group = BITS[cfg.weight_only], cfg.groups
    state = dict(start.parent.state)
    names = quantized_linear_names(start.model)
    check_group_sizes({name: state[f"{name}.weight"].shape[0] for name in names}, group)
    check_head(start.parent.config, cfg.head_grid)
    plan = ROUNDINGS[cfg.method].prepare(cfg, start, names)
    state.update(plan.replaced or {})  # AWQ's scales folded in: the norms change, the Linears round scaled
    weights = round_linears_(state, {name: rounding for name, (_, rounding) in plan.roundings.items()}, bits, group,
                             kept)
    weights.update(round_head_(state, start.parent.config, kept, cfg.head_grid))
    return state, weight_only_scheme(cfg, start.model.config, plan, weights)


def weight_only_scheme(cfg: WeightOnlyConfig, config, plan: Plan, weights: dict[str, dict]) -> dict[str, Any]:
    """config.json's quantization entry of a weight-only run: method, grid, counts, each weight's entry."""
    return {"method": f"weight_only_{cfg.method}", "dtype": cfg.weight_only, "weight_bits": BITS[cfg.weight_only],
            "group_size": cfg.groups, "storage": cfg.store, "linears": len(plan.roundings), **_rounding_record(cfg, config, plan),
            **(plan.record or {}), "weights": weights}


def _rounding_record(cfg: WeightOnlyConfig, config, plan: Plan) -> dict[str, Any]:
    """What the scheme says about the roundings: per rounding, how many Linears and routed experts got
    it; for GPTQ of a model with routed experts the threshold (None: each expert's widest input), the
    experts that fell back to RTN (tokens they got, needed) and the fewest calibration tokens an expert got."""
    family = family_of(config)
    counts = {}
    for name, (how, _) in plan.roundings.items():
        count = counts.setdefault(how, {"linears": 0, "experts": set()})
        count["linears"] += 1
        site = family.routed_expert(name)
        if site is not None:
            count["experts"].add(site.expert)
    record = {"rounding": {how: {"linears": c["linears"], "experts": len(c["experts"])} for how, c in counts.items()}}
    if plan.experts:  # GPTQ of a model with routed experts
        starved = {e: {"tokens": v["tokens"], "needed": v["needed"]} for e, v in plan.experts.items() if v["starved"]}
        record.update(min_expert_tokens=cfg.min_expert_tokens, rtn_fallback=starved,
                      fewest_expert_tokens=min(v["tokens"] for v in plan.experts.values()))
    return record


# -- weight-only streamed layer by layer (``quantize/streaming.py``, ``quantize/sequential.py``) -------

def _streamed(cfg: WeightOnlyConfig, started: float) -> QuantizeResult | None:
    """``--stream``: the parent opened lazily (tokenizer, integrity, layout, group sizes, disk and
    ``--max-memory`` checked before any weight is read), each layer rounded (RTN) or calibrated and
    rounded (GPTQ) and written to its own shard; not evaluated (the whole model would be needed). The
    shards are recorded as they are written (``shard_progress.py``): ``--resume`` continues an
    interrupted run after its last recorded shard."""
    refuse_existing_output(cfg)
    lazy = open_checkpoint(cfg.checkpoint, tokenizer=cfg.tokenizer, check_tokenizer=True)
    refuse_quantized(lazy, "quantize its FP32 parent instead")
    check_layout(lazy.config, cfg.layout)
    names = quantized_linears(lazy)
    check_streamable(lazy, names, cfg.groups)
    check_head(lazy.config, cfg.head_grid)
    weights = scheme_weights(lazy, names, BITS[cfg.weight_only], cfg.groups, cfg.head_grid)
    check_disk(lazy, cfg.out, {k: w["bits"] for k, w in weights.items()} if cfg.store == "codes" else None)
    config = lazy.config.replace(extra=dict(lazy.config.extra))
    here = world()
    with resumable(cfg.out, cfg.resume, PROGRESS_FILE) as state_dir:
        fingerprint = _stream_fingerprint(cfg, lazy)
        progress = ShardProgress.start(state_dir, fingerprint, cfg.resume) if here.main else None
        done = int(broadcast_arrays({"done": np.array([progress.done if progress else 0])},
                                    {"done": ((1,), np.int64)}, src=0)["done"][0])
        walk = _streamed_gptq if cfg.method == "gptq" else _streamed_rtn
        saved = SavedWalk(state_dir, fingerprint_tag(fingerprint), here.rank)
        groups, task, summary = walk(cfg, lazy, names, config, weights, done, saved)
        scheme = config.extra["quantization"]
        record = {"name": "quantize-weight-only", "config": config_record(cfg), "metrics": {}, "evaluated": False}
        if not here.main:  # another rank of a divided calibration: walks the layers in step, rank 0 writes
            for _ in groups:
                pass
            saved.remove()
            return None
        out = save_sharded_checkpoint(cfg.out, config, groups, len(lazy.groups), lazy.tokenizer(), record,
                                      parent=lazy, overwrite=cfg.overwrite, layout=cfg.layout, progress=progress)
    clear_train_state(cfg.out)
    resumed = f"; resumed after {done} of {len(lazy.groups)} shards" if done else ""
    note(f"weight-only {scheme['dtype']} ({cfg.method}, streamed layer by layer into {len(lazy.groups)} shards"
         f"{summary()}{resumed}); not evaluated: run `ernie-compress evaluate {out}`")
    seconds = round(time.perf_counter() - started, 1)
    return QuantizeResult(stage="quantize-weight-only", out=str(out), task=task, scheme=scheme, metrics={},
                          parent_metrics={}, delta_points=None, quantized_layers=len(names), steps=0, steps_run=0,
                          train_seconds=0.0, samples_per_s=None, seconds=seconds)


# options that do not change what a streamed run writes (or, for the process layout, say it differently)
_NOT_IN_FINGERPRINT = ("resume", "overwrite", "threads", "nproc", "nnodes", "master", "node_rank")


def _stream_fingerprint(cfg: WeightOnlyConfig, lazy) -> dict[str, Any]:
    """What must match for ``--resume`` to continue a streamed run: the parent (its recorded weights digest,
    or its weight files' sizes and times), the options that shape the result, the processes (each rank
    saved its own calibration share) and the shard count."""
    parent = lazy.weights_sha256 or sorted((p.name, p.stat().st_size, p.stat().st_mtime_ns)
                                           for p in Path(lazy.path).iterdir() if p.suffix == ".safetensors")
    options = {k: v for k, v in config_record(cfg)["data"].items() if k not in _NOT_IN_FINGERPRINT}
    return {"parent": str(lazy.path), "parent_weights": parent, "options": options,
            "processes": cfg.processes, "shards": len(lazy.groups)}


def _streamed_rtn(cfg: WeightOnlyConfig, lazy, names: list[str], config, weights: dict, done: int, saved):
    """RTN: the scheme known up front (config.extra's quantization entry), the groups rounded as read."""
    if cfg.max_memory is not None:
        memory_need(lazy, names).refuse_above(cfg.max_memory, peak_resident_bytes())
    plan = _rtn(cfg, None, names)
    config.extra["quantization"] = weight_only_scheme(cfg, config, plan, weights)
    rounding = plan.roundings[names[0]][1] if names else None
    groups = stream_rtn(lazy, names, rounding, BITS[cfg.weight_only], cfg.groups, start=done,
                        store=weights if cfg.store == "codes" else None, head=cfg.head_grid)
    return groups, str((lazy.task or {}).get("name", "")), lambda: ""


def _streamed_gptq(cfg: WeightOnlyConfig, lazy, names: list[str], config, weights: dict, done: int,
                   saved: SavedWalk):
    """GPTQ layer by layer (``quantize/sequential.py``) on ``--calib-samples`` training examples drawn as
    in memory; the scheme's rounding record (which experts fell back to RTN) is completed as the layers
    are done, before the last group reaches the writer (which writes config.json after it). A resumed
    run (``done`` groups written) continues from the hidden states ``saved`` holds on every rank."""
    task = load_task_for_model(cfg.task_spec, lazy.task, lazy.config.labels)
    tokenizer = lazy.tokenizer()
    train = encode_splits(task, tokenizer, lazy.config.labels, lazy.max_seq_length, names=("train",)).get("train")
    if train is None:
        raise UserError(f"--method gptq calibrates on the task's training split; {task.spec.name} has none")
    batches = my_batches(calibration_batches(train, cfg.calib_samples))  # this rank's share (all, with one)
    if cfg.max_memory is not None:
        import_paddle()  # part of the baseline: the layers run in Paddle
        gptq_memory_need(lazy, names, batches).refuse_above(cfg.max_memory, peak_resident_bytes())
    if done:
        missing = sum_across_ranks({"missing": np.array([0 if saved.has(done) else 1])})["missing"][0]
        if missing:
            raise UserError(f"cannot resume: the calibration hidden states after shard {done} are missing on "
                            f"{missing} process(es) (in {saved.directory}); start again without --resume")
    settings = GPTQSettings(BITS[cfg.weight_only], cfg.groups, cfg.min_expert_tokens, cfg.head_grid)
    record = SequentialRecord()
    scheme = config.extra["quantization"] = {}

    def groups():
        for state in stream_gptq(lazy, names, batches, tokenizer.pad_id, settings, record, saved, start=done,
                                 store=weights if cfg.store == "codes" else None):
            scheme.update(weight_only_scheme(cfg, config, Plan(record.roundings, record.experts), weights))
            yield state
        if not scheme:  # resumed after the last shard: the record comes from the saved walk
            scheme.update(weight_only_scheme(cfg, config, Plan(record.roundings, record.experts), weights))

    return groups(), task.spec.name, lambda: f"; {layer_seconds(record)} s per layer"
