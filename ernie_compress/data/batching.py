"""Tokenize a split once, then cut it into padded batches grouped by length.

Padding costs compute on a CPU: the demo reviews have a median of 46 characters but a long tail,
so a batch padded to its longest member wastes most of its work. Training batches are drawn from
length-sorted pools of a few dozen batches (shuffled within and across pools, seeded), which keeps
randomness while cutting padding; evaluation batches are sorted by length outright and the
predictions put back into the original order.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import numpy as np

from ..errors import UserError
from .tasks import Example
from .tokenizer import ErnieTokenizer


@dataclass
class Batch:
    """``input_ids``/``token_type_ids``: int64 [batch, seq]; ``labels``: int64 [batch];
    ``index``: positions of these examples in the split."""

    input_ids: np.ndarray
    token_type_ids: np.ndarray
    labels: np.ndarray
    index: np.ndarray


class EncodedSplit:
    """A split tokenized once: variable-length id rows plus integer labels (-1 = unlabeled)."""

    def __init__(self, examples: Sequence[Example], tokenizer: ErnieTokenizer, labels: Sequence[str],
                 max_length: int):
        if not examples:
            raise UserError("no examples to encode")
        label_id = {label: i for i, label in enumerate(labels)}
        pairs = None if examples[0].text_b is None else [e.text_b or "" for e in examples]
        enc = tokenizer.encode_batch([e.text_a for e in examples], pairs, max_length=max_length)
        self.pad_id = tokenizer.pad_id
        self.lengths = (enc.input_ids != tokenizer.pad_id).sum(axis=1)  # [n]
        self.input_ids = enc.input_ids  # [n, longest]
        self.token_type_ids = enc.token_type_ids
        try:
            self.labels = np.array([-1 if e.label is None else label_id[e.label] for e in examples],
                                   dtype=np.int64)
        except KeyError as exc:
            raise UserError(f"label {exc.args[0]!r} is not one of the model's labels "
                            f"{list(labels)[:10]}") from None

    def __len__(self) -> int:
        return len(self.labels)

    def _batch(self, index: np.ndarray) -> Batch:
        seq = int(self.lengths[index].max())
        return Batch(self.input_ids[index, :seq], self.token_type_ids[index, :seq],
                     self.labels[index], index)

    def train_batches(self, batch_size: int, rng: np.random.Generator,
                      pool_batches: int = 50) -> Iterator[Batch]:
        """Shuffled batches of similar length (one epoch)."""
        order = rng.permutation(len(self))
        batches = []
        pool = batch_size * pool_batches
        for start in range(0, len(order), pool):
            chunk = order[start:start + pool]
            chunk = chunk[np.argsort(self.lengths[chunk], kind="stable")]
            batches += [chunk[i:i + batch_size] for i in range(0, len(chunk), batch_size)]
        for i in rng.permutation(len(batches)):
            yield self._batch(batches[i])

    def eval_batches(self, batch_size: int) -> Iterator[Batch]:
        """Batches in length order; ``Batch.index`` says where each row belongs."""
        order = np.argsort(self.lengths, kind="stable")
        for start in range(0, len(order), batch_size):
            yield self._batch(order[start:start + batch_size])

    def num_train_batches(self, batch_size: int, pool_batches: int = 50) -> int:
        pool = batch_size * pool_batches
        full, rest = divmod(len(self), pool)
        return full * pool_batches + -(-rest // batch_size)


def encode_splits(task, tokenizer: ErnieTokenizer, labels: Sequence[str], max_length: int,
                  names: Sequence[str] = ("train", "dev", "test")) -> dict[str, EncodedSplit]:
    """Tokenize the named splits of a :class:`~.tasks.TaskData` that it has."""
    return {name: EncodedSplit(task.splits[name], tokenizer, labels, max_length)
            for name in names if task.splits.get(name)}
