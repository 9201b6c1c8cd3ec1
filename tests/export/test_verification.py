"""Export verification of per-token heads reads the real tokens only: a padding row's logits are
never used, so a difference there must not fail an export, while the same difference on a real
token must."""

from __future__ import annotations

import numpy as np
import pytest

from ernie_compress.errors import UserError
from ernie_compress.export import verify_int8

PAD = 0


class _Shifted:
    """A session returning the reference with ``delta`` added at one row's ``position``."""

    def __init__(self, reference, position, delta):
        self.out = reference.copy()
        self.out[1, position, 1] += delta  # one tag's logit of one token

    def run(self, ids, types):
        return self.out[:len(ids)]  # the 4 samples go in one batch


def _samples():
    rng = np.random.default_rng(0)
    ids = rng.integers(1, 50, size=(4, 12)).astype(np.int64)
    ids[:, 8:] = PAD  # every row: 8 tokens, 4 padding positions
    reference = rng.normal(size=(4, 12, 7)).astype(np.float32) * 3  # [batch, seq, tags]
    return ids, reference


def _check(ids, reference, session, kind="token_classification", pad_id=PAD):
    return verify_int8(session, reference, ids, np.zeros_like(ids), 0.95, 0.02, kind, pad_id)


def test_a_difference_at_a_padding_position_does_not_count():
    ids, reference = _samples()
    result = _check(ids, reference, _Shifted(reference, 10, 1.0))
    assert result["passed"] and result["max_abs_diff"] == 0.0


def test_the_same_difference_at_a_real_token_fails():
    ids, reference = _samples()
    with pytest.raises(UserError, match="failed verification"):
        _check(ids, reference, _Shifted(reference, 3, 1.0))


def test_without_a_pad_id_or_for_sequence_heads_every_position_counts():
    ids, reference = _samples()
    shifted = _Shifted(reference, 10, 1.0)
    with pytest.raises(UserError, match="failed verification"):
        _check(ids, reference, shifted, pad_id=None)
    with pytest.raises(UserError, match="failed verification"):
        _check(ids, reference, shifted, kind="question_answering")
