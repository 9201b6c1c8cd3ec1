"""A causal LM's logits at every position, through its KV-cache decoder (``onnx/decoder.onnx``): what
``evaluate`` scores a streamed export with, which holds the decoder alone (no full-sequence model).

Each row's real tokens are fed as the decoder feeds them in generation: the first by a one-token prefill,
each next one by a step on the cache, the logits of every position kept (teacher forcing). Position t's
logits are the same function of tokens 0..t as the full-sequence model's, computed through the cache;
they agree with the full-sequence export's to float rounding (tested).
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np


def teacher_forced_logits(decoder, pad_id: int) -> Callable[[np.ndarray, np.ndarray | None], np.ndarray]:
    """``run(input_ids [b, s], token_type_ids) -> logits [b, s, vocab]`` through ``decoder`` (a
    ``DecoderSession``): row by row, each row's tokens up to its length (those that are not ``pad_id``,
    right-padded as the encoded splits are); padding positions get zeros (they carry no label)."""

    def run(input_ids: np.ndarray, token_type_ids: np.ndarray | None = None) -> np.ndarray:
        rows, seq = input_ids.shape
        out = None
        for row, ids in enumerate(np.asarray(input_ids)):
            length = int((ids != pad_id).sum())
            steps = [decoder.prefill([[int(ids[0])]])]  # [1, vocab]: position 0
            steps += [decoder.step(np.array([ids[t]], np.int64)) for t in range(1, length)]
            if out is None:
                out = np.zeros((rows, seq, steps[0].shape[-1]), np.float32)
            out[row, :length] = np.concatenate(steps, axis=0)  # [length, vocab]
        return out

    return run
