"""data/batching.py: an epoch of training batches holds every example once, as many batches as
``num_train_batches`` says (the schedule's length), each cut to its longest row and no shorter;
evaluation batches cover the split in length order; ``rows`` keeps unsorted calibration rows whole.

Lengths are drawn so that pools, batches and the last partial batch are all uneven: the cases where
an off-by-one or a length read from one row instead of all would show.
"""

from __future__ import annotations

import numpy as np
import pytest

from ernie_compress.data.batching import EncodedSplit
from ernie_compress.data.tasks import Example
from ernie_compress.data.tokenizer import ErnieTokenizer

VOCAB = ["[PAD]", "[CLS]", "[SEP]", "[MASK]", "[UNK]", "好", "差", "很"]


def _split(n: int) -> EncodedSplit:
    rng = np.random.default_rng(n)
    texts = ["".join(rng.choice(list("好差很"), size=rng.integers(1, 12))) for _ in range(n)]
    return EncodedSplit([Example(t, None, "pos" if i % 2 else "neg") for i, t in enumerate(texts)],
                        ErnieTokenizer(VOCAB), ["neg", "pos"], 32)


def _whole(split: EncodedSplit, batch) -> None:
    """Each row is its example's ids up to the batch's longest, none cut, no column all padding."""
    real = (batch.input_ids != split.pad_id).sum(axis=1)  # [batch]
    np.testing.assert_array_equal(real, split.lengths[batch.index])
    assert batch.input_ids.shape[1] == split.lengths[batch.index].max()
    np.testing.assert_array_equal(batch.labels, split.labels[batch.index])


@pytest.mark.parametrize("n, batch_size, pool_batches", [(103, 8, 3), (96, 8, 3), (7, 4, 50), (50, 1, 2)])
def test_an_epoch_holds_every_example_once_in_the_counted_batches(n, batch_size, pool_batches):
    split = _split(n)
    batches = list(split.train_batches(batch_size, np.random.default_rng(0), pool_batches))
    assert len(batches) == split.num_train_batches(batch_size, pool_batches)
    assert sorted(np.concatenate([b.index for b in batches]).tolist()) == list(range(n))
    assert all(1 <= len(b.index) <= batch_size for b in batches)
    for batch in batches:
        _whole(split, batch)


def test_evaluation_batches_cover_the_split_in_length_order():
    split = _split(45)
    batches = list(split.eval_batches(8))
    order = np.concatenate([b.index for b in batches])
    assert sorted(order.tolist()) == list(range(45)) and len(batches) == 6
    assert np.all(np.diff(split.lengths[order]) >= 0)
    for batch in batches:
        _whole(split, batch)


def test_rows_in_any_order_are_kept_whole():
    split = _split(30)
    longest, shortest = int(np.argmax(split.lengths)), int(np.argmin(split.lengths))
    for rows in ([longest, shortest], [shortest, longest, 3], [5, longest, shortest]):
        _whole(split, split.rows(rows))
