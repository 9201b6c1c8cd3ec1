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

from ..checkpoint import Checkpoint, atomic_output_dir, load_checkpoint, now_iso
from ..errors import UserError

FORMATS = ("paddle", "onnx", "all")
MANIFEST_FILE = "manifest.json"
MANIFEST_VERSION = 1


@dataclass(frozen=True)
class ExportConfig:
    checkpoint: Path
    out: Path
    format: str = "all"
    opset: int = 17
    tolerance: float = 1e-3  # max |logit difference| allowed against the dygraph model
    verify_samples: int = 64  # held-out examples the exported files are checked on
    overwrite: bool = False

    def __post_init__(self) -> None:
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


def verify(name: str, session, reference: np.ndarray, ids: np.ndarray, types: np.ndarray,
           tolerance: float) -> dict[str, Any]:
    """Run ``session`` on the samples and compare with the dygraph logits."""
    outputs = np.concatenate([session.run(ids[i:i + 16], types[i:i + 16])
                              for i in range(0, len(ids), 16)])
    diff = float(np.abs(outputs - reference).max())
    agree = float(np.mean(outputs.argmax(-1) == reference.argmax(-1)))
    if not diff <= tolerance:
        raise UserError(f"{name} export failed verification: max logit difference {diff:.2e} "
                        f"exceeds the tolerance {tolerance:.0e}; nothing was written")
    return {"max_abs_diff": diff, "prediction_agreement": agree, "samples": int(len(ids)),
            "passed": True}


def export_checkpoint(cfg: ExportConfig) -> dict[str, Any]:
    from ..evaluate import evaluate_loaded
    from ..models import model_from_state
    from ..paddle_env import import_paddle
    from ..runtime.backends import OnnxRuntimeSession, PaddleInferenceSession, RuntimeConfig
    from .onnx_export import OnnxExportError, convert_to_onnx
    from .static_graph import export_static_graph

    start = time.perf_counter()
    ckpt = load_checkpoint(cfg.checkpoint)
    tokenizer = ckpt.tokenizer()
    model = model_from_state(ckpt.config, ckpt.state, str(ckpt.path))
    paddle = import_paddle()
    ids, types, sample_source = sample_inputs(ckpt, tokenizer, cfg.verify_samples)
    with paddle.no_grad():
        reference = np.concatenate([model(paddle.to_tensor(ids[i:i + 16]),
                                          paddle.to_tensor(types[i:i + 16])).numpy()
                                    for i in range(0, len(ids), 16)])
    reference_metrics = evaluate_loaded(ckpt, model, tokenizer) if ckpt.task else None

    files: dict[str, Any] = {}
    verification: dict[str, Any] = {}
    cpu = RuntimeConfig(device="cpu")
    with atomic_output_dir(cfg.out, cfg.overwrite) as tmp:
        tokenizer.save(tmp)
        with tempfile.TemporaryDirectory() as scratch:
            graph_dir = tmp / "paddle" if cfg.format in ("paddle", "all") else Path(scratch) / "paddle"
            graph = export_static_graph(model, graph_dir)
            if cfg.format in ("paddle", "all"):
                files["paddle"] = {"dir": "paddle", **graph}
                session = PaddleInferenceSession(graph_dir, cpu, graph["program"], graph["params"])
                verification["paddle"] = verify("paddle", session, reference, ids, types, cfg.tolerance)
            if cfg.format in ("onnx", "all"):
                try:
                    convert_to_onnx(graph_dir / graph["program"], graph_dir / graph["params"],
                                    tmp / "onnx" / "model.onnx", cfg.opset)
                except OnnxExportError as exc:
                    raise UserError(str(exc)) from None
                files["onnx"] = {"model": "onnx/model.onnx", "opset": cfg.opset}
                session = OnnxRuntimeSession(tmp / "onnx" / "model.onnx", cpu)
                verification["onnx"] = verify("onnx", session, reference, ids, types, cfg.tolerance)
        manifest = {
            "format_version": MANIFEST_VERSION, "created": now_iso(),
            "source": {"path": str(ckpt.path), "weights_sha256": ckpt.weights_sha256},
            "task": ckpt.task, "task_kind": ckpt.config.extra.get("ernie_compress", {}).get("task_kind"),
            "labels": ckpt.config.labels, "max_seq_length": ckpt.max_seq_length,
            "architecture": ckpt.config.architecture, "precision": "fp32",
            "inputs": ["input_ids", "token_type_ids"], "outputs": ["logits"],
            "files": files, "verification": {"samples_from": sample_source, **verification},
            "reference": {"backend": "paddle-dygraph", "metrics": reference_metrics},
        }
        (tmp / MANIFEST_FILE).write_text(json.dumps(manifest, indent=2, ensure_ascii=False) + "\n")
    return {"stage": "export", "out": str(Path(cfg.out).expanduser().resolve()), "format": cfg.format,
            "files": files, "verification": verification, "reference_metrics": reference_metrics,
            "seconds": round(time.perf_counter() - start, 1)}


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
