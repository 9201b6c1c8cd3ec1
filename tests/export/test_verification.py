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


# -- the bounds' exact values: a difference exactly at a bound passes, the next representable one fails --

class _Plus:
    """A session returning ``reference + delta`` (float32 values exactly representable here)."""

    def __init__(self, reference, delta):
        self.out, self.done = reference + delta, 0

    def run(self, ids, types):  # called 16 rows at a time, in order
        self.done += len(ids)
        return self.out[self.done - len(ids):self.done]


def _dyadic() -> np.ndarray:
    """Classification logits [4, 5] in quarters (exact in float32), each row of mean 0; logit scale 4."""
    return np.array([[-4.0, 4.0, 0.0, 0.0, 0.0], [-1.0, 1.0, 0.5, -0.5, 0.0],
                     [2.0, -2.0, 0.0, 0.25, -0.25], [0.0, 0.0, 0.0, 0.0, 0.0]], np.float32)


def test_logit_scale_is_the_largest_centred_logit():
    from ernie_compress.export import logit_scale

    assert logit_scale(np.array([[100.0, 102.0, 104.0]])) == 2.0  # a shift of every logit does not count
    assert logit_scale(_dyadic()) == 4.0
    assert logit_scale(np.zeros((2, 3))) == 1.0


def test_a_float_difference_exactly_at_the_tolerance_passes():
    from ernie_compress.export import verify

    reference = _dyadic()
    ids = np.ones((4, 3), np.int64)
    assert verify("onnx", _Plus(reference, np.float32(0.125)), reference, ids, ids * 0, 0.125)["max_abs_diff"] == 0.125
    with pytest.raises(UserError, match="exceeds the tolerance"):
        verify("onnx", _Plus(reference, np.float32(0.25)), reference, ids, ids * 0, 0.125)
    # relative (FP16): 0.125 of a logit scale 4 is 3.125%
    eighth = np.float32(0.125)
    assert verify("fp16", _Plus(reference, eighth), reference, ids, ids * 0, 0.03125, relative=True)["passed"]
    with pytest.raises(UserError, match="of the logit scale"):
        verify("fp16", _Plus(reference, np.float32(0.125)), reference, ids, ids * 0, 0.03, relative=True)
    with pytest.raises(UserError):  # absolute 0.125 would pass a tolerance of 0.2; 3.125% of the scale does not
        verify("fp16", _Plus(reference, np.float32(0.125)), reference, ids, ids * 0, 0.02, relative=True)


def test_int8_bounds_hold_at_their_exact_values():
    """Agreement exactly 95% passes (19 of 20 rows), 90% fails; a relative difference exactly at the
    bound passes, above it fails."""
    reference = np.tile(np.array([[-4.0, 4.0, 0.0]], np.float32), (20, 1))  # every row predicts label 1; scale 4
    ids = np.ones((20, 3), np.int64)
    flipped = reference.copy()
    flipped[0] = [4.0, -4.0, 0.0]
    assert verify_int8(_Plus(flipped, 0), reference, ids, ids * 0, 0.95, 10.0)["prediction_agreement"] == 0.95
    flipped[1] = [4.0, -4.0, 0.0]
    with pytest.raises(UserError, match="90.0% of samples"):
        verify_int8(_Plus(flipped, 0), reference, ids, ids * 0, 0.95, 10.0)
    assert verify_int8(_Plus(reference, np.float32(0.125)), reference, ids, ids * 0, 0.95, 0.03125)["passed"]
    with pytest.raises(UserError, match="3.1% of the logit scale"):
        verify_int8(_Plus(reference, np.float32(0.125)), reference, ids, ids * 0, 0.95, 0.03)


def test_more_samples_than_one_run_each_go_with_their_own_token_types():
    """Verification runs 16 rows at a time: rows 16.. get their own ids and types."""
    from ernie_compress.export import verify

    rng = np.random.default_rng(2)
    ids = rng.integers(1, 50, size=(40, 6)).astype(np.int64)
    types = rng.integers(0, 2, size=(40, 6)).astype(np.int64)

    class Echo:
        def run(self, i, t):
            return np.stack([i.sum(axis=1), t.sum(axis=1)], axis=1).astype(np.float32)  # [rows, 2]

    reference = Echo().run(ids, types)
    assert verify("onnx", Echo(), reference, ids, types, 0.0)["max_abs_diff"] == 0.0


def test_decoder_checks_hold_at_their_exact_bounds():
    from types import SimpleNamespace

    from ernie_compress.stages.export import _check_decoder

    cfg = SimpleNamespace(tolerance=1e-3, int8_min_agreement=0.95, int8_max_relative_diff=0.02)
    at = {"greedy_tokens_equal": True, "max_abs_diff": 1e-3, "teacher_forced_agreement": 0.95,
          "max_relative_diff": 0.02}
    _check_decoder(cfg, 0, at)
    _check_decoder(cfg, 4, at)
    for level, change in ((0, {"max_abs_diff": 1.01e-3}), (0, {"greedy_tokens_equal": False}),
                          (4, {"teacher_forced_agreement": 0.94}), (4, {"max_relative_diff": 0.0201})):
        with pytest.raises(UserError, match="failed verification"):
            _check_decoder(cfg, level, {**at, **change})
