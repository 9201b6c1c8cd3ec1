"""quantize --qat/--ptq from the CLI, INT8 ONNX export (scales carried, integer kernels), refusals."""

from __future__ import annotations

import json

import numpy as np
import onnx
import pytest
from onnx import numpy_helper
from typer.testing import CliRunner

from ernie_compress.cli import app
from tests.helpers import train_tiny_checkpoint

runner = CliRunner()


@pytest.fixture(scope="module")
def fp32(tmp_path_factory):
    return train_tiny_checkpoint(tmp_path_factory.mktemp("quant"), name="fp32")[0]


@pytest.fixture(scope="module")
def qat(fp32, tmp_path_factory):
    out = tmp_path_factory.mktemp("qat") / "qat"
    res = runner.invoke(app, ["--quiet", "--json", "quantize", str(fp32), "--qat", "int8", "--out", str(out),
                              "--max-steps", "12", "--batch-size", "8", "--distill-from-parent"])
    assert res.exit_code == 0, res.output
    return out, json.loads(res.stdout)


def test_qat_keeps_accuracy_on_a_tiny_model(qat):
    _, result = qat
    assert result["quantized_layers"] == 12
    assert result["parent_metrics"]["test"]["accuracy"] == 1.0  # 8 held-out sentences
    assert result["delta_points"] == 0  # one flipped sentence would be -12.5


def test_qat_checkpoint_holds_float_weights_and_scales(qat):
    out, result = qat
    config = json.loads((out / "config.json").read_text())
    assert config["quantization"]["method"] == "qat" and config["quantization"]["dtype"] == "int8"
    scales = json.loads((out / "quantization_scales.json").read_text())
    assert len(scales) == 12 and all(v["input_absmax"] > 0 for v in scales.values())
    info = runner.invoke(app, ["info", str(out), "--json"])
    assert [s["name"] for s in json.loads(info.stdout)["lineage"]] == ["train", "quantize-qat"]


@pytest.fixture(scope="module")
def int8_export(qat, tmp_path_factory):
    out = tmp_path_factory.mktemp("int8") / "onnx"
    res = runner.invoke(app, ["--quiet", "--json", "export", str(qat[0]), "--format", "onnx", "--out", str(out)])
    assert res.exit_code == 0, res.output
    return out, json.loads(res.stdout)


def test_int8_onnx_runs_integer_kernels(int8_export):
    out, result = int8_export
    assert result["precision"] == "int8"
    assert sum(result["int8"]["runtime_ops"].values()) == 12  # one integer MatMul per quantized Linear
    for model in ("onnx", "onnx_qdq"):  # integer rounding vs fake-quant float math: tiny, not float-exact
        assert result["verification"][model]["prediction_agreement"] == 1.0
        assert result["verification"][model]["max_relative_diff"] < 0.02


def test_scales_in_the_onnx_are_the_checkpoints(qat, int8_export):
    """Each integer MatMul's activation and weight scales are the QAT checkpoint's numbers."""
    ckpt, _ = qat
    out, _ = int8_export
    scales = json.loads((ckpt / "quantization_scales.json").read_text())
    bits = json.loads((ckpt / "config.json").read_text())["quantization"]["weight_bits"]
    qmax = (1 << (bits - 1)) - 1
    model = onnx.load(str(out / "onnx" / "model_qdq.onnx"))
    inits = {i.name: numpy_helper.to_array(i) for i in model.graph.initializer}
    producer = {o: n for n in model.graph.node for o in n.output}
    weight_scales = sorted(np.sort(np.asarray(v["weight_absmax"]) / qmax).tolist() for v in scales.values())
    act_absmax = {round(v["input_absmax"], 5) for v in scales.values()}
    found_w, found_a = [], set()
    for node in model.graph.node:
        if node.op_type != "MatMul":
            continue
        a, b = (producer.get(x) for x in node.input)
        if not (a is not None and b is not None and a.op_type == b.op_type == "DequantizeLinear"):
            continue
        found_w.append(np.sort(inits[b.input[1]].ravel()).tolist())
        assert inits[b.input[0]].dtype == np.int8  # weights stored as int8
        found_a.add(round(float(inits[a.input[1]]) * 255 / 2, 5))  # u8 grid over [-absmax, absmax]
    assert len(found_w) == 12
    for got, want in zip(sorted(found_w), weight_scales):
        np.testing.assert_allclose(got, want, rtol=1e-5)
    assert found_a <= act_absmax | {max(act_absmax)} and len(found_a) >= 4
    # the CPU model runs the same integers with the same scales, bias inside the integer kernel
    cpu = onnx.load(str(out / "onnx" / "model.onnx"))
    cpu_inits = {i.name: numpy_helper.to_array(i) for i in cpu.graph.initializer}
    fused = [n for n in cpu.graph.node if n.op_type == "MatMulIntegerToFloat"]
    assert len(fused) == 12 and all(n.domain == "com.microsoft" and len(n.input) == 7 for n in fused)
    assert sorted(np.sort(cpu_inits[n.input[3]].ravel()).tolist() for n in fused) == sorted(found_w)
    assert not any(n.op_type in ("MatMul", "DequantizeLinear") and n.input[1] in cpu_inits
                   and cpu_inits[n.input[1]].dtype == np.int8 for n in cpu.graph.node)


@pytest.fixture(scope="module")
def biased_qat(fp32, tmp_path_factory):
    """A QAT checkpoint whose Linear biases matter (the tiny model's trained biases stay near zero,
    so dropping them would change nothing a check could see)."""
    from ernie_compress.checkpoint import load_checkpoint, save_checkpoint

    root = tmp_path_factory.mktemp("biased")
    parent = load_checkpoint(fp32)
    rng = np.random.default_rng(0)
    state = {k: (v + rng.normal(0, 0.3, v.shape).astype(v.dtype) if "encoder" in k and k.endswith(".bias")
                 else v) for k, v in parent.state.items()}
    save_checkpoint(root / "fp32", parent.config, state, parent.tokenizer(), {"name": "biased"}, parent=parent)
    res = runner.invoke(app, ["--quiet", "quantize", str(root / "fp32"), "--ptq", "int8", "--out", str(root / "q")])
    assert res.exit_code == 0, res.output
    return root / "q"


def _scale_one_weight_grid(model, inits):
    node = next(n for n in model.graph.node if n.op_type == "MatMulIntegerToFloat")
    return {node.input[3]: inits[node.input[3]] * 2}  # the weight scale of one Linear, doubled


def _transpose_one_square_weight(model, inits):
    for node in model.graph.node:
        w = inits.get(node.input[1]) if node.op_type == "MatMulIntegerToFloat" else None
        if w is not None and w.shape[0] == w.shape[1]:
            return {node.input[1]: np.ascontiguousarray(w.T)}
    raise AssertionError("no square integer weight")


def _drop_the_biases(model, inits):
    return {n.input[6]: np.zeros_like(inits[n.input[6]])
            for n in model.graph.node if n.op_type == "MatMulIntegerToFloat" and len(n.input) == 7}


@pytest.mark.parametrize("plant", [_scale_one_weight_grid, _transpose_one_square_weight, _drop_the_biases],
                         ids=["wrong-scale", "transposed-weight", "dropped-bias"])
def test_int8_verification_catches_a_planted_bug(biased_qat, tmp_path, monkeypatch, plant):
    """Each bug is planted in the CPU model right after it is written; the logit bound (not only
    prediction agreement, which such bugs can leave intact on a small sample) refuses the export."""
    from ernie_compress.export import onnx_int8

    write = onnx_int8.quantize_onnx_int8

    def write_then_break(fp32_path, out_path, *args, **kwargs):
        result = write(fp32_path, out_path, *args, **kwargs)
        model = onnx.load(str(out_path))
        inits = {i.name: numpy_helper.to_array(i) for i in model.graph.initializer}
        for name, value in plant(model, inits).items():
            init = next(i for i in model.graph.initializer if i.name == name)
            init.CopyFrom(numpy_helper.from_array(value.astype(inits[name].dtype), name))
        onnx.save(model, str(out_path))
        return result

    monkeypatch.setattr(onnx_int8, "quantize_onnx_int8", write_then_break)
    res = runner.invoke(app, ["--quiet", "export", str(biased_qat), "--format", "onnx", "--out", str(tmp_path / "o")])
    assert res.exit_code == 2 and "failed verification" in res.stderr, res.output
    assert "of the logit scale" in res.stderr and not (tmp_path / "o").exists()


def test_evaluate_int8_export(int8_export):
    out, result = int8_export
    res = runner.invoke(app, ["--quiet", "--json", "evaluate", str(out), "--batch-sizes", "1",
                              "--seq-len", "16", "--iterations", "2"])
    assert res.exit_code == 0, res.output
    ev = json.loads(res.stdout)
    assert ev["precision"] == "int8" and ev["delta_points"] == 0  # the same predictions as fake-quant Paddle


def test_ptq(fp32, tmp_path):
    res = runner.invoke(app, ["--quiet", "--json", "quantize", str(fp32), "--ptq", "int8", "--observer", "kl",
                              "--calib-samples", "16", "--out", str(tmp_path / "ptq")])
    assert res.exit_code == 0, res.output
    result = json.loads(res.stdout)
    assert result["scheme"]["method"] == "ptq" and result["scheme"]["activation_observer"] == "kl"
    assert result["steps"] == 0


@pytest.mark.parametrize("args, message", [
    (["--qat", "int4"], "--qat must be one of int8"),
    (["--ptq", "int8", "--qat", "int8"], "exactly one"),
    ([], "exactly one"),
    (["--fp16", "--qat", "int8"], "exactly one"),
    (["--ptq", "int8", "--observer", "median"], "--observer"),
    (["--ptq", "int8", "--calib-samples", "0"], "--calib-samples"),
])
def test_bad_quantize_options(fp32, tmp_path, args, message):
    res = runner.invoke(app, ["--quiet", "quantize", str(fp32), "--out", str(tmp_path / "o")] + args)
    assert res.exit_code == 2, res.output
    assert message in res.stderr and not (tmp_path / "o").exists()


def test_quantizing_a_quantized_checkpoint_is_refused(qat, tmp_path):
    res = runner.invoke(app, ["--quiet", "quantize", str(qat[0]), "--ptq", "int8", "--out", str(tmp_path / "o")])
    assert res.exit_code == 2 and "already quantized" in res.stderr


@pytest.mark.parametrize("fmt", ["paddle", "all"])
def test_paddle_export_of_int8_is_refused_naming_the_bug(qat, tmp_path, fmt):
    res = runner.invoke(app, ["--quiet", "export", str(qat[0]), "--format", fmt, "--out", str(tmp_path / "o")])
    assert res.exit_code == 2 and "dequantize_linear" in res.stderr
    assert not (tmp_path / "o").exists()


def test_fp16_checkpoint_and_onnx(fp32, tmp_path):
    res = runner.invoke(app, ["--quiet", "--json", "quantize", str(fp32), "--fp16", "--out", str(tmp_path / "h")])
    assert res.exit_code == 0, res.output
    result = json.loads(res.stdout)
    assert result["delta_points"] == 0  # rounding weights to FP16 flips none of the held-out predictions
    from ernie_compress.checkpoint import load_checkpoint

    assert {v.dtype for v in load_checkpoint(tmp_path / "h").state.values()} == {np.dtype("float16")}
    res = runner.invoke(app, ["--quiet", "--json", "export", str(tmp_path / "h"), "--out", str(tmp_path / "x")])
    assert res.exit_code == 0, res.output
    exported = json.loads(res.stdout)
    assert exported["precision"] == "fp16" and exported["fp16"]["fp16_initializers"] > 10
    assert exported["verification"]["onnx"]["max_relative_diff"] < 1e-2  # FP16 arithmetic vs FP16 weights in FP32
    model = onnx.load(str(tmp_path / "x" / "onnx" / "model.onnx"))
    assert model.graph.input[0].type.tensor_type.elem_type == onnx.TensorProto.INT64
    assert model.graph.output[0].type.tensor_type.elem_type == onnx.TensorProto.FLOAT  # FP32 I/O
