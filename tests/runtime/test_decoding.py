"""runtime/decoding.OnnxDecoder's cache on the CPU: kept in ONNX Runtime's tensors (I/O binding) and,
where the graph's GroupQueryAttention computes every present, one buffer bound as past and present:
the same logits as numpy feeds, for a left-padded batch, across the buffer's growth."""

from __future__ import annotations

import numpy as np
import pytest

from ernie_compress.export.decoder_onnx import SHARED_BUFFER_KEY, build_decoder, decoder_weights
from ernie_compress.models import model_state
from ernie_compress.runtime import decoding
from ernie_compress.runtime.decoding import OnnxDecoder
from tests.export.test_decoder_onnx import _decoder, _session

ROWS = [[1, 7, 9, 23, 5, 6, 11, 12, 13], [1, 40, 41]]  # left-padded to 9


def _graph(fused: bool):
    model = _decoder(2, head_dim=16)  # GroupQueryAttention's CPU kernel: head sizes a multiple of 16
    return build_decoder(model.config, decoder_weights(model.config, model_state(model), None), fused_attention=fused)


def _run(decoder: OnnxDecoder, steps: list[np.ndarray]) -> np.ndarray:
    out = [decoder.prefill(ROWS)]
    out += [decoder.step(tokens) for tokens in steps]
    return np.stack(out)  # [steps + 1, b, vocab]


@pytest.mark.parametrize("fused", [False, True])
def test_the_cache_kept_in_ort_values_gives_the_numpy_feeds_logits(fused, monkeypatch):
    """Bit for bit, over more steps than the shared buffer first holds (it grows twice here)."""
    monkeypatch.setattr(decoding, "BUFFER_ROOM", 2)
    session = _session(_graph(fused))
    steps = [np.random.default_rng(i).integers(3, 60, len(ROWS)) for i in range(12)]
    bound, plain = OnnxDecoder(session, cache_on="cpu"), OnnxDecoder(session)
    np.testing.assert_array_equal(_run(bound, steps), _run(plain, steps))
    assert bound.shared == fused  # GroupQueryAttention's graph says its cache may be shared; the standard one not
    assert bound.cache_bytes() == plain.cache_bytes()  # the positions in use, not the buffer's capacity
    if fused:  # 9 prompt positions + 2 of room = 11, doubled once the 12th is needed
        assert bound.cache[0].shape()[2] == 22


def test_only_a_graph_whose_every_present_is_the_fused_kernels_may_share_its_buffer():
    """The int8 cache's and the standard graph's presents are Concats (a new tensor): no metadata."""
    model = _decoder(2, head_dim=16)
    weights = decoder_weights(model.config, model_state(model), None)
    scales = [(np.full((2, 16), 0.05, np.float32), np.full((2, 16), 0.05, np.float32))] * model.config.num_hidden_layers
    graphs = {"fused": build_decoder(model.config, weights, fused_attention=True),
              "standard": build_decoder(model.config, weights),
              "fused over an int8 cache": build_decoder(model.config, weights, fused_attention=True, kv_scales=scales),
              "full sequence": build_decoder(model.config, weights, full_sequence=True, fused_attention=True)}
    shared = {name: {p.key: p.value for p in g.metadata_props}.get(SHARED_BUFFER_KEY) for name, g in graphs.items()}
    assert shared == {"fused": "shared", "standard": None, "fused over an int8 cache": None, "full sequence": None}


def test_open_on_a_cpu_shares_the_buffer_where_the_graph_allows_it(tmp_path):
    """The measured default (benchmarks/decode_loop.py): a shared buffer for GroupQueryAttention's graph,
    numpy feeds for the standard graph and wherever the caller asks for the cache in host memory."""
    import onnx

    from ernie_compress.runtime.backends import RuntimeConfig

    opened = {}
    for fused in (True, False):
        path = tmp_path / f"{fused}.onnx"
        onnx.save(_graph(fused), str(path))
        opened[fused] = OnnxDecoder.open(path, RuntimeConfig(threads=1))
        assert OnnxDecoder.open(path, RuntimeConfig(threads=1), host_cache=True).cache_on is None
    assert opened[True].shared and opened[True].cache_on == "cpu"
    assert not opened[False].shared and opened[False].cache_on is None
    assert opened[True].fork().shared  # a fork keeps the shared buffer
