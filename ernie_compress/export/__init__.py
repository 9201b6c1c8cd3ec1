"""``export``: turn a checkpoint into self-contained deployable files, verified before they land.

Layout of an export directory::

    manifest.json            source checkpoint + sha256, task, labels, max_seq_length, files,
                             opset, precision, reference metric (dygraph), verification results
    vocab.txt, tokenizer_config.json
    paddle/model.json, paddle/model.pdiparams     (--format paddle|all)
    onnx/model.onnx                               (--format onnx|all)

Every exported model is run on sample inputs from the task and compared with the dygraph model;
an export whose outputs differ by more than the tolerance is refused and nothing is written. The
stage that writes an export is ``stages/export.py``; ``runtime/manifest.py`` reads its manifest.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from ..checkpoint import Checkpoint
from ..data.tasks import TaskSpec, load_task
from ..errors import UserError
from ..losses import predicted_classes

FORMATS = ("paddle", "onnx", "all", "decoder")
LAYOUT_ENGINES = {"ours": "ernie-compress", "paddlenlp": "PaddleNLP from_pretrained",
                  "paddleformers": "PaddleFormers from_pretrained, FastDeploy", "hf": "transformers from_pretrained"}


def sample_inputs(ckpt: Checkpoint, tokenizer, count: int) -> tuple[np.ndarray, np.ndarray, str]:
    """Verification inputs: held-out texts of the checkpoint's task, else random token ids."""
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
    return float(np.mean(predicted_classes(kind, outputs) == predicted_classes(kind, reference)))


def _run_all(session, ids: np.ndarray, types: np.ndarray) -> np.ndarray:
    return np.concatenate([session.run(ids[i:i + 16], types[i:i + 16]) for i in range(0, len(ids), 16)])


# heads with one output row per input token, read only at real tokens: padding rows are not compared
PER_TOKEN_KINDS = ("token_classification", "causal_lm")


def _compare(session, reference: np.ndarray, ids: np.ndarray, types: np.ndarray,
             kind: str, pad_id: int | None = None) -> tuple[float, float, float]:
    """Run ``session`` on the samples: (max |logit difference|, the same / :func:`logit_scale`,
    share of predictions equal to the reference's). For per-token heads and a known ``pad_id``,
    over the real tokens only ([batch, seq, labels] -> [tokens, labels]): no one reads a padding
    position's tags, and INT8 rounding moves them more (their attention reads only other tokens)."""
    outputs = _run_all(session, ids, types)
    if pad_id is not None and kind in PER_TOKEN_KINDS:
        real = ids != pad_id  # [batch, seq]
        outputs, reference = outputs[real], reference[real]
    diff = float(np.abs(outputs - reference).max())
    return diff, diff / logit_scale(reference), _agreement(kind, outputs, reference)


def verify(name: str, session, reference: np.ndarray, ids: np.ndarray, types: np.ndarray,
           tolerance: float, kind: str = "classification", relative: bool = False,
           pad_id: int | None = None) -> dict[str, Any]:
    """Run ``session`` on the samples and compare with the dygraph logits: the largest difference
    must stay within ``tolerance`` (of the logit scale when ``relative``, else absolute)."""
    diff, rel, agree = _compare(session, reference, ids, types, kind, pad_id)
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


def logit_scale(reference: np.ndarray) -> float:
    """The size of the reference outputs that INT8 differences are measured against: the largest
    |logit| after removing each row's mean (a softmax ignores a shift, so the spread is what counts)."""
    centred = reference - reference.mean(axis=-1, keepdims=True)
    return float(np.abs(centred).max()) or 1.0


def verify_int8(session, reference: np.ndarray, ids: np.ndarray, types: np.ndarray,
                min_agreement: float, max_relative_diff: float,
                kind: str = "classification", pad_id: int | None = None) -> dict[str, Any]:
    """INT8 kernels round differently from fake-quant float math, so the bound is not float
    precision: predictions must agree on ``min_agreement`` of the samples, and the largest logit
    difference must stay within ``max_relative_diff`` of the logit scale (a wrong scale, a
    transposed weight or a dropped bias moves logits by far more than integer rounding does)."""
    diff, relative, agree = _compare(session, reference, ids, types, kind, pad_id)
    if agree < min_agreement or relative > max_relative_diff:
        raise UserError(f"int8 onnx export failed verification: predictions agree with the fake-quant "
                        f"Paddle model on {agree:.1%} of samples (least {min_agreement:.0%}), max logit "
                        f"difference {diff:.3f} = {relative:.1%} of the logit scale (most "
                        f"{max_relative_diff:.0%}); nothing was written")
    return {"max_abs_diff": diff, "max_relative_diff": relative, "prediction_agreement": agree,
            "samples": int(len(ids)), "passed": True, "against": "fake-quant paddle model"}
