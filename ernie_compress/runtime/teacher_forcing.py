"""A causal LM's logits at every position, through its KV-cache decoder (``onnx/decoder.onnx``): what
``evaluate`` scores a streamed export, or one with an int8 cache, with (``--score-with decoder``).

The rows' tokens are fed as the decoder feeds them in generation: the first of every row by a one-token
prefill, each next one by a step on the cache, the logits of every position kept (teacher forcing). The
rows of a batch go through together, step by step; a row that has ended is fed padding, whose logits are
dropped (it comes after the row's last token, so no real position attends to it). Position t's logits are
the same function of tokens 0..t as the full-sequence model's, computed through the cache; they agree
with the full-sequence export's to float rounding (tested).
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np


def teacher_forced_logits(decoder, pad_id: int) -> Callable[[np.ndarray, np.ndarray | None], np.ndarray]:
    """``run(input_ids [b, s], token_type_ids) -> logits [b, s, vocab]`` through ``decoder`` (a
    ``DecoderSession``): each row's tokens up to its length (those that are not ``pad_id``, right-padded
    as the encoded splits are); padding positions get zeros (they carry no label)."""

    def run(input_ids: np.ndarray, token_type_ids: np.ndarray | None = None) -> np.ndarray:
        ids = np.asarray(input_ids, np.int64)
        lengths = (ids != pad_id).sum(axis=1)  # [b]
        first = decoder.prefill([[int(row[0])] for row in ids])  # [b, vocab]: position 0 of every row
        out = np.zeros((*ids.shape, first.shape[-1]), np.float32)
        out[:, 0] = first
        for t in range(1, int(lengths.max())):
            out[:, t] = decoder.step(ids[:, t])  # [b, vocab]; rows shorter than t + 1 are dropped below
        out[np.arange(ids.shape[1])[None, :] >= lengths[:, None]] = 0.0
        return out

    return run
