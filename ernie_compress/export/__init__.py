"""``export``: turn a checkpoint into self-contained deployable files, verified before they land.

Layout of an export directory::

    manifest.json            source checkpoint + sha256, task, labels, max_seq_length, files,
                             opset, precision, reference metric (dygraph), verification results
    vocab.txt, tokenizer_config.json
    paddle/model.json, paddle/model.pdiparams     (--format paddle|all)
    onnx/model.onnx                               (--format onnx|all)

Every exported model is run on sample inputs from the task and compared with the dygraph model;
an export whose outputs differ by more than the tolerance is refused and nothing is written.
"""

from __future__ import annotations

import json
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..checkpoint import Checkpoint, atomic_output_dir, load_checkpoint, now_iso, write_model_files
from ..models.layouts import check_layout, check_layout_name
from ..errors import UserError

FORMATS = ("paddle", "onnx", "all")
MANIFEST_FILE = "manifest.json"
LAYOUT_ENGINES = {"ours": "ernie-compress", "paddlenlp": "PaddleNLP from_pretrained",
                  "paddleformers": "PaddleFormers from_pretrained, FastDeploy", "hf": "transformers from_pretrained"}
MANIFEST_VERSION = 1


@dataclass(frozen=True)
class ExportConfig:
    checkpoint: Path
    out: Path
    format: str = "all"
    opset: int = 17
    tolerance: float = 1e-3  # max |logit difference| allowed against the dygraph model
    verify_samples: int = 64  # held-out examples the exported files are checked on
    int8_min_agreement: float = 0.95  # INT8: least share of predictions equal to fake-quant Paddle
    int8_max_relative_diff: float = 0.02  # INT8: most |logit difference| / logit scale vs fake-quant Paddle (measured 0.3-0.4%)
    fp16_tolerance: float = 1e-2  # FP16 ONNX: max |logit difference| / logit scale (half precision)
    overwrite: bool = False
    layout: str | None = None  # also write the checkpoint in this layout under checkpoint/ (for serving engines)

    def __post_init__(self) -> None:
        if self.layout is not None:
            check_layout_name(self.layout)
        if self.format not in FORMATS:
            raise UserError(f"--format must be one of {', '.join(FORMATS)}, got '{self.format}'")
        if not 11 <= self.opset <= 19:
            raise UserError(f"--opset must be in [11, 19], got {self.opset}")
        if not self.tolerance > 0:
            raise UserError(f"--tolerance must be > 0, got {self.tolerance}")


def sample_inputs(ckpt: Checkpoint, tokenizer, count: int) -> tuple[np.ndarray, np.ndarray, str]:
    """Verification inputs: held-out texts of the checkpoint's task, else random token ids."""
    from ..data.tasks import TaskSpec, load_task

    if ckpt.task:
        try:
            task = load_task(TaskSpec.from_dict(ckpt.task))
            examples = task.split(task.held_out)[:count]
            pairs = None if examples[0].text_b is None else [e.text_b for e in examples]
            enc = tokenizer.encode_batch([e.text_a for e in examples], pairs,
                                         max_length=ckpt.max_seq_length)
            return enc.input_ids, enc.token_type_ids, f"{task.spec.name}:{task.held_out}"
        except UserError:
            pass  # the task's data moved: random inputs still check the graph
    rng = np.random.default_rng(0)
    ids = rng.integers(5, ckpt.config.vocab_size, size=(min(count, 8), 32)).astype(np.int64)
    ids[:, 0] = tokenizer.cls_id
    ids[1:, 24:] = tokenizer.pad_id
    return ids, np.zeros_like(ids), "random"


OUTPUT_NAMES = {"token_classification": "token_logits", "question_answering": "span_logits",
                "causal_lm": "lm_logits"}


def _agreement(kind: str, outputs: np.ndarray, reference: np.ndarray) -> float:
    """Share of predictions (labels, tags, or span starts/ends) equal to the reference's."""
    from ..losses import predicted_classes

    return float(np.mean(predicted_classes(kind, outputs) == predicted_classes(kind, reference)))


def _run_all(session, ids: np.ndarray, types: np.ndarray) -> np.ndarray:
    return np.concatenate([session.run(ids[i:i + 16], types[i:i + 16]) for i in range(0, len(ids), 16)])


def _compare(session, reference: np.ndarray, ids: np.ndarray, types: np.ndarray,
             kind: str) -> tuple[float, float, float]:
    """Run ``session`` on the samples: (max |logit difference|, the same / :func:`logit_scale`,
    share of predictions equal to the reference's)."""
    outputs = _run_all(session, ids, types)
    diff = float(np.abs(outputs - reference).max())
    return diff, diff / logit_scale(reference), _agreement(kind, outputs, reference)


def verify(name: str, session, reference: np.ndarray, ids: np.ndarray, types: np.ndarray,
           tolerance: float, kind: str = "classification", relative: bool = False) -> dict[str, Any]:
    """Run ``session`` on the samples and compare with the dygraph logits: the largest difference
    must stay within ``tolerance`` (of the logit scale when ``relative``, else absolute)."""
    diff, rel, agree = _compare(session, reference, ids, types, kind)
    if not (rel if relative else diff) <= tolerance:
        what = f"{rel:.2%} of the logit scale" if relative else f"{diff:.2e}"
        raise UserError(f"{name} export failed verification: max logit difference {what} "
                        f"exceeds the tolerance {tolerance:.0e}; nothing was written")
    return {"max_abs_diff": diff, "max_relative_diff": rel, "prediction_agreement": agree,
            "samples": int(len(ids)), "passed": True}


PADDLE_INT8_REFUSAL = (
    "Paddle cannot deploy this INT8 checkpoint correctly on Paddle 3.3.1: jit.save of a quantized "
    "model gives wrong outputs on CPU (dequantize_linear re-quantizes) and Paddle Inference INT8 "
    "is broken; use --format onnx (INT8 runs in ONNX Runtime with the checkpoint's scales)")


def _reference_model(ckpt: Checkpoint):
    """The model the exported files must reproduce: FP32, or fake-quant with the stored scales."""
    from ..models import model_from_state
    from ..quantize.scheme import Int8Scheme, quantization_info, read_scales

    model = model_from_state(ckpt.config, ckpt.state, str(ckpt.path))
    quant = quantization_info(ckpt.config)
    if not quant or quant.get("dtype") == "fp16":
        return model, model, None
    from ..quantize.fake_quant import fake_quant_model, set_activation_scales_

    scheme = Int8Scheme.from_dict(quant)
    scales = read_scales(ckpt.path)
    qmodel = fake_quant_model(model, scheme)
    set_activation_scales_(qmodel, scales)
    qmodel.eval()
    return model, qmodel, (scheme, scales)


def _logits(model, ids: np.ndarray, types: np.ndarray) -> np.ndarray:
    from ..paddle_env import import_paddle

    paddle = import_paddle()
    with paddle.no_grad():
        return np.concatenate([model(paddle.to_tensor(ids[i:i + 16]), paddle.to_tensor(types[i:i + 16])).numpy()
                               for i in range(0, len(ids), 16)])


def export_checkpoint(cfg: ExportConfig) -> dict[str, Any]:
    from ..evaluate import evaluate_loaded
    from ..quantize.scheme import quantization_info
    from ..runtime.backends import OnnxRuntimeSession, PaddleInferenceSession, RuntimeConfig
    from .onnx_export import OnnxExportError, convert_to_onnx, rename_output
    from .static_graph import export_static_graph, input_names

    start = time.perf_counter()
    ckpt = load_checkpoint(cfg.checkpoint)
    if cfg.layout is not None:
        check_layout(ckpt.config, cfg.layout)
    quant = quantization_info(ckpt.config)
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
        with tempfile.TemporaryDirectory() as scratch:
            scratch = Path(scratch)
            graph_dir = tmp / "paddle" if cfg.format in ("paddle", "all") else scratch / "paddle"
            graph = export_static_graph(model, graph_dir)
            if cfg.format in ("paddle", "all"):
                files["paddle"] = {"dir": "paddle", **graph}
                if model.config.model_type == "ernie4_5":
                    # Paddle 3.3.1's oneDNN CPU kernels compute the ERNIE 4.5 graph wrongly (logits off
                    # by up to 0.76 with every fusion pass off; exact with plain kernels): runtimes
                    # reading this manifest run it without oneDNN.
                    files["paddle"]["onednn"] = False
                paddle_cpu = RuntimeConfig(device="cpu", mkldnn=files["paddle"].get("onednn", True))
                session = PaddleInferenceSession(graph_dir, paddle_cpu, graph["program"], graph["params"])
                verification["paddle"] = verify("paddle", session, reference, ids, types, cfg.tolerance, kind)
            if cfg.format in ("onnx", "all"):
                onnx_path = tmp / "onnx" / "model.onnx"
                fp32_path = scratch / "model_fp32.onnx" if (int8 or fp16) else onnx_path
                try:
                    convert_to_onnx(graph_dir / graph["program"], graph_dir / graph["params"],
                                    fp32_path, cfg.opset)
                except OnnxExportError as exc:
                    raise UserError(str(exc)) from None
                rename_output(fp32_path, output_name)
                if int8:
                    from .onnx_int8 import INTEGER_KERNELS, integer_ops, quantize_onnx_int8

                    scheme, scales = int8
                    feeds = [{"input_ids": ids[i:i + 8], "token_type_ids": types[i:i + 8]}
                             for i in range(0, min(len(ids), 32), 8)]
                    feeds = [{k: v for k, v in f.items() if k in input_names(model)} for f in feeds]
                    param_names = {p.name: n for n, p in model.named_parameters()}
                    qdq_path = tmp / "onnx" / "model_qdq.onnx"
                    extra["int8"] = quantize_onnx_int8(fp32_path, onnx_path, qdq_path, scales,
                                                       scheme.weight_bits, feeds, param_names)
                    ops = integer_ops(onnx_path)
                    extra["int8"]["runtime_ops"] = {k: v for k, v in ops.items() if k in INTEGER_KERNELS}
                    if not extra["int8"]["runtime_ops"]:
                        raise UserError("ONNX Runtime did not fuse the QDQ model into integer kernels; "
                                        "nothing was written")
                if fp16:
                    from .onnx_fp16 import convert_onnx_fp16

                    extra["fp16"] = convert_onnx_fp16(fp32_path, onnx_path)
                files["onnx"] = {"model": "onnx/model.onnx", "opset": cfg.opset}
                if int8:  # the portable QDQ form, read by the GPU/NPU providers
                    files["onnx"]["qdq_model"] = "onnx/model_qdq.onnx"
                session = OnnxRuntimeSession(onnx_path, cpu)
                if fp16:
                    verification["onnx"] = verify("onnx fp16", session, reference, ids, types,
                                                  cfg.fp16_tolerance, kind, relative=True)
                elif int8:
                    bounds = (cfg.int8_min_agreement, cfg.int8_max_relative_diff, kind)
                    verification["onnx"] = verify_int8(session, reference, ids, types, *bounds)
                    verification["onnx_qdq"] = verify_int8(OnnxRuntimeSession(qdq_path, cpu), reference,
                                                           ids, types, *bounds)
                else:
                    verification["onnx"] = verify("onnx", session, reference, ids, types, cfg.tolerance, kind)
        manifest = {
            "format_version": MANIFEST_VERSION, "created": now_iso(),
            "source": {"path": str(ckpt.path), "weights_sha256": ckpt.weights_sha256},
            "task": ckpt.task, "task_kind": ckpt.config.extra.get("ernie_compress", {}).get("task_kind"),
            "labels": ckpt.config.labels, "max_seq_length": ckpt.max_seq_length,
            "architecture": ckpt.config.architecture, "precision": quant["dtype"] if quant else "fp32",
            "quantization": quant, **extra,
            "inputs": list(input_names(model)), "outputs": [output_name],
            "files": files, "verification": {"samples_from": sample_source, **verification},
            "reference": {"backend": "paddle-dygraph" + (" (fake-quant)" if quant else ""),
                          "metrics": reference_metrics},
        }
        (tmp / MANIFEST_FILE).write_text(json.dumps(manifest, indent=2, ensure_ascii=False) + "\n")
    return {"stage": "export", "out": str(Path(cfg.out).expanduser().resolve()), "format": cfg.format,
            "precision": manifest["precision"], "files": files, "verification": verification,
            "reference_metrics": reference_metrics, **extra,
            "seconds": round(time.perf_counter() - start, 1)}


def logit_scale(reference: np.ndarray) -> float:
    """The size of the reference outputs that INT8 differences are measured against: the largest
    |logit| after removing each row's mean (a softmax ignores a shift, so the spread is what counts)."""
    centred = reference - reference.mean(axis=-1, keepdims=True)
    return float(np.abs(centred).max()) or 1.0


def verify_int8(session, reference: np.ndarray, ids: np.ndarray, types: np.ndarray,
                min_agreement: float, max_relative_diff: float,
                kind: str = "classification") -> dict[str, Any]:
    """INT8 kernels round differently from fake-quant float math, so the bound is not float
    precision: predictions must agree on ``min_agreement`` of the samples, and the largest logit
    difference must stay within ``max_relative_diff`` of the logit scale (a wrong scale, a
    transposed weight or a dropped bias moves logits by far more than integer rounding does)."""
    diff, relative, agree = _compare(session, reference, ids, types, kind)
    if agree < min_agreement or relative > max_relative_diff:
        raise UserError(f"int8 onnx export failed verification: predictions agree with the fake-quant "
                        f"Paddle model on {agree:.1%} of samples (least {min_agreement:.0%}), max logit "
                        f"difference {diff:.3f} = {relative:.1%} of the logit scale (most "
                        f"{max_relative_diff:.0%}); nothing was written")
    return {"max_abs_diff": diff, "max_relative_diff": relative, "prediction_agreement": agree,
            "samples": int(len(ids)), "passed": True, "against": "fake-quant paddle model"}


def load_manifest(export_dir: Path) -> dict[str, Any]:
    export_dir = Path(export_dir).expanduser()
    path = export_dir / MANIFEST_FILE
    if not export_dir.is_dir():
        raise UserError(f"{export_dir} does not exist or is not a directory")
    if not path.is_file():
        raise UserError(f"{export_dir}: no {MANIFEST_FILE}; not an export directory "
                        f"(create one with `ernie-compress export`)")
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise UserError(f"{path}: invalid JSON ({exc.msg})") from None
