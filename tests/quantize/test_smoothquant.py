"""quantize/smoothquant.py and ``quantize --w8a8``: the smoothed model balances activation and weight
ranges at alpha 0.5, the simulated activation quantization is ONNX Runtime's DynamicQuantizeLinear, and a
W8A8 checkpoint exports a DynamicQuantizeMatMul decoder verified against dygraph (a planted scale error
refused), scored through the decoder by evaluate; bad input is one line."""

from __future__ import annotations

import numpy as np
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper
from typer.testing import CliRunner

from ernie_compress.checkpoint import load_checkpoint
from ernie_compress.cli import app
from ernie_compress.data.encoding import encode_splits
from ernie_compress.data.tasks import TaskSpec, load_task
from ernie_compress.export import decoder_onnx
from ernie_compress.models import model_from_state
from ernie_compress.models.families import family_of
from ernie_compress.paddle_env import import_paddle
from ernie_compress.quantize import smoothquant
from ernie_compress.quantize.gptq import calibration_batches
from ernie_compress.quantize.scheme import quantized_linear_names
from ernie_compress.runtime.evaluate_export import TEACHER_FORCED
from tests.helpers import cli_json, train_tiny_checkpoint

paddle = import_paddle()
runner = CliRunner()


def test_smoothing_at_half_balances_activation_and_weight_ranges(tiny_lm):
    ckpt = load_checkpoint(tiny_lm)
    config, family = ckpt.config, family_of(ckpt.config)
    model = model_from_state(config, ckpt.state, "parent")
    task = load_task(TaskSpec.from_dict(ckpt.task))
    train = encode_splits(task, ckpt.tokenizer(), [], ckpt.max_seq_length, names=("train",))["train"]
    batches = calibration_batches(train, 16)
    names = quantized_linear_names(model)
    edges = [e for e in family.smoothing_map(config.num_hidden_layers) if e.part is None]  # a norm feeding one Linear
    consumers = [e.layers[0] for e in edges]
    before = smoothquant.collect_channel_absmax(model, consumers, batches, ckpt.tokenizer().pad_id)
    state = dict(ckpt.state)
    smoothquant.smooth_(state, family, config, edges, before, 0.5)
    after = smoothquant.collect_channel_absmax(model_from_state(config, state, "smoothed"), consumers, batches,
                                               ckpt.tokenizer().pad_id)
    for name in consumers:
        weight_max = np.abs(state[f"{name}.weight"]).max(axis=1)  # per input row
        np.testing.assert_allclose(after[name], weight_max, rtol=1e-3)  # max|X_j / s_j| = max|W_j s_j|
        assert not np.allclose(after[name], before[name], rtol=1e-2)
    assert set(consumers) <= set(names)


def test_simulated_activation_quantization_is_dynamic_quantize_linear():
    x = np.random.default_rng(0).normal(size=(3, 5, 16)).astype(np.float32) * 3 + 0.7
    linear = paddle.nn.Linear(16, 16, bias_attr=False)
    linear.weight.set_value(np.eye(16, dtype=np.float32))
    handles = smoothquant.dynamic_int8_inputs(paddle.nn.Sequential(("lin", linear)), ["lin"])
    simulated = linear(paddle.to_tensor(x)).numpy()
    handles[0].remove()
    nodes = [helper.make_node("DynamicQuantizeLinear", ["x"], ["q", "s", "z"]),
             helper.make_node("DequantizeLinear", ["q", "s", "z"], ["y"])]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, None)],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)])
    session = ort.InferenceSession(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
                                   .SerializeToString(), providers=["CPUExecutionProvider"])
    expected = session.run(None, {"x": x})[0]
    step = (max(x.max(), 0) - min(x.min(), 0)) / 255
    assert np.abs(simulated - expected).max() <= step * 1.001  # a tie may round the other way
    assert np.mean(np.isclose(simulated, expected, atol=1e-6)) > 0.99


def test_w8a8_checkpoint_exports_a_verified_dynamic_quantize_decoder(tiny_lm, tmp_path):
    made = cli_json(["quantize", str(tiny_lm), "--w8a8", "smoothquant", "--calib-samples", "32",
                     "--out", str(tmp_path / "q")])
    scheme = made["scheme"]
    assert scheme["method"] == "w8a8_smoothquant" and len(scheme["alpha_search"]["perplexity"]) == 7
    assert scheme["alpha"] in [float(a) for a in scheme["alpha_search"]["perplexity"]]
    exported = cli_json(["export", str(tmp_path / "q"), "--format", "onnx", "--out", str(tmp_path / "e")])
    entry, check = exported["files"]["decoder"], exported["verification"]["decoder"]
    assert entry["kernels"]["DynamicQuantizeMatMul"] == scheme["linears"] and entry["activations"] == "int8"
    assert check["teacher_forced_agreement"] == 1.0 and check["max_relative_diff"] < 0.01
    timing = ["--batch-sizes", "1", "--iterations", "1", "--warmup", "0", "--prompt-lengths", "8",
              "--decode-batch-sizes", "1", "--new-tokens", "2"]
    evaluated = cli_json(["evaluate", str(tmp_path / "e"), *timing])
    assert evaluated["scored_with"] == TEACHER_FORCED
    got, simulated = evaluated["metrics"]["perplexity"], made["metrics"]["test"]["perplexity"]
    assert abs(got / simulated - 1) < 0.02, (got, simulated)


def test_a_wrong_w8a8_scale_is_refused_by_the_export(tiny_lm, tmp_path, monkeypatch):
    cli_json(["quantize", str(tiny_lm), "--w8a8", "rtn", "--out", str(tmp_path / "q")])
    real = decoder_onnx.dynamic_quantize_matmul

    def reversed_scales(g, x, weight, q, name=None):
        q = decoder_onnx.WeightOnlyLinear(q.codes, q.scales[..., ::-1].copy(), q.bits, q.group_size, q.activations)
        return real(g, x, weight, q, name)

    monkeypatch.setattr(decoder_onnx, "dynamic_quantize_matmul", reversed_scales)
    res = runner.invoke(app, ["--quiet", "export", str(tmp_path / "q"), "--format", "onnx", "--out", str(tmp_path / "e")])
    assert res.exit_code == 2 and "int8 activations) failed verification" in res.stderr, res.output
    assert not (tmp_path / "e").exists()


@pytest.mark.parametrize("case", ["encoder", "alpha-with-rtn", "stream-export", "no-calibration-data"])
def test_bad_w8a8_requests_are_one_line_and_exit_2(tiny_lm, tmp_path, case):
    if case == "encoder":
        encoder, _ = train_tiny_checkpoint(tmp_path, epochs=1)
        args, message = ["quantize", str(encoder), "--w8a8", "rtn", "--out", str(tmp_path / "x")], "dense ERNIE 4.5"
    elif case == "alpha-with-rtn":
        args, message = ["quantize", str(tiny_lm), "--w8a8", "rtn", "--alpha", "0.5", "--out", str(tmp_path / "x")], \
            "--alpha"
    elif case == "no-calibration-data":  # SmoothQuant's channel maxima come from the training split
        data = tmp_path / "data"
        data.mkdir()
        for split in ("dev", "test"):
            (data / f"{split}.txt").write_text((tiny_lm.parent / "data" / f"{split}.txt").read_text(encoding="utf-8"),
                                               encoding="utf-8")
        args, message = ["quantize", str(tiny_lm), "--w8a8", "smoothquant", "--task", "lm", "--data", str(data),
                         "--out", str(tmp_path / "x")], "no train file"
    else:
        cli_json(["quantize", str(tiny_lm), "--w8a8", "rtn", "--out", str(tmp_path / "q")])
        args, message = ["export", str(tmp_path / "q"), "--stream", "--format", "onnx", "--out", str(tmp_path / "x")], \
            "drop --stream"
    res = runner.invoke(app, ["--quiet", *args])
    assert res.exit_code == 2 and message in res.stderr and len(res.stderr.strip().splitlines()) == 1, res.output
    assert not (tmp_path / "x").exists()
