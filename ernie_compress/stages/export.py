"""The ``export`` stage: a checkpoint as deployable files (Paddle static graph, ONNX), verified
against the dygraph model before they land (see ``export/`` for the layout and the checks)."""

from __future__ import annotations

import json
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..checkpoint import Checkpoint, atomic_output_dir, load_checkpoint, now_iso, write_model_files
from ..errors import UserError
from ..evaluate import evaluate_loaded
from ..export import (FORMATS, LAYOUT_ENGINES, OUTPUT_NAMES, PADDLE_INT8_REFUSAL, logit_scale, sample_inputs,
                      verify, verify_int8)
from ..export import decoder_onnx, onnx_export, onnx_fp16, onnx_int8, static_graph  # by module: tests plant bugs in them
from ..data.tasks import TaskSpec, load_task
from ..models import model_from_state
from ..models.families import family_of
from ..models.layouts import LAYOUTS, check_layout
from ..options import check_options, option
from ..paddle_env import import_paddle
from ..quantize.fake_quant import fake_quant_model, set_activation_scales_
from ..quantize.scheme import Int8Scheme, is_weight_only, quantization_info, read_scales
from ..runtime.backends import OnnxRuntimeSession, PaddleInferenceSession, RuntimeConfig
from ..runtime.decoding import OnnxDecoder, generate_tokens, prompt_ids
from ..runtime.manifest import MANIFEST_FILE, MANIFEST_VERSION
from ..results import ExportResult
from .common import ThreadsOption
from .registry import register


@dataclass(frozen=True, kw_only=True)
class ExportConfig(ThreadsOption):
    """``ernie-compress export``: Paddle static graph and/or ONNX, verified against dygraph."""

    checkpoint: Path = option(argument=True, scope="cli", source="from", help="The checkpoint directory to export.")
    out: Path = option(short="-o", scope="cli", help="Output export directory.")
    format: str = option("all", short="-f", choices=FORMATS, help="paddle (static graph for Paddle Inference), "
                                                                   "onnx, or all.")
    opset: int = option(17, at_least=11, at_most=19, help="ONNX opset (17 emits LayerNormalization).")
    tolerance: float = option(1e-3, above=0, help="Largest logit difference against the dygraph model that "
                                                  "verification accepts.")
    layout: str | None = option(None, choices=LAYOUTS, help=(
        "Also write the checkpoint in this layout under checkpoint/ for a serving engine or library "
        "(paddlenlp, paddleformers, hf, ours); the manifest says which."))
    weight_only_compute: str = option("int8", choices=tuple(decoder_onnx.COMPUTE_LEVELS), help=(
        "Weight-only decoders (onnx/decoder.onnx): int8 lets MatMulNBits quantize activations to int8 per "
        "block (ONNX Runtime's accuracy_level 4: its fast CPU kernels, as ONNX Runtime GenAI deploys INT4; "
        "verified teacher-forced against dygraph), fp32 computes with the dequantized weights (equal to the "
        "checkpoint: greedy text verified equal; slow for int8 weights on CPU)."))
    onnx_ops: str = option("onnxruntime", choices=onnx_export.ONNX_OPS, help=(
        "Encoder ONNX (FP32 and the INT8 CPU model): onnxruntime writes each attention core as ONNX "
        "Runtime's fused MultiHeadAttention and each residual sum before a LayerNormalization as Sum, "
        "which ONNX Runtime leaves to its fast LayerNormalization kernel instead of fusing it into its "
        "slow CPU SkipLayerNormalization; standard keeps the converter's standard ONNX ops (other "
        "runtimes). FP16 and model_qdq.onnx are standard either way."))
    overwrite: bool = option(False, scope="cli", help="Replace --out if it exists (default: refuse).")
    verify_samples: int = 64  # held-out examples the exported files are checked on
    int8_min_agreement: float = 0.95  # INT8: least share of predictions equal to fake-quant Paddle
    int8_max_relative_diff: float = 0.02  # INT8: most |logit difference| / logit scale vs fake-quant Paddle (measured 0.3-0.4%)
    fp16_tolerance: float = 1e-2  # FP16 ONNX: max |logit difference| / logit scale (half precision)
    decoder_prompts: int = 4  # causal LMs: held-out prompts the decoder export generates from
    decoder_prompt_tokens: int = 24  # ... cut to this many tokens
    decoder_new_tokens: int = 16  # ... greedy tokens compared with dygraph

    def __post_init__(self) -> None:
        check_options(self)


def _reference_model(ckpt: Checkpoint):
    """The model the exported files must reproduce: FP32, or fake-quant with the stored scales."""
    model = model_from_state(ckpt.config, ckpt.state, str(ckpt.path))
    quant = quantization_info(ckpt.config)
    if not quant or quant.get("dtype") == "fp16" or is_weight_only(quant):  # float graphs
        return model, model, None

    scheme = Int8Scheme.from_dict(quant)
    scales = read_scales(ckpt.path)
    qmodel = fake_quant_model(model, scheme)
    set_activation_scales_(qmodel, scales)
    qmodel.eval()
    return model, qmodel, (scheme, scales)


def _logits(model, ids: np.ndarray, types: np.ndarray) -> np.ndarray:
    paddle = import_paddle()
    with paddle.no_grad():
        return np.concatenate([model(paddle.to_tensor(ids[i:i + 16]), paddle.to_tensor(types[i:i + 16])).numpy()
                               for i in range(0, len(ids), 16)])


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


def _export_decoder(ckpt: Checkpoint, model, weight_only: dict | None, tokenizer, out: Path,
                    cfg: ExportConfig) -> tuple[dict, dict]:
    """``onnx/decoder.onnx`` (KV cache; MatMulNBits for weight-only weights), verified: greedy
    generation from held-out prompts gives the dygraph model's tokens, and every step's logits are
    within ``cfg.tolerance`` of its logits."""
    from ..models.ernie4_5 import CachedDecoder  # imports Paddle: not at the module's top (--help)

    level = decoder_onnx.COMPUTE_LEVELS[cfg.weight_only_compute] if weight_only else 0
    weights = decoder_onnx.decoder_weights(ckpt.config, ckpt.state, weight_only, level)
    graph = decoder_onnx.build_decoder(ckpt.config, weights)
    written = decoder_onnx.save_model(graph, out / decoder_onnx.DECODER_FILE)
    exported = OnnxDecoder.open(out / decoder_onnx.DECODER_FILE, RuntimeConfig(device="cpu", threads=cfg.threads),
                                tokenizer.pad_id)
    prompts = _decoder_prompts(ckpt, tokenizer, cfg.decoder_prompts, cfg.decoder_prompt_tokens)
    largest = relative = 0.0
    same_text, agree = True, []
    for ids in prompts:
        expected = generate_tokens(CachedDecoder(model), ids, cfg.decoder_new_tokens, eos_id=-1)
        # teacher-forced (dygraph's tokens fed): the logits of the same positions
        forced = generate_tokens(exported, ids, cfg.decoder_new_tokens, eos_id=-1, forced=expected["tokens"])
        diff = float(np.abs(forced["logits"] - expected["logits"]).max())
        largest, relative = max(largest, diff), max(relative, diff / logit_scale(expected["logits"]))
        agree += list(forced["logits"].argmax(axis=1) == expected["logits"].argmax(axis=1))
        same_text &= generate_tokens(exported, ids, cfg.decoder_new_tokens, eos_id=-1)["tokens"] == expected["tokens"]
    share = float(np.mean(agree))
    if level == 0 and (not same_text or not largest <= cfg.tolerance):
        raise UserError(f"decoder export failed verification: greedy text differs from dygraph's or the logits "
                        f"by {largest:.2e} (tolerance {cfg.tolerance:.0e}); nothing was written")
    if level and (share < cfg.int8_min_agreement or relative > cfg.int8_max_relative_diff):
        raise UserError(f"decoder export (int8 compute) failed verification: next-token picks agree with dygraph on "
                        f"{share:.1%} of steps (least {cfg.int8_min_agreement:.0%}), max logit difference "
                        f"{relative:.1%} of the logit scale (most {cfg.int8_max_relative_diff:.0%}); "
                        f"nothing was written")
    past, present = decoder_onnx.cache_names(ckpt.config.num_hidden_layers)
    entry = {"model": decoder_onnx.DECODER_FILE, "matmul_nbits_accuracy_level": level, "files": [f"onnx/{name}" for name in written],
             "for": "ONNX Runtime (merged decoder: prefill and decode in one graph)",
             "inputs": ["input_ids", "attention_mask", "position_ids", *past], "outputs": ["logits", *present],
             "kv_heads": ckpt.config.num_key_value_heads, "head_dim": ckpt.config.head_dim,
             "layers": ckpt.config.num_hidden_layers, "context": ckpt.config.max_position_embeddings,
             "kernels": decoder_onnx.kernel_counts(graph)}
    check = {"prompts": len(prompts), "new_tokens": cfg.decoder_new_tokens, "greedy_tokens_equal": same_text,
             "teacher_forced_agreement": share, "max_abs_diff": largest, "max_relative_diff": relative,
             "compute": cfg.weight_only_compute if weight_only else "fp32", "passed": True,
             "against": "paddle dygraph with a KV cache"}
    return entry, check


@register("export", ExportConfig)
def export_checkpoint(cfg: ExportConfig) -> ExportResult:
    start = time.perf_counter()
    ckpt = load_checkpoint(cfg.checkpoint)
    if cfg.layout is not None:
        check_layout(ckpt.config, cfg.layout)
    quant = quantization_info(ckpt.config)
    weight_only = quant if is_weight_only(quant) else None
    if weight_only:  # model.onnx: the float model of its dequantized weights; decoder.onnx: integer kernels
        quant = None
    fp16 = bool(quant) and quant.get("dtype") == "fp16"
    if quant and not fp16 and cfg.format != "onnx":
        raise UserError(PADDLE_INT8_REFUSAL)
    tokenizer = ckpt.tokenizer()
    model, reference_model, int8 = _reference_model(ckpt)
    kind = getattr(model, "task_kind", "classification")
    output_name = OUTPUT_NAMES.get(kind, "logits")
    ids, types, sample_source = sample_inputs(ckpt, tokenizer, cfg.verify_samples)
    reference = _logits(reference_model, ids, types)
    reference_metrics = evaluate_loaded(ckpt, reference_model, tokenizer) if ckpt.task else None

    files: dict[str, Any] = {}
    verification: dict[str, Any] = {}
    extra: dict[str, Any] = {}
    cpu = RuntimeConfig(device="cpu")
    with atomic_output_dir(cfg.out, cfg.overwrite) as tmp:
        tokenizer.save(tmp)
        if cfg.layout is not None:
            (tmp / "checkpoint").mkdir()
            write_model_files(tmp / "checkpoint", ckpt.config, ckpt.state, tokenizer, cfg.layout)
            files["checkpoint"] = {"dir": "checkpoint", "layout": cfg.layout, "for": LAYOUT_ENGINES[cfg.layout]}
            if weight_only:  # what a serving engine reads there: float weights that lie on the integer grid
                files["checkpoint"]["weights"] = (f"float, dequantized from weight-only {weight_only['dtype']} "
                                                  f"(group size {weight_only['group_size'] or 'per channel'}); "
                                                  f"config.json's quantization entry gives the grid")
        with tempfile.TemporaryDirectory() as scratch:
            scratch = Path(scratch)
            graph_dir = tmp / "paddle" if cfg.format in ("paddle", "all") else scratch / "paddle"
            graph = static_graph.export_static_graph(model, graph_dir)
            if cfg.format in ("paddle", "all"):
                files["paddle"] = {"dir": "paddle", **graph, "for": "Paddle Inference (full-sequence outputs)"}
                if not family_of(model.config).onednn_exact:  # runtimes reading the manifest run it without
                    files["paddle"]["onednn"] = False
                paddle_cpu = RuntimeConfig(device="cpu", mkldnn=files["paddle"].get("onednn", True))
                session = PaddleInferenceSession(graph_dir, paddle_cpu, graph["program"], graph["params"])
                verification["paddle"] = verify("paddle", session, reference, ids, types, cfg.tolerance, kind,
                                                 pad_id=tokenizer.pad_id)
            if cfg.format in ("onnx", "all"):
                onnx_path = tmp / "onnx" / "model.onnx"
                fp32_path = scratch / "model_fp32.onnx" if (int8 or fp16) else onnx_path
                try:
                    onnx_export.convert_to_onnx(graph_dir / graph["program"], graph_dir / graph["params"],
                                    fp32_path, cfg.opset)
                except onnx_export.OnnxExportError as exc:
                    raise UserError(str(exc)) from None
                onnx_export.rename_output(fp32_path, output_name)
                if int8:
                    scheme, scales = int8
                    feeds = [{"input_ids": ids[i:i + 8], "token_type_ids": types[i:i + 8]}
                             for i in range(0, min(len(ids), 32), 8)]
                    feeds = [{k: v for k, v in f.items() if k in static_graph.input_names(model)} for f in feeds]
                    param_names = {p.name: n for n, p in model.named_parameters()}
                    qdq_path = tmp / "onnx" / "model_qdq.onnx"
                    extra["int8"] = onnx_int8.quantize_onnx_int8(fp32_path, onnx_path, qdq_path, scales,
                                                       scheme.weight_bits, feeds, param_names)
                    ops = onnx_int8.integer_ops(onnx_path)
                    extra["int8"]["runtime_ops"] = {k: v for k, v in ops.items() if k in onnx_int8.INTEGER_KERNELS}
                    if not extra["int8"]["runtime_ops"]:
                        raise UserError("ONNX Runtime did not fuse the QDQ model into integer kernels; "
                                        "nothing was written")
                if fp16:
                    extra["fp16"] = onnx_fp16.convert_onnx_fp16(fp32_path, onnx_path)
                elif cfg.onnx_ops == "onnxruntime":  # model.onnx: FP32, or INT8 with ORT's integer kernels
                    extra["onnx_ops"] = {"ops": cfg.onnx_ops, **onnx_export.rewrite_for_onnxruntime(onnx_path)}
                files["onnx"] = {"model": "onnx/model.onnx", "opset": cfg.opset,
                                 "for": "ONNX Runtime (full-sequence outputs: task metric, perplexity)"}
                if int8:  # the portable QDQ form, read by the GPU/NPU providers
                    files["onnx"]["qdq_model"] = "onnx/model_qdq.onnx"
                session = OnnxRuntimeSession(onnx_path, cpu)
                if fp16:
                    verification["onnx"] = verify("onnx fp16", session, reference, ids, types,
                                                  cfg.fp16_tolerance, kind, relative=True, pad_id=tokenizer.pad_id)
                elif int8:
                    bounds = (cfg.int8_min_agreement, cfg.int8_max_relative_diff, kind, tokenizer.pad_id)
                    verification["onnx"] = verify_int8(session, reference, ids, types, *bounds)
                    verification["onnx_qdq"] = verify_int8(OnnxRuntimeSession(qdq_path, cpu), reference,
                                                           ids, types, *bounds)
                else:
                    verification["onnx"] = verify("onnx", session, reference, ids, types, cfg.tolerance, kind,
                                                  pad_id=tokenizer.pad_id)
                if kind == "causal_lm" and not int8:
                    files["decoder"], verification["decoder"] = _export_decoder(ckpt, model, weight_only, tokenizer,
                                                                                tmp, cfg)
        manifest = {
            "format_version": MANIFEST_VERSION, "created": now_iso(),
            "source": {"path": str(ckpt.path), "weights_sha256": ckpt.weights_sha256},
            "task": ckpt.task, "task_kind": ckpt.config.extra.get("ernie_compress", {}).get("task_kind"),
            "labels": ckpt.config.labels, "max_seq_length": ckpt.max_seq_length,
            "architecture": ckpt.config.architecture, "precision": quant["dtype"] if quant else "fp32",
            "quantization": quant or weight_only, **extra,
            "inputs": list(static_graph.input_names(model)), "outputs": [output_name],
            "files": files, "verification": {"samples_from": sample_source, **verification},
            "reference": {"backend": "paddle-dygraph" + (" (fake-quant)" if quant else ""),
                          "metrics": reference_metrics},
        }
        (tmp / MANIFEST_FILE).write_text(json.dumps(manifest, indent=2, ensure_ascii=False) + "\n")
    return ExportResult(out=str(Path(cfg.out).expanduser().resolve()), format=cfg.format,
                        precision=manifest["precision"], files=files, verification=verification,
                        reference_metrics=reference_metrics, details=extra,
                        seconds=round(time.perf_counter() - start, 1))
