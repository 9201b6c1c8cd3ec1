"""Memory of ``export --stream`` measured by the OS in a child process, on the deep, narrow weight-only
decoder of tests/quantize/test_streaming_memory.py (~320 MB of float weights, 32 layers): writing the
decoder and verifying it against the streamed NumPy reference must stay far below the checkpoint's size
on top of a streamed export of a one-layer model, which is what reading the whole model would cost (the
in-memory export of the same checkpoint peaks at several times its size)."""

from __future__ import annotations

import pytest

from ernie_compress.checkpoint import WEIGHTS_FILE
from tests.helpers import cli_json
from tests.quantize.test_streaming_memory import MIB, _peak, _write_decoder


@pytest.fixture(scope="module")
def quantized(tmp_path_factory):
    root = tmp_path_factory.mktemp("export-memory")
    for name, shape in (("deep", dict(layers=32, hidden=512, ffn=1536)), ("tiny", dict(layers=1, hidden=32, ffn=64))):
        _write_decoder(root / name, **shape)
        cli_json(["quantize", str(root / name), "--weight-only", "int4", "--stream", "--out", str(root / f"{name}-w4")])
    return root


def test_a_streamed_export_stays_far_below_the_checkpoints_size(quantized, tmp_path):
    size = (quantized / "deep" / WEIGHTS_FILE).stat().st_size  # ~320 MB (the float parent's; the W4 one is as big)
    stream = ["--format", "onnx", "--stream"]
    baseline = _peak(["export", str(quantized / "tiny-w4"), *stream, "--out", str(tmp_path / "t")])
    bound = baseline + size // 2
    peak = _peak(["export", str(quantized / "deep-w4"), *stream, "--out", str(tmp_path / "d")])
    assert peak < bound, (f"export --stream peaked at {peak / MIB:.0f} MiB; bound {bound / MIB:.0f} MiB "
                          f"(baseline {baseline / MIB:.0f} MiB + half of {size / MIB:.0f} MiB of weights)")
    assert (tmp_path / "d" / "onnx" / "decoder.onnx.data").stat().st_size > size // 10  # the int4 weights were written
