"""How a quantize result prints, per scheme (``render.render_quantize`` picks the lines by the scheme
registry's name for the checkpoint's method)."""

from __future__ import annotations

import pytest

from ernie_compress.render import render_quantize

BASE = {"stage": "quantize", "task": "text", "metrics": {"test": {"accuracy": 0.8}},
        "parent_metrics": {"test": {"accuracy": 0.81}}, "quantized_layers": 12, "delta_points": -1.0,
        "out": "/tmp/q", "seconds": 3.0}
SCHEMES = {
    "qat": ({"method": "qat", "dtype": "int8", "weight_bits": 7, "reduce_range": True, "activation_bits": 8,
             "activation_observer": "moving_average_abs_max"},
            ["test (int8, fake-quant)", "12 Linear layers quantized: 7-bit weights per channel (reduce_range), "
             "8-bit activations (moving_average_abs_max); -1.00 points vs FP32"]),
    "weight_only_gptq": ({"method": "weight_only_gptq", "dtype": "int4", "weight_bits": 4, "group_size": 32},
                         ["test (weight-only int4)", "12 Linear layers: 4-bit weights (groups of 32 rows), float "
                          "activations; -1.00 points vs FP32"]),
    "fp16": ({"method": "fp16", "dtype": "fp16"}, ["test (fp16)", "12 tensors in FP16; -1.00 points vs FP32"]),
}


@pytest.mark.parametrize("method", SCHEMES)
def test_each_scheme_prints_its_own_summary(capsys, method):
    scheme, expected = SCHEMES[method]
    render_quantize(dict(BASE, scheme=scheme))
    out = capsys.readouterr().out
    for line in expected:
        assert line in out, out
    assert "test (FP32 parent)" in out and "wrote /tmp/q in 3 s" in out


def test_the_quantize_stage_renders_through_this_function():
    from ernie_compress.render import renderer_for

    assert renderer_for("quantize") is render_quantize
