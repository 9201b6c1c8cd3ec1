"""Tokenize a task's splits the way its kind needs (``batching.py`` for classification, tagging
and causal LM, ``spans.py`` for extractive QA)."""

from __future__ import annotations

from collections.abc import Sequence

from .batching import EncodedLMSplit, EncodedSplit
from .spans import EncodedSpanSplit
from .tokenizer import ErnieTokenizer
from .types import Example


def encode_splits(task, tokenizer: ErnieTokenizer, labels: Sequence[str], max_length: int,
                  names: Sequence[str] = ("train", "dev", "test")) -> dict[str, EncodedSplit]:
    """Tokenize the named splits of a :class:`~.tasks.TaskData` that it has."""
    return {name: encode_split(task.kind, task.splits[name], tokenizer, labels, max_length)
            for name in names if task.splits.get(name)}


def encode_split(kind: str, examples: Sequence[Example], tokenizer: ErnieTokenizer,
                 labels: Sequence[str], max_length: int) -> EncodedSplit:
    """One split encoded for a task kind (QA rows are question + context windows)."""
    if kind == "question_answering":
        return EncodedSpanSplit(examples, tokenizer, max_length)
    if kind == "causal_lm":
        return EncodedLMSplit(examples, tokenizer, max_length)
    return EncodedSplit(examples, tokenizer, labels, max_length)
