"""Fake-quant layers: the scales they learn, the grid they round to, and the straight-through
gradient."""

from __future__ import annotations

import numpy as np
import pytest

from ernie_compress.models import build_model
from ernie_compress.paddle_env import import_paddle
from ernie_compress.quantize.fake_quant import collect_scales, fake_quant_model, quanted_layers
from ernie_compress.quantize.scheme import Int8Scheme, quantized_linear_names
from tests.helpers import random_ids

paddle = import_paddle()


@pytest.fixture
def qmodel(tiny_config):
    paddle.seed(0)
    no_dropout = tiny_config.replace(hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
    return fake_quant_model(build_model(no_dropout), Int8Scheme(method="qat", weight_bits=8))


def test_only_encoder_linears_are_quantized(tiny_config, qmodel):
    names = set(quanted_layers(qmodel))
    assert names == set(quantized_linear_names(build_model(tiny_config)))
    assert len(names) == 2 * 6 and not any("pooler" in n or "classifier" in n for n in names)


def test_activation_scale_tracks_abs_max_and_weights_round_to_grid(qmodel, tiny_config):
    qmodel.train()
    ids = paddle.to_tensor(random_ids(4, 8, tiny_config.vocab_size))
    for _ in range(30):
        qmodel(ids)
    layer = quanted_layers(qmodel)["ernie.encoder.layers.0.linear1"]
    captured = {}

    def capture(layer, inputs):  # returns None: the inputs stay as they are
        captured["x"] = inputs[0].numpy()

    handle = layer.register_forward_pre_hook(capture)
    qmodel.eval()
    qmodel(ids)
    handle.remove()
    scale = collect_scales(qmodel)["ernie.encoder.layers.0.linear1"]
    assert scale["input_absmax"] == pytest.approx(np.abs(captured["x"]).max(), rel=0.05)
    # the fake-quantized weight lies on the per-channel int8 grid
    w = layer.weight.numpy()
    wq = layer.weight_quanter(layer.weight).numpy()
    step = np.abs(w).max(axis=0) / 127
    np.testing.assert_allclose(wq / step, np.round(wq / step), atol=1e-3)
    assert np.abs(wq - w).max() <= step.max() / 2 + 1e-6


def test_straight_through_gradient_reaches_weights(qmodel, tiny_config):
    qmodel.train()
    out = qmodel(paddle.to_tensor(random_ids(2, 6, tiny_config.vocab_size)))
    out.sum().backward()
    grad = quanted_layers(qmodel)["ernie.encoder.layers.1.self_attn.q_proj"].weight.grad
    assert grad is not None and float(paddle.abs(grad).sum()) > 0


def test_paddleslim_import_noise_stays_out_of_our_output():
    """paddleslim logs "No module named 'scipy'" and "please use Paddle >= 2.3.0" while it is
    imported (scipy hidden here, as on a user's machine without it): none of it reaches stderr."""
    import subprocess
    import sys

    code = ("import sys; sys.modules['scipy'] = None\n"
            "from ernie_compress.paddle_env import import_paddle; import_paddle()\n"
            "import warnings; warnings.simplefilter('ignore')\n"
            "sys.stderr.write('BEGIN\\n')\n"
            "from ernie_compress.quantize.fake_quant import _require_paddleslim; _require_paddleslim()\n")
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert res.returncode == 0, res.stderr
    assert res.stderr.split("BEGIN\n", 1)[1] == ""
