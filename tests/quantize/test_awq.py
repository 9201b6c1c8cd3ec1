"""quantize/awq.py and ``quantize --weight-only ... --method awq``: the searched error is the calibration
output error, folded scales leave the float model's function unchanged (grouped-query values included),
the search never does worse than rounding to nearest, and the checkpoint exports and verifies."""

from __future__ import annotations

import json

import numpy as np
import pytest
from typer.testing import CliRunner

from ernie_compress.cli import app
from ernie_compress.models import build_model, model_from_state, model_state
from ernie_compress.models.families import config_from_dict, family_of
from ernie_compress.models.presets import resolve_preset
from ernie_compress.paddle_env import import_paddle
from ernie_compress.quantize import awq
from ernie_compress.quantize.weight_only import quantize_rtn
from tests.helpers import cli_json

paddle = import_paddle()


def test_output_error_is_the_calibration_output_error():
    rng = np.random.default_rng(0)
    x, w = rng.normal(size=(50, 16)), rng.normal(size=(16, 6))  # X [n, in], W [in, out]
    rows = rng.uniform(0.5, 2.0, 16)
    rounder = lambda weight: quantize_rtn(weight.astype(np.float32), 4, 8)  # noqa: E731
    codes, scales = rounder(w * rows[:, None])
    rounded = codes * np.repeat(scales, 8, axis=0)
    direct = np.sum((x @ w - (x / rows) @ rounded) ** 2) * 2 / len(x)
    hessian = 2 * x.T @ x / len(x)
    assert awq.output_error(w, hessian, rounder, rows) == pytest.approx(direct, rel=1e-4)


def _gqa_lm():
    keys = dict(resolve_preset("ernie45-tiny"), vocab_size=60, hidden_dropout_prob=0.0,
                attention_probs_dropout_prob=0.0)
    paddle.seed(3)
    model = build_model(config_from_dict(keys))
    model.eval()
    return model


def test_folded_scales_leave_the_float_model_unchanged():
    model = _gqa_lm()
    config, family = model.config, family_of(model.config)
    assert config.num_attention_heads > config.num_key_value_heads  # grouped-query: the v -> o_proj edge repeats
    state = {k: v.copy() for k, v in model_state(model).items()}
    rng = np.random.default_rng(1)
    edges = list(family.smoothing_map(config.num_hidden_layers))
    assert {e.part for e in edges} == {None, "v", "up"}
    for edge in edges:
        columns, index = family.smoothing_columns(config, edge, state[f"{edge.layers[0]}.weight"].shape[0])
        awq.fold_scales_(state, edge, rng.uniform(0.3, 3.0, int(index.max()) + 1), columns, index)
    ids = paddle.to_tensor(np.array([[1, 7, 9, 23, 5, 41, 2]]))
    with paddle.no_grad():
        before = model(ids).numpy()
        after = model_from_state(config, state, "folded")(ids).numpy()
    assert not np.allclose(state["ernie.layers.0.input_layernorm.weight"],
                           model_state(model)["ernie.layers.0.input_layernorm.weight"])
    np.testing.assert_allclose(after, before, atol=2e-4, rtol=1e-4)


def test_the_search_never_does_worse_than_rounding_to_nearest():
    rng = np.random.default_rng(2)
    x = rng.normal(size=(200, 32)) * np.where(np.arange(32) < 4, 20.0, 1.0)  # four outlier channels
    w = rng.normal(size=(32, 8))
    hessian = 2 * x.T @ x / len(x)
    rounder = lambda weight: quantize_rtn(weight.astype(np.float32), 4, 16)  # noqa: E731
    edge = awq.ScaleMapping("norm", ("linear",))
    found, scales = awq.search_edge(edge, [w], [hessian], [len(x)], rounder, np.arange(32), 32)
    assert found.loss <= found.rtn_loss and found.alpha > 0 and found.loss < 0.9 * found.rtn_loss
    assert scales[:4].min() > scales[4:].max()  # the outlier channels are scaled up


def test_awq_checkpoint_records_its_search_and_exports_verified(tiny_lm, tmp_path):
    out = tmp_path / "awq"
    made = cli_json(["quantize", str(tiny_lm), "--weight-only", "int4", "--group-size", "8", "--method", "awq",
                     "--calib-samples", "32", "--out", str(out)])
    assert made["metrics"]["test"]["perplexity"] > 0
    quant = json.loads((out / "config.json").read_text())
    quant = quant.get("quantization") or quant["ernie_compress"]["quantization"]
    assert quant["method"] == "weight_only_awq" and quant["awq"]["edges"] == 4 * 2  # 4 edges a layer, 2 layers
    assert quant["awq"]["error_vs_rtn_median"] <= 1.0 and quant["rounding"]["awq"]["linears"] == 8
    exported = cli_json(["export", str(out), "--format", "onnx", "--out", str(tmp_path / "e")])
    assert exported["verification"]["decoder"]["passed"] and exported["files"]["decoder"]["kernels"]["MatMulNBits"]
    res = CliRunner().invoke(app, ["--quiet", "quantize", str(tiny_lm), "--weight-only", "int4", "--method", "awq",
                                   "--stream", "--out", str(tmp_path / "s")])
    assert res.exit_code == 2 and "awq runs in memory" in res.stderr and len(res.stderr.strip().splitlines()) == 1
