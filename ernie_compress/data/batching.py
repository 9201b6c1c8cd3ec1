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
from .ner import bio_viterbi
from .tokenizer import ErnieTokenizer
from .types import Example


@dataclass
class Batch:
    """``input_ids``/``token_type_ids``: int64 [batch, seq]; ``labels``: int64 [batch];
    ``index``: positions of these examples in the split."""

    input_ids: np.ndarray
    token_type_ids: np.ndarray
    labels: np.ndarray
    index: np.ndarray


IGNORE_INDEX = -100  # token positions without a label ([CLS], [SEP], padding, extra word pieces)


class EncodedSplit:
    """A split tokenized once: variable-length id rows plus integer labels (-1 = unlabeled).

    Sequence labels (NER) are per character (``Example.label`` is a tuple of tags, one per
    character of ``text_a``): ``labels`` is then [n, seq] with each character's tag on its first
    token and :data:`IGNORE_INDEX` elsewhere, and ``char_index`` maps tokens back to characters.
    """

    def __init__(self, examples: Sequence[Example], tokenizer: ErnieTokenizer, labels: Sequence[str],
                 max_length: int):
        if not examples:
            raise UserError("no examples to encode")
        label_id = {label: i for i, label in enumerate(labels)}
        self.label_names = list(labels)
        self.token_level = isinstance(examples[0].label, tuple)
        if self.token_level:
            self._encode_tags(examples, tokenizer, label_id, max_length)
            return
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

    def _encode_tags(self, examples, tokenizer, label_id, max_length) -> None:
        enc, word_ids = tokenizer.encode_characters([e.text_a for e in examples], max_length)
        self.pad_id = tokenizer.pad_id
        self.input_ids, self.token_type_ids = enc.input_ids, enc.token_type_ids
        self.lengths = (enc.input_ids != tokenizer.pad_id).sum(axis=1)
        self.labels = np.full(enc.input_ids.shape, IGNORE_INDEX, dtype=np.int64)  # [n, seq]
        self.char_index = np.full(enc.input_ids.shape, -1, dtype=np.int64)
        self.gold_tags = [list(e.label) for e in examples]
        for row, (example, wids) in enumerate(zip(examples, word_ids)):
            seen = set()
            for pos, w in enumerate(wids):
                if w is None or w in seen:
                    continue
                seen.add(w)
                tag = example.label[w]
                if tag not in label_id:
                    raise UserError(f"tag {tag!r} is not one of the model's labels {self.label_names[:10]}")
                self.labels[row, pos] = label_id[tag]
                self.char_index[row, pos] = w

    def tags_from_logits(self, example: int, logits: np.ndarray) -> list[str]:
        """Character-level tags of one example from its token logits [seq, labels]: the most likely
        valid BIO sequence over its characters' first tokens; characters without a token
        (truncated) are tagged O."""
        tags = ["O"] * len(self.gold_tags[example])
        positions = np.flatnonzero(self.char_index[example, :len(logits)] >= 0)
        scores = logits[positions].astype(np.float64)  # [chars, labels]
        log_probs = scores - scores.max(-1, keepdims=True)
        log_probs -= np.log(np.exp(log_probs).sum(-1, keepdims=True))
        for pos, label in zip(positions, bio_viterbi(log_probs, self.label_names)):
            tags[self.char_index[example, pos]] = self.label_names[label]
        return tags

    def __len__(self) -> int:
        return len(self.labels)

    def _batch(self, index: np.ndarray) -> Batch:
        seq = int(self.lengths[index].max())
        labels = self.labels[index, :seq] if self.token_level else self.labels[index]
        return Batch(self.input_ids[index, :seq], self.token_type_ids[index, :seq], labels, index)

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

    def rows(self, indices) -> Batch:
        """The examples at ``indices`` as one batch (calibration samples)."""
        return self._batch(np.asarray(indices))

    def eval_batches(self, batch_size: int) -> Iterator[Batch]:
        """Batches in length order; ``Batch.index`` says where each row belongs."""
        order = np.argsort(self.lengths, kind="stable")
        for start in range(0, len(order), batch_size):
            yield self._batch(order[start:start + batch_size])

    def num_train_batches(self, batch_size: int, pool_batches: int = 50) -> int:
        pool = batch_size * pool_batches
        full, rest = divmod(len(self), pool)
        return full * pool_batches + -(-rest // batch_size)


class EncodedLMSplit(EncodedSplit):
    """Texts for causal language modelling: ``labels`` [n, seq] are the next token at each
    position (``[CLS]`` opens a text as its BOS, ``[SEP]`` closes it as EOS), :data:`IGNORE_INDEX`
    after the last real token."""

    def __init__(self, examples: Sequence[Example], tokenizer: ErnieTokenizer, max_length: int):
        super().__init__([Example(e.text_a, None, None) for e in examples], tokenizer, [], max_length)
        self.token_level = True
        self.labels = np.full(self.input_ids.shape, IGNORE_INDEX, dtype=np.int64)  # [n, seq]
        self.labels[:, :-1] = self.input_ids[:, 1:]
        self.labels[self.labels == tokenizer.pad_id] = IGNORE_INDEX
        self.labels[np.arange(self.input_ids.shape[1])[None, :] >= self.lengths[:, None]] = IGNORE_INDEX
        self.causal_lm = True
