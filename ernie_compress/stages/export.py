"""The ``export`` stage: a checkpoint as deployable files (Paddle static graph, ONNX), verified
against the dygraph model before they land (see ``export/`` for the layout and the checks).

One function per format (``checkpoint/`` in a layout, ``paddle/``, ``onnx/``, the decoder) and
one manifest writer. How ``onnx/model.onnx`` is made and checked depends on the checkpoint's
quantization scheme: ``quantize/registry.py`` names the scheme's export path, and
:data:`EXPORT_PATHS` here holds each path's conversion, verification and refusals.
"""

from __future__ import annotations

import json
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..checkpoint import Checkpoint, atomic_output_dir, load_checkpoint, now_iso, write_model_files
from ..errors import UserError
from ..evaluate import evaluate_loaded
from ..lazy_checkpoint import LazyCheckpoint, open_checkpoint
from ..export import numpy_reference, streamed_decoder  # export --stream
from ..export import (FORMATS, LAYOUT_ENGINES, OUTPUT_NAMES, PADDLE_INT8_REFUSAL, logit_scale, sample_inputs,
                      verify, verify_int8)
from ..export import decoder_onnx, kv_cache, onnx_export, onnx_fp16, onnx_int8, static_graph  # by module: tests plant bugs in them
from ..export.prequantized_layouts import PREQUANTIZED_LAYOUTS
from ..data.tasks import TaskSpec, load_task
from ..models import model_from_state
from ..models.families import family_of
from ..models.layouts import LAYOUTS, check_layout
from ..options import check_options, option
from ..paddle_env import import_paddle
from ..quantize import smoothquant
from ..quantize.fake_quant import fake_quant_model, set_activation_scales_
from ..quantize.registry import Scheme, scheme_of
from ..quantize.scheme import Int8Scheme, quantization_info, read_scales
from ..quantize.streaming import check_disk
from ..runtime.backends import OnnxRuntimeSession, PaddleInferenceSession, RuntimeConfig
from ..runtime.decoding import OnnxDecoder, generate_tokens, prompt_ids
from ..runtime.manifest import MANIFEST_FILE, MANIFEST_VERSION
from ..results import ExportResult
from .common import ThreadsOption, TokenizerOption
from .registry import register

REFERENCE_BATCH = 16  # examples per dygraph forward pass when computing the reference outputs
QDQ_FILE = "model_qdq.onnx"  # INT8: the portable QDQ model beside model.onnx
QDQ_FEED_SAMPLES, QDQ_FEED_BATCH = 32, 8  # INT8: the QDQ quantizer's calibration feeds
CPU = RuntimeConfig(device="cpu")  # where every export is verified


@dataclass(frozen=True, kw_only=True)
class ExportConfig(TokenizerOption, ThreadsOption):
    """``ernie-compress export``: Paddle static graph and/or ONNX, verified against dygraph."""

    checkpoint: Path = option(argument=True, scope="cli", source="from", help="The checkpoint directory to export.")
    out: Path = option(short="-o", scope="cli", help="Output export directory.")
    format: str = option("all", short="-f", choices=FORMATS, help=(
        "paddle (static graph for Paddle Inference), onnx, or all; decoder: a causal LM's onnx/decoder.onnx "
        "alone (the KV-cache graph generation runs, verified as with onnx), without the full-sequence "
        "model.onnx, whose conversion takes long at LLM sizes."))
    opset: int = option(17, at_least=11, at_most=19, help="ONNX opset (17 emits LayerNormalization).")
    tolerance: float = option(1e-3, above=0, help="Largest logit difference against the dygraph model that "
                                                  "verification accepts.")
    layout: str | None = option(None, choices=(*LAYOUTS, *PREQUANTIZED_LAYOUTS), help=(
        f"Also write the checkpoint in this layout under checkpoint/ for a serving engine or library "
        f"({', '.join(LAYOUTS)}; for a weight-only checkpoint also pre-quantized, its integer codes packed: "
        + ", ".join(f"{name} for {layout.engines}" for name, layout in PREQUANTIZED_LAYOUTS.items())
        + "); the manifest says which."))
    weight_only_compute: str = option("int8", choices=tuple(decoder_onnx.COMPUTE_LEVELS), help=(
        "Weight-only decoders (onnx/decoder.onnx): int8 lets MatMulNBits quantize activations to int8 per "
        "block (ONNX Runtime's accuracy_level 4: its fast CPU kernels, as ONNX Runtime GenAI deploys INT4; "
        "verified teacher-forced against dygraph), fp32 computes with the dequantized weights (equal to the "
        "checkpoint: greedy text verified equal; slow for int8 weights on CPU)."))
    moe_experts: str = option("auto", choices=decoder_onnx.EXPERT_KERNELS, help=(
        "Mixture-of-experts decoders: how each MoE layer runs its experts in onnx/decoder.onnx. fused: ONNX "
        "Runtime's MoE (float) or QMoE (int4/int8 experts) kernel; dispatch: one MatMul or MatMulNBits per "
        "expert on the tokens routed to it; auto: QMoE for int4 experts, dispatch for float and int8 "
        "(faster on a CPU as measured at ERNIE-4.5-21B-A3B's shape; docs/benchmarks.md)."))
    onnx_ops: str = option("onnxruntime", choices=onnx_export.ONNX_OPS, help=(
        "Encoder ONNX (FP32 and the INT8 CPU model): onnxruntime writes each attention core as ONNX "
        "Runtime's fused MultiHeadAttention and each residual sum before a LayerNormalization as Sum, "
        "which ONNX Runtime leaves to its fast LayerNormalization kernel instead of fusing it into its "
        "slow CPU SkipLayerNormalization; standard keeps the converter's standard ONNX ops (other "
        "runtimes). FP16 and model_qdq.onnx are standard either way. Decoders (onnx/decoder.onnx): "
        "onnxruntime writes each layer's attention as ONNX Runtime's GroupQueryAttention (rotary and "
        "cache inside; head sizes a multiple of 16; the int8 cache stays in standard ops, which decode it "
        "faster over a long cache; its CUDA kernel takes float16 only, so export GPU decoders with standard), "
        "standard in standard ops; the manifest says which."))
    int8_attention: str = option("multihead", choices=onnx_export.INT8_ATTENTION, help=(
        "INT8 encoders with --onnx-ops onnxruntime: qattention writes each layer's q/k/v integer projections and "
        "attention core as ONNX Runtime's QAttention (one [hidden, 3 x hidden] integer GEMM and the attention in "
        "one kernel, the same weights and scales; benchmarks/quantization.py times it); multihead keeps three integer "
        "projections and MultiHeadAttention."))
    kv_cache: str = option("float32", choices=kv_cache.KV_CACHE, help=(
        "Causal LMs: the dtype of onnx/decoder.onnx's KV cache. int8 stores keys and values as int8 codes "
        "with a static scale per channel, calibrated on the task's train texts (a quarter of float32's "
        "bytes per token; verified against dygraph with the INT8 bounds; evaluate scores such an export "
        "through the decoder)."))
    stream: bool = option(False, flag="--stream/--in-memory", help=(
        "Weight-only decoders: write onnx/decoder.onnx one layer at a time from the checkpoint (memory: one "
        "layer plus the export's own integer weights, whatever the depth), verified against a streamed NumPy "
        "forward of the checkpoint's weights instead of dygraph; writes the decoder only (--format onnx)."))
    overwrite: bool = option(False, scope="cli", help="Replace --out if it exists (default: refuse).")
    # verification bounds: fixed here, not options (export/__init__.py: verify, verify_int8)
    verify_samples: int = 64  # held-out examples the exported files are checked on
    int8_min_agreement: float = 0.95  # INT8: least share of predictions equal to fake-quant Paddle
    int8_max_relative_diff: float = 0.02  # INT8: most |logit difference| / logit scale vs fake-quant Paddle (measured 0.3-0.4%)
    fp16_tolerance: float = 1e-2  # FP16 ONNX: max |logit difference| / logit scale (half precision)
    decoder_prompts: int = 4  # causal LMs: held-out prompts the decoder export generates from
    decoder_prompt_tokens: int = 24  # ... cut to this many tokens
    decoder_new_tokens: int = 16  # ... greedy tokens compared with dygraph
    kv_calibration_texts: int = 32  # --kv-cache int8: train texts whose keys and values set the scales

    def __post_init__(self) -> None:
        check_options(self)


def _reference_model(ckpt: Checkpoint, scheme: Scheme):
    """The model the exported files must reproduce: FP32, or fake-quant with the stored scales."""
    model = model_from_state(ckpt.config, ckpt.state, str(ckpt.path))
    if not scheme.fake_quant:  # float graphs
        return model, model, None

    int8 = Int8Scheme.from_dict(quantization_info(ckpt.config))
    scales = read_scales(ckpt.path)
    qmodel = fake_quant_model(model, int8)
    set_activation_scales_(qmodel, scales)
    qmodel.eval()
    return model, qmodel, (int8, scales)


def _logits(model, ids: np.ndarray, types: np.ndarray) -> np.ndarray:
    paddle = import_paddle()
    with paddle.no_grad():
        return np.concatenate([model(paddle.to_tensor(ids[i:i + REFERENCE_BATCH]),
                                     paddle.to_tensor(types[i:i + REFERENCE_BATCH])).numpy()
                               for i in range(0, len(ids), REFERENCE_BATCH)])


@dataclass
class Sources:
    """What every format of one export reads: the checkpoint, its scheme, the model the graphs
    are traced from, the reference they must reproduce, and the verification samples."""

    cfg: ExportConfig
    ckpt: Checkpoint
    scheme: Scheme  # quantize/registry.py's entry for the checkpoint's quantization
    path: ExportPath  # the scheme's export path (EXPORT_PATHS)
    tokenizer: Any
    model: Any  # the float model (its dequantized or FP16 weights)
    int8: tuple[Int8Scheme, dict] | None  # INT8: its scheme and scales
    kind: str  # the model's task kind
    output_name: str
    ids: np.ndarray  # verification inputs [samples, seq]
    types: np.ndarray  # [samples, seq]
    samples_from: str
    reference: np.ndarray  # the reference model's outputs on them
    reference_metrics: dict[str, float] | None
    reference_model: Any = None  # the model computing ``reference`` (INT8: fake-quant), where not ``model``


@dataclass
class Written:
    """What the export has written and checked so far: the manifest's files, verification and details."""

    files: dict[str, Any] = field(default_factory=dict)
    verification: dict[str, Any] = field(default_factory=dict)
    extra: dict[str, Any] = field(default_factory=dict)  # details per precision and rewrite (int8, fp16, onnx_ops)


def _sources(cfg: ExportConfig) -> Sources:
    """Load the checkpoint, refuse what its scheme cannot deploy in ``cfg.format``, and compute the reference."""
    ckpt = load_checkpoint(cfg.checkpoint, tokenizer=cfg.tokenizer, check_tokenizer=True)
    if cfg.layout in PREQUANTIZED_LAYOUTS:
        PREQUANTIZED_LAYOUTS[cfg.layout].check(ckpt.config)
    elif cfg.layout is not None:
        check_layout(ckpt.config, cfg.layout)
    scheme = scheme_of(quantization_info(ckpt.config))
    path = EXPORT_PATHS[scheme.export]
    if path.paddle_refusal and cfg.format not in ("onnx", "decoder"):
        raise UserError(path.paddle_refusal)
    if cfg.int8_attention == "qattention" and (scheme.export != "int8_qdq" or cfg.onnx_ops != "onnxruntime"):
        raise UserError(f"--int8-attention qattention rewrites INT8 (QAT/PTQ) encoders exported with --onnx-ops "
                        f"onnxruntime; this is a {scheme.precision} checkpoint with --onnx-ops {cfg.onnx_ops} "
                        f"(nothing was written)")
    if cfg.format == "decoder":
        _check_decoder_only(cfg, ckpt.config, path)
    else:
        _check_untraceable(cfg, ckpt.config, scheme, path)
    _check_kv_cache(cfg, ckpt, path)
    tokenizer = ckpt.tokenizer()
    model, reference_model, int8 = _reference_model(ckpt, scheme)
    kind = getattr(model, "task_kind", "classification")
    distinct_reference = reference_model if reference_model is not model else None
    if cfg.format == "decoder":  # no full-sequence graph to check: the decoder is checked against dygraph itself
        return Sources(cfg, ckpt, scheme, path, tokenizer, model, int8, kind, OUTPUT_NAMES.get(kind, "logits"),
                       np.zeros((0, 0), np.int64), np.zeros((0, 0), np.int64), "decoder prompts", np.zeros(0), None,
                       distinct_reference)
    ids, types, samples_from = sample_inputs(ckpt, tokenizer, cfg.verify_samples)
    reference = _logits(reference_model, ids, types)
    reference_metrics = evaluate_loaded(ckpt, reference_model, tokenizer) if ckpt.task else None
    return Sources(cfg, ckpt, scheme, path, tokenizer, model, int8, kind,
                   OUTPUT_NAMES.get(kind, "logits"), ids, types, samples_from, reference, reference_metrics,
                   distinct_reference)


def _check_untraceable(cfg: ExportConfig, config, scheme: Scheme, path: ExportPath) -> None:
    """A family whose models do not trace to a static graph exports ONNX built from its blocks: refuse
    ``--format paddle`` and what only a traced graph can carry, before any weight is converted."""
    family = family_of(config)
    if family.static_graph_refusal is None:
        return
    if cfg.format == "paddle":
        raise UserError(f"{family.static_graph_refusal}; use --format onnx (nothing was written)")
    if family.onnx_blocks is None or not family.serves(config, "causal_lm"):
        raise UserError(f"{family.static_graph_refusal}, and it has no ONNX blocks for "
                        f"{config.architecture}; nothing was written")
    if path.convert is not None:
        raise UserError(f"{scheme.precision} {family.title} checkpoints cannot be exported yet (their ONNX is "
                        f"converted from a static graph); export the float or weight-only checkpoint")


def _check_decoder_only(cfg: ExportConfig, config, path: ExportPath) -> None:
    """``--format decoder``: a causal LM whose precision gets a decoder; no layout beside it."""
    if not family_of(config).serves(config, "causal_lm"):
        raise UserError(f"--format decoder writes a causal LM's KV-cache decoder; {config.architecture} has none: use "
                        f"--format onnx (nothing was written)")
    if not path.decoder:
        raise UserError("this checkpoint's precision gets no onnx/decoder.onnx: use --format onnx (nothing was written)")
    if cfg.layout is not None:
        raise UserError("--layout writes beside the graphs of --format onnx or all, not --format decoder (nothing "
                        "was written)")


def _check_kv_cache(cfg: ExportConfig, ckpt: Checkpoint | LazyCheckpoint, path: ExportPath | None) -> None:
    """``--kv-cache int8`` quantizes the cache of ``onnx/decoder.onnx``, calibrated on the task's train
    texts: refuse it where no decoder is written or there is nothing to calibrate on."""
    if cfg.kv_cache == "float32":
        return
    config = ckpt.config
    if not family_of(config).serves(config, "causal_lm"):
        raise UserError(f"--kv-cache int8 quantizes the KV cache of a causal LM's onnx/decoder.onnx; "
                        f"{config.architecture} has no KV cache (nothing was written)")
    if cfg.stream:
        raise UserError("--kv-cache int8 is not available with --stream yet: export in memory, or keep the "
                        "float32 cache (nothing was written)")
    if path is not None and not path.decoder:
        raise UserError("--kv-cache int8 applies to onnx/decoder.onnx, which this checkpoint's precision does "
                        "not get (nothing was written)")
    if cfg.format == "paddle":
        raise UserError("--kv-cache int8 applies to onnx/decoder.onnx: use --format onnx, decoder or all (nothing was "
                        "written)")
    if not ckpt.task:
        raise UserError("--kv-cache int8 calibrates its scales on the checkpoint's task's train texts, and this "
                        "checkpoint records no task (nothing was written)")


# -- per format ------------------------------------------------------------------------------------

def _export_layout(src: Sources, tmp: Path, written: Written) -> None:
    """``checkpoint/``: the weights in ``cfg.layout`` for a serving engine or library."""
    layout = src.cfg.layout
    (tmp / "checkpoint").mkdir()
    if layout in PREQUANTIZED_LAYOUTS:  # integer codes packed in an engine's format
        prequantized = PREQUANTIZED_LAYOUTS[layout]
        details = prequantized.write(tmp / "checkpoint", src.ckpt.config, src.ckpt.state, src.tokenizer)
        written.files["checkpoint"] = {"dir": "checkpoint", "layout": layout, "for": prequantized.engines, **details}
        return
    write_model_files(tmp / "checkpoint", src.ckpt.config, src.ckpt.state, src.tokenizer, layout)
    entry = {"dir": "checkpoint", "layout": layout, "for": LAYOUT_ENGINES[layout]}
    if src.path.integer_weights:  # what a serving engine reads there: float weights that lie on the integer grid
        quant = quantization_info(src.ckpt.config)
        entry["weights"] = (f"float, dequantized from weight-only {quant['dtype']} "
                            f"(group size {quant['group_size'] or 'per channel'}); "
                            f"config.json's quantization entry gives the grid")
    written.files["checkpoint"] = entry


def _export_paddle(src: Sources, graph_dir: Path, graph: dict[str, Any], written: Written) -> None:
    """``paddle/``: the static graph, verified in Paddle Inference on CPU."""
    entry = {"dir": "paddle", **graph, "for": "Paddle Inference (full-sequence outputs)"}
    if not family_of(src.model.config).onednn_exact:  # runtimes reading the manifest run it without
        entry["onednn"] = False
    paddle_cpu = RuntimeConfig(device="cpu", mkldnn=entry.get("onednn", True))
    session = PaddleInferenceSession(graph_dir, paddle_cpu, graph["program"], graph["params"])
    written.files["paddle"] = entry
    written.verification["paddle"] = verify("paddle", session, src.reference, src.ids, src.types, src.cfg.tolerance,
                                            src.kind, pad_id=src.tokenizer.pad_id)


def _export_onnx(src: Sources, graph_dir: Path, graph: dict[str, Any], tmp: Path, scratch: Path,
                 written: Written) -> None:
    """``onnx/model.onnx`` as the scheme's export path makes it from the FP32 conversion of the
    static graph, verified in ONNX Runtime on CPU; a causal LM also gets ``onnx/decoder.onnx``."""
    cfg, path = src.cfg, src.path
    onnx_path = tmp / "onnx" / "model.onnx"
    fp32_path = scratch / "model_fp32.onnx" if path.convert else onnx_path
    try:
        onnx_export.convert_to_onnx(graph_dir / graph["program"], graph_dir / graph["params"], fp32_path, cfg.opset)
    except onnx_export.OnnxExportError as exc:
        raise UserError(str(exc)) from None
    onnx_export.rename_output(fp32_path, src.output_name)
    if path.convert:
        written.extra.update(path.convert(src, fp32_path, onnx_path))
    if path.onnxruntime_ops and cfg.onnx_ops == "onnxruntime":  # model.onnx: FP32, or INT8 with ORT's integer kernels
        written.extra["onnx_ops"] = {"ops": cfg.onnx_ops, **onnx_export.rewrite_for_onnxruntime(
            onnx_path, quantized_attention=cfg.int8_attention == "qattention")}
    written.files["onnx"] = {"model": "onnx/model.onnx", "opset": cfg.opset,
                             "for": "ONNX Runtime (full-sequence outputs: task metric, perplexity)", **path.files}
    _verify_onnx(src, onnx_path, tmp, written)


def _export_built_onnx(src: Sources, tmp: Path, written: Written) -> None:
    """``onnx/model.onnx`` of a model that does not trace to a static graph: the full-sequence graph
    written from its family's ONNX blocks with the float weights, verified as a traced one is."""
    onnx_path = tmp / "onnx" / "model.onnx"
    fused, _ = decoder_onnx.attention_kernel(src.ckpt.config, src.cfg.onnx_ops)
    graph = decoder_onnx.build_decoder(src.ckpt.config, decoder_onnx.DecoderWeights(src.ckpt.state, {}),
                                       full_sequence=True, fused_attention=fused)
    files = decoder_onnx.save_model(graph, onnx_path)
    written.files["onnx"] = {"model": "onnx/model.onnx", "opset": decoder_onnx.OPSET,
                             "files": [f"onnx/{name}" for name in files],
                             "built": "node by node from the family's ONNX blocks (no static graph to convert)",
                             "for": "ONNX Runtime (full-sequence outputs: task metric, perplexity)", **src.path.files}
    _verify_onnx(src, onnx_path, tmp, written)


def _verify_onnx(src: Sources, onnx_path: Path, tmp: Path, written: Written) -> None:
    """``model.onnx`` checked as the scheme's export path says; a causal LM also gets ``onnx/decoder.onnx``."""
    written.verification.update(src.path.verify(src, onnx_path))
    if src.kind == "causal_lm" and src.path.decoder:
        written.files["decoder"], written.verification["decoder"] = _export_decoder(src, tmp)


# -- the export paths of the quantization schemes (quantize/registry.py names them) ----------------

def _int8_qdq(src: Sources, fp32_path: Path, onnx_path: Path) -> dict[str, Any]:
    """INT8 with the checkpoint's scales: ``model.onnx`` with ONNX Runtime's CPU integer kernels and
    the portable QDQ ``model_qdq.onnx``; refused when ONNX Runtime runs none of the scheme's kernels."""
    scheme, scales = src.int8
    param_names = {p.name: n for n, p in src.model.named_parameters()}
    details = onnx_int8.quantize_onnx_int8(fp32_path, onnx_path, onnx_path.parent / QDQ_FILE, scales,
                                           scheme.weight_bits, _qdq_feeds(src), param_names)
    ops = onnx_int8.integer_ops(onnx_path)
    details["runtime_ops"] = {k: v for k, v in ops.items() if k in src.scheme.kernels}
    if not details["runtime_ops"]:
        raise UserError("ONNX Runtime did not fuse the QDQ model into integer kernels; nothing was written")
    return {"int8": details}


def _qdq_feeds(src: Sources) -> list[dict[str, np.ndarray]]:
    """The first ``QDQ_FEED_SAMPLES`` verification inputs in batches of ``QDQ_FEED_BATCH``, as the
    QDQ quantizer's calibration reader (the checkpoint's scales override what it measures)."""
    names = static_graph.input_names(src.model)
    feeds = [{"input_ids": src.ids[i:i + QDQ_FEED_BATCH], "token_type_ids": src.types[i:i + QDQ_FEED_BATCH]}
             for i in range(0, min(len(src.ids), QDQ_FEED_SAMPLES), QDQ_FEED_BATCH)]
    return [{k: v for k, v in feed.items() if k in names} for feed in feeds]


def _fp16(src: Sources, fp32_path: Path, onnx_path: Path) -> dict[str, Any]:
    """FP16 weights, FP32 inputs and outputs."""
    return {"fp16": onnx_fp16.convert_onnx_fp16(fp32_path, onnx_path)}


def _verify_float(src: Sources, onnx_path: Path) -> dict[str, Any]:
    session = OnnxRuntimeSession(onnx_path, CPU)
    return {"onnx": verify("onnx", session, src.reference, src.ids, src.types, src.cfg.tolerance, src.kind,
                           pad_id=src.tokenizer.pad_id)}


def _verify_fp16(src: Sources, onnx_path: Path) -> dict[str, Any]:
    session = OnnxRuntimeSession(onnx_path, CPU)
    return {"onnx": verify("onnx fp16", session, src.reference, src.ids, src.types, src.cfg.fp16_tolerance,
                           src.kind, relative=True, pad_id=src.tokenizer.pad_id)}


def _verify_int8(src: Sources, onnx_path: Path) -> dict[str, Any]:
    """Both INT8 models against the fake-quant Paddle model, within the INT8 bounds."""
    cfg = src.cfg
    bounds = (cfg.int8_min_agreement, cfg.int8_max_relative_diff, src.kind, src.tokenizer.pad_id)
    return {name: verify_int8(OnnxRuntimeSession(path, CPU), src.reference, src.ids, src.types, *bounds)
            for name, path in (("onnx", onnx_path), ("onnx_qdq", onnx_path.parent / QDQ_FILE))}


@dataclass(frozen=True)
class ExportPath:
    """How checkpoints of one quantization scheme become ``onnx/`` files and are verified."""

    verify: Callable[[Sources, Path], dict[str, Any]]  # model.onnx -> verification entries
    convert: Callable[[Sources, Path, Path], dict[str, Any]] | None = None  # FP32 ONNX -> model.onnx (+ details);
    #   None: the FP32 conversion is model.onnx
    onnxruntime_ops: bool = True  # --onnx-ops onnxruntime rewrites model.onnx (fused attention, Sum)
    files: dict[str, str] = field(default_factory=dict)  # more files in the manifest's onnx entry
    paddle_refusal: str | None = None  # why --format paddle|all cannot deploy it
    decoder: bool = True  # a causal LM also gets onnx/decoder.onnx ...
    integer_weights: bool = False  # ... with integer (MatMulNBits) weights from config.json's grid
    int8_activations: bool = False  # ... whose activations are quantized (W8A8): verified with the INT8 bounds
    reference: str = "paddle-dygraph"  # what the manifest says the exports were checked against


EXPORT_PATHS: dict[str, ExportPath] = {
    "fp32": ExportPath(verify=_verify_float),
    "weight_only": ExportPath(verify=_verify_float, integer_weights=True),
    # W8A8: model.onnx the float model of the int8 weights; decoder.onnx quantizes activations (INT8 bounds)
    "w8a8": ExportPath(verify=_verify_float, integer_weights=True, int8_activations=True),
    "fp16": ExportPath(verify=_verify_fp16, convert=_fp16, onnxruntime_ops=False),
    "int8_qdq": ExportPath(verify=_verify_int8, convert=_int8_qdq, files={"qdq_model": f"onnx/{QDQ_FILE}"},
                           paddle_refusal=PADDLE_INT8_REFUSAL, int8_activations=True,
                           reference="paddle-dygraph (fake-quant)"),
}


# -- the decoder (causal LMs) ------------------------------------------------------------------------

def _decoder_prompts(ckpt: Checkpoint, tokenizer, count: int, length: int) -> list[list[int]]:
    """Up to ``count`` held-out texts of the checkpoint's task cut to ``length`` tokens (random
    token ids where the task's data is gone)."""
    if ckpt.task:
        try:
            task = load_task(TaskSpec.from_dict(ckpt.task))
            return [prompt_ids(tokenizer, e.text_a)[:length] for e in task.split(task.held_out)[:count]]
        except UserError:
            pass  # the task's data moved: random prompts still check the graph
    rng = np.random.default_rng(0)
    return [[tokenizer.cls_id, *rng.integers(5, ckpt.config.vocab_size, length - 1).tolist()] for _ in range(count)]


def _export_decoder(src: Sources, out: Path) -> tuple[dict, dict]:
    """``onnx/decoder.onnx`` (KV cache; MatMulNBits for weight-only weights), verified: greedy
    generation from held-out prompts gives the dygraph model's tokens, and every step's logits are
    within ``cfg.tolerance`` of its logits (int8 compute: the INT8 bounds)."""
    cfg, config = src.cfg, src.ckpt.config
    weight_only = quantization_info(config) if src.path.integer_weights else None
    level = decoder_onnx.COMPUTE_LEVELS[cfg.weight_only_compute] if weight_only else 0
    weights = decoder_onnx.decoder_weights(config, src.ckpt.state, weight_only, level, cfg.moe_experts)
    if src.int8 is not None:  # QAT/PTQ: the fake-quant grid and static input scales, as integer kernels
        int8, scales = src.int8
        weights = decoder_onnx.DecoderWeights(src.ckpt.state, decoder_onnx.static_int8_weights(
            src.ckpt.state, int8.weight_bits, scales), 0, cfg.moe_experts)
    runtime = RuntimeConfig(device="cpu", threads=cfg.threads)
    fused, attention = decoder_onnx.attention_kernel(config, cfg.onnx_ops)
    graph = decoder_onnx.build_decoder(config, weights, fused_attention=fused)
    written = decoder_onnx.save_model(graph, out / decoder_onnx.DECODER_FILE)
    cache_entry = None
    if cfg.kv_cache == "int8":  # scales from the float cache just written, then the int8 graph in its place
        scales, cache_entry = _calibrate_kv_cache(src, out / decoder_onnx.DECODER_FILE, runtime)
        fused, attention = decoder_onnx.attention_kernel(config, cfg.onnx_ops, int8_cache=True)
        graph = decoder_onnx.build_decoder(config, weights, kv_scales=scales, fused_attention=fused)
        written = decoder_onnx.save_model(graph, out / decoder_onnx.DECODER_FILE)
    exported = OnnxDecoder.open(out / decoder_onnx.DECODER_FILE, runtime, src.tokenizer.pad_id)
    approximate = [what for what, applies in (("int8 KV cache", cache_entry is not None),
                                              ("int8 activations", src.path.int8_activations)) if applies]
    against = "paddle dygraph with a KV cache"
    quantized_inputs = [name.removesuffix(".weight") for name, spec in (weight_only or {}).get("weights", {}).items()
                        if spec.get("activations") == "int8"]
    hooks = smoothquant.dynamic_int8_inputs(src.model, quantized_inputs)  # W8A8: dygraph quantizes as the kernels do
    try:
        check = _compare_decoder(src, exported, level, approximate=" and ".join(approximate))
    finally:
        for hook in hooks:
            hook.remove()
    if quantized_inputs:
        against += ", its Linears' inputs quantized per tensor as DynamicQuantizeLinear does"
    if src.reference_model is not None:
        against += " (fake-quant)"
    entry = _decoder_entry(config, [f"onnx/{name}" for name in written], graph, level, attention, cache_entry)
    return entry, {**check, "compute": cfg.weight_only_compute if weight_only else "fp32", "passed": True,
                   "kv_cache": cfg.kv_cache, "against": against}


def _calibrate_kv_cache(src: Sources, float_decoder: Path, runtime: RuntimeConfig) -> tuple[list, dict[str, Any]]:
    """Static int8 scales (key, value [kv, d] per layer) from the float-cache decoder at ``float_decoder``
    prefilling the task's first train texts as training feeds them, end-of-text token included
    (``kv_cache.py``), and the manifest's entry for them."""
    cfg, config = src.cfg, src.ckpt.config
    task = load_task(TaskSpec.from_dict(src.ckpt.task))
    length = src.ckpt.max_seq_length
    prompts = kv_cache.calibration_prompts(task, src.tokenizer, length, cfg.kv_calibration_texts)
    decoder = OnnxDecoder.open(float_decoder, runtime, src.tokenizer.pad_id, host_cache=True)  # the cache as numpy
    scales = kv_cache.calibrate(decoder, prompts, config.num_hidden_layers)
    del decoder
    entry = {"dtype": "int8", "scales": "static, one per channel of keys and of values ([kv_heads, head_dim] a layer)",
             "calibrated_on": f"{len(prompts)} train texts of {task.spec.name} (up to {length} tokens)",
             "tokens": int(sum(len(p) for p in prompts)), **kv_cache.scales_summary(scales)}
    return scales, entry


def _decoder_entry(config, files: list[str], graph, level: int, attention: str,
                   cache: dict[str, Any] | None = None) -> dict[str, Any]:
    """The manifest's entry for ``onnx/decoder.onnx`` (``runtime/decoding.py`` reads it); ``attention``:
    how its attention is written (``decoder_onnx.attention_kernel``); ``cache``: an int8 KV cache's
    calibration (absent: float32)."""
    past, present = decoder_onnx.cache_names(config.num_hidden_layers)
    kernels = decoder_onnx.kernel_counts(graph)
    return {"model": decoder_onnx.DECODER_FILE, "matmul_nbits_accuracy_level": level, "files": files,
            "kv_cache": cache or {"dtype": "float32"}, "attention": attention,
            "activations": "int8" if kernels.get("DynamicQuantizeMatMul") or kernels.get("MatMulIntegerToFloat")
            else "float",
            "for": "ONNX Runtime (merged decoder: prefill and decode in one graph)",
            "inputs": ["input_ids", "attention_mask", "position_ids", *past], "outputs": ["logits", *present],
            "kv_heads": config.num_key_value_heads, "head_dim": config.head_dim,
            "layers": config.num_hidden_layers, "context": config.max_position_embeddings, "kernels": kernels}


def _compare_decoder(src: Sources, exported, level: int, approximate: str = "") -> dict[str, Any]:
    """Generate from held-out prompts with dygraph and with ``exported`` (free, and teacher-forced
    with dygraph's tokens); refused unless they agree as :func:`_check_decoder` asks (``approximate``:
    what the decoder computes that dygraph does not, an int8 KV cache or int8 activations: held to the
    INT8 bounds)."""
    cfg, family = src.cfg, family_of(src.model.config)
    prompts = _decoder_prompts(src.ckpt, src.tokenizer, cfg.decoder_prompts, cfg.decoder_prompt_tokens)
    largest = relative = 0.0
    same_text, agree = True, []
    for ids in prompts:
        expected = generate_tokens(family.cached_decoder(src.reference_model or src.model), ids, cfg.decoder_new_tokens,
                                   eos_id=-1)
        # teacher-forced (dygraph's tokens fed): the logits of the same positions
        forced = generate_tokens(exported, ids, cfg.decoder_new_tokens, eos_id=-1, forced=expected["tokens"])
        diff = float(np.abs(forced["logits"] - expected["logits"]).max())
        largest, relative = max(largest, diff), max(relative, diff / logit_scale(expected["logits"]))
        agree += list(forced["logits"].argmax(axis=1) == expected["logits"].argmax(axis=1))
        same_text &= generate_tokens(exported, ids, cfg.decoder_new_tokens, eos_id=-1)["tokens"] == expected["tokens"]
    check = {"prompts": len(prompts), "new_tokens": cfg.decoder_new_tokens, "greedy_tokens_equal": same_text,
             "teacher_forced_agreement": float(np.mean(agree)), "max_abs_diff": largest, "max_relative_diff": relative}
    _check_decoder(cfg, level, check, (quantization_info(src.ckpt.config) or {}).get("group_size"),
                   approximate=approximate)
    return check


def _check_decoder(cfg: ExportConfig, level: int, check: dict[str, Any], group_size: int | None = None,
                   against: str = "dygraph", approximate: str = "") -> None:
    """FP32 compute (``level`` 0), cache and activations: the same greedy text and logits within
    ``cfg.tolerance``; int8 compute, cache (``approximate``) or activations: next-token picks and logits
    within the INT8 bounds."""
    largest, share, relative = check["max_abs_diff"], check["teacher_forced_agreement"], check["max_relative_diff"]
    inexact = approximate or ("int8 compute" if level else "")
    if not inexact and (not check["greedy_tokens_equal"] or not largest <= cfg.tolerance):
        raise UserError(f"decoder export failed verification: greedy text differs from {against}'s or the logits "
                        f"by {largest:.2e} (tolerance {cfg.tolerance:.0e}); nothing was written")
    if inexact and (share < cfg.int8_min_agreement or relative > cfg.int8_max_relative_diff):
        hint = ("--kv-cache float32 keeps the exact cache" if "KV cache" in approximate
                else "quantize --weight-only int8" if approximate
                else f"--weight-only-compute fp32 is exact{_finer_blocks_hint(group_size)}")
        raise UserError(f"decoder export ({inexact}) failed verification: next-token picks agree with {against} "
                        f"on {share:.1%} of steps (least {cfg.int8_min_agreement:.0%}), max logit difference "
                        f"{relative:.1%} of the logit scale (most {cfg.int8_max_relative_diff:.0%}); nothing was "
                        f"written ({hint})")


def _finer_blocks_hint(group_size: int | None) -> str:
    """Per-channel codes and large groups run as large MatMulNBits blocks, whose int8 compute quantizes
    the activations per block: smaller groups quantize them more finely."""
    return "" if group_size is not None and group_size <= 32 else (
        "; or quantize with --group-size 32, whose smaller blocks quantize the activations more finely")


# -- the stage -------------------------------------------------------------------------------------

@register("export", ExportConfig)
def export_checkpoint(cfg: ExportConfig) -> ExportResult:
    """Every format ``cfg`` asks for, each verified, and the manifest, written at once (atomically)."""
    start = time.perf_counter()
    if cfg.stream:
        return _export_streamed(cfg, start)
    src = _sources(cfg)
    written = Written()
    with atomic_output_dir(cfg.out, cfg.overwrite) as tmp:
        src.tokenizer.save(tmp)
        if cfg.format == "decoder":
            written.files["decoder"], written.verification["decoder"] = _export_decoder(src, tmp)
            manifest = _decoder_only_manifest(src.ckpt, src.scheme, written.files["decoder"],
                                              written.verification["decoder"], src.path.reference)
            write_manifest(tmp, manifest)
            return ExportResult(out=str(Path(cfg.out).expanduser().resolve()), format=cfg.format,
                                precision=manifest["precision"], files=written.files,
                                verification=written.verification, reference_metrics=None, details={},
                                seconds=round(time.perf_counter() - start, 1))
        if cfg.layout is not None:
            _export_layout(src, tmp, written)
        _export_graphs(src, tmp, written)
        manifest = _manifest(src, written)
        write_manifest(tmp, manifest)
    return ExportResult(out=str(Path(cfg.out).expanduser().resolve()), format=cfg.format,
                        precision=manifest["precision"], files=written.files, verification=written.verification,
                        reference_metrics=src.reference_metrics, details=written.extra,
                        seconds=round(time.perf_counter() - start, 1))


def _export_graphs(src: Sources, tmp: Path, written: Written) -> None:
    """The static graph (in ``paddle/``, or in scratch space when only ONNX is asked for: ONNX is
    converted from it), then each asked-for format from it."""
    refusal = family_of(src.model.config).static_graph_refusal
    if refusal is not None:  # --format onnx or all (paddle was refused up front)
        if src.cfg.format == "all":
            written.extra["skipped"] = {"paddle": refusal}
        _export_built_onnx(src, tmp, written)
        return
    wanted = ("paddle", "onnx") if src.cfg.format == "all" else (src.cfg.format,)
    with tempfile.TemporaryDirectory() as scratch:
        scratch = Path(scratch)
        graph_dir = (tmp if "paddle" in wanted else scratch) / "paddle"
        graph = static_graph.export_static_graph(src.model, graph_dir)
        if "paddle" in wanted:
            _export_paddle(src, graph_dir, graph, written)
        if "onnx" in wanted:
            _export_onnx(src, graph_dir, graph, tmp, scratch, written)


def _manifest_head(ckpt: Checkpoint | LazyCheckpoint, scheme: Scheme) -> dict[str, Any]:
    """What every ``manifest.json`` starts with: the source checkpoint, its task and precision."""
    return {
        "format_version": MANIFEST_VERSION, "created": now_iso(),
        "source": {"path": str(ckpt.path), "weights_sha256": ckpt.weights_sha256},
        "task": ckpt.task, "task_kind": ckpt.config.extra.get("ernie_compress", {}).get("task_kind"),
        "labels": ckpt.config.labels, "max_seq_length": ckpt.max_seq_length,
        "architecture": ckpt.config.architecture, "precision": scheme.precision,
        "quantization": quantization_info(ckpt.config) or None,
    }


def _manifest(src: Sources, written: Written) -> dict[str, Any]:
    """The export's ``manifest.json`` (``runtime/manifest.py`` reads it)."""
    return {
        **_manifest_head(src.ckpt, src.scheme), **written.extra,
        "inputs": list(static_graph.input_names(src.model)), "outputs": [src.output_name],
        "files": written.files, "verification": {"samples_from": src.samples_from, **written.verification},
        "reference": {"backend": src.path.reference, "metrics": src.reference_metrics},
    }


# -- streamed: the weight-only decoder without the model (``export/streamed_decoder.py``) ----------

def _export_streamed(cfg: ExportConfig, start: float) -> ExportResult:
    """``--stream``: the checkpoint opened lazily and checked before any weight is read, the decoder
    written group by group, run greedily in ONNX Runtime and checked against the streamed NumPy
    reference (as :func:`_check_decoder` checks against dygraph), the manifest."""
    lazy = open_checkpoint(cfg.checkpoint, tokenizer=cfg.tokenizer, check_tokenizer=True)
    _check_kv_cache(cfg, lazy, None)
    scheme = scheme_of(quantization_info(lazy.config))
    if EXPORT_PATHS[scheme.export].int8_activations:
        raise UserError(f"{scheme.name} checkpoints export in memory (drop --stream); nothing was written")
    streamed_decoder.check_streamable(lazy, EXPORT_PATHS[scheme.export].integer_weights, cfg.format, cfg.layout)
    quant, level = quantization_info(lazy.config), decoder_onnx.COMPUTE_LEVELS[cfg.weight_only_compute]
    check_disk(lazy, cfg.out, {name: spec["bits"] for name, spec in quant["weights"].items()},  # weight names
               "the decoder's weights")
    tokenizer = lazy.tokenizer()
    prompts = _decoder_prompts(lazy, tokenizer, cfg.decoder_prompts, cfg.decoder_prompt_tokens)
    with atomic_output_dir(cfg.out, cfg.overwrite) as tmp:
        tokenizer.save(tmp)
        fused, attention = decoder_onnx.attention_kernel(lazy.config, cfg.onnx_ops)
        files, graph = streamed_decoder.write_decoder(lazy, tmp / decoder_onnx.DECODER_FILE, quant, level,
                                                     cfg.moe_experts, fused_attention=fused)
        exported = OnnxDecoder.open(tmp / decoder_onnx.DECODER_FILE, RuntimeConfig(device="cpu", threads=cfg.threads),
                                    tokenizer.pad_id)
        runs = [generate_tokens(exported, ids, cfg.decoder_new_tokens, eos_id=-1) for ids in prompts]
        del exported  # the session's weights, before the reference reads the checkpoint's
        check = streamed_decoder.compare_with_reference(lazy, prompts, runs, cfg.decoder_new_tokens)
        _check_decoder(cfg, level, check, quant.get("group_size"), against=numpy_reference.REFERENCE)
        entry, verification = _streamed_entries(lazy, files, graph, level, check, cfg, attention)
        manifest = _streamed_manifest(lazy, scheme, entry, verification)
        write_manifest(tmp, manifest)
    return ExportResult(out=str(Path(cfg.out).expanduser().resolve()), format=cfg.format, precision=scheme.precision,
                        files=manifest["files"], verification={"decoder": verification}, reference_metrics=None,
                        details={"streamed": True}, seconds=round(time.perf_counter() - start, 1))


def _streamed_entries(lazy: LazyCheckpoint, files: list[str], graph, level: int, check: dict[str, Any],
                      cfg: ExportConfig, attention: str) -> tuple[dict, dict]:
    """The manifest's decoder file entry and its verification entry, as :func:`_export_decoder` writes them."""
    entry = {**_decoder_entry(lazy.config, [f"onnx/{name}" for name in files], graph, level, attention),
             "written": "group by group (--stream)"}
    return entry, {**check, "compute": cfg.weight_only_compute, "passed": True,
                   "against": numpy_reference.REFERENCE}


def _streamed_manifest(lazy: LazyCheckpoint, scheme: Scheme, entry: dict, verification: dict) -> dict[str, Any]:
    """``manifest.json`` of a streamed export: the decoder alone, verified against the NumPy reference."""
    return {**_decoder_only_manifest(lazy, scheme, entry, verification, numpy_reference.REFERENCE), "streamed": True}


def _decoder_only_manifest(ckpt: Checkpoint | LazyCheckpoint, scheme: Scheme, entry: dict, verification: dict,
                           reference: str) -> dict[str, Any]:
    """``manifest.json`` of an export that holds the decoder alone (``--format decoder``, ``--stream``)."""
    return {
        **_manifest_head(ckpt, scheme), "decoder_only": True,
        "files": {"decoder": entry},  # no full-sequence model.onnx: its inputs and outputs are the decoder's
        "verification": {"samples_from": "decoder prompts", "decoder": verification},
        "reference": {"backend": reference, "metrics": None},
    }


def write_manifest(out: Path, manifest: dict[str, Any]) -> None:
    (out / MANIFEST_FILE).write_text(json.dumps(manifest, indent=2, ensure_ascii=False) + "\n")
