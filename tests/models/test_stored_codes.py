"""models/stored_codes.py: int4 packing, and expanding stored codes (placeholders stay placeholders)."""

from __future__ import annotations

import numpy as np
import pytest

from ernie_compress.errors import UserError
from ernie_compress.lazy_weights import is_placeholder, placeholder
from ernie_compress.models.stored_codes import (CODES, SCALES, dequantize, expand_codes, pack_int4, stored_tensors,
                                                unpack_int4)


@pytest.mark.parametrize("rows", [8, 7])
def test_int4_codes_pack_two_a_byte_and_come_back(rows):
    codes = np.random.default_rng(0).integers(-7, 8, size=(rows, 5)).astype(np.int8)
    packed = pack_int4(codes)
    assert packed.dtype == np.uint8 and packed.shape == ((rows + 1) // 2, 5)
    assert packed[0, 0] == (codes[0, 0] + 8) | ((codes[1, 0] + 8) << 4)  # row 0 low nibble, row 1 high
    np.testing.assert_array_equal(unpack_int4(packed, rows), codes)


@pytest.mark.parametrize(("bits", "group", "transposed"), [(4, 4, False), (8, None, False), (8, None, True)])
def test_expanded_codes_are_the_dequantized_weights_bit_for_bit(bits, group, transposed):
    rng = np.random.default_rng(1)
    top = 2 ** (bits - 1) - 1
    codes = rng.integers(-top, top + 1, size=(16, 6)).astype(np.int8)  # [in, out]
    scales = rng.random(((16 // group) if group else 1, 6)).astype(np.float32)
    float_weight = dequantize(codes, scales, group)
    if transposed:  # a tied head: the embedding [vocab, hidden] holds the head's [hidden, vocab] transposed
        float_weight = np.ascontiguousarray(float_weight.T)
    scheme = {"storage": "codes", "weights": {"w": {"bits": bits, "group_size": group, "transposed": transposed}}}
    state = {"other": np.ones(3, np.float32), **stored_tensors("w", codes, scales, bits)}
    expanded = expand_codes(state, scheme)
    assert sorted(expanded) == ["other", "w"]
    assert expanded["w"].dtype == np.float32 and expanded["w"].tobytes() == float_weight.tobytes()
    shapes = expand_codes({k: placeholder(v.shape, v.dtype) for k, v in state.items()}, scheme)
    assert is_placeholder(shapes["w"]) and shapes["w"].shape == float_weight.shape  # nothing allocated


def test_float_storage_and_unknown_codes():
    state = {"w": np.ones((2, 2), np.float32)}
    assert expand_codes(state, {"weights": {}}) is state
    with pytest.raises(UserError, match="without an entry in the scheme"):
        expand_codes({"x" + CODES: np.zeros((2, 2), np.int8), "x" + SCALES: np.ones((1, 2), np.float32)},
                     {"storage": "codes", "weights": {}})
