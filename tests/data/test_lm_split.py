"""Causal-LM rows: next-token labels, and perplexity computed from logits against hand values."""

from __future__ import annotations

import numpy as np
import pytest

from ernie_compress.data.batching import IGNORE_INDEX, EncodedLMSplit
from ernie_compress.data.tasks import Example
from ernie_compress.data.tokenizer import ErnieTokenizer
from ernie_compress.metrics import score_split

VOCAB = ["[PAD]", "[CLS]", "[SEP]", "[MASK]", "[UNK]", "好", "差", "很"]


def _split():
    return EncodedLMSplit([Example("很好", None, None), Example("差", None, None)], ErnieTokenizer(VOCAB), 16)


def test_labels_are_the_next_token_and_ignore_padding():
    split = _split()
    assert split.input_ids.tolist() == [[1, 7, 5, 2], [1, 6, 2, 0]]
    assert split.labels.tolist() == [[7, 5, 2, IGNORE_INDEX], [6, 2, IGNORE_INDEX, IGNORE_INDEX]]


def test_perplexity_of_uniform_and_of_confident_logits():
    split = _split()
    uniform = lambda ids, types: np.zeros((*ids.shape, len(VOCAB)), dtype=np.float32)  # noqa: E731
    assert score_split(uniform, split)["perplexity"] == pytest.approx(len(VOCAB))
    assert score_split(uniform, split)["tokens"] == 5

    def confident(ids, types):  # puts logit 2 on the right next token everywhere
        out = np.zeros((*ids.shape, len(VOCAB)), dtype=np.float32)
        nxt = np.concatenate([ids[:, 1:], np.zeros_like(ids[:, :1])], axis=1)
        np.put_along_axis(out, nxt[..., None], 2.0, axis=-1)
        return out

    p_right = np.exp(2.0) / (np.exp(2.0) + len(VOCAB) - 1)
    assert score_split(confident, split)["perplexity"] == pytest.approx(1 / p_right, rel=1e-6)
