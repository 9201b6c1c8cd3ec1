"""Export to Paddle static graph and ONNX on a tiny model, verified; runtimes agree with dygraph."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from ernie_compress.cli import app
from tests.helpers import train_tiny_checkpoint

runner = CliRunner()


@pytest.fixture(scope="module")
def tiny_checkpoint(tmp_path_factory):
    return train_tiny_checkpoint(tmp_path_factory.mktemp("export"), epochs=2)[0]


@pytest.fixture(scope="module")
def exported(tiny_checkpoint, tmp_path_factory):
    out = tmp_path_factory.mktemp("exp") / "export"
    res = runner.invoke(app, ["--quiet", "export", str(tiny_checkpoint), "--out", str(out), "--json"])
    assert res.exit_code == 0, res.output
    return out, json.loads(res.stdout)


def test_export_writes_both_formats_and_verifies(exported):
    out, result = exported
    assert (out / "paddle" / "model.json").is_file() and (out / "paddle" / "model.pdiparams").is_file()
    assert (out / "onnx" / "model.onnx").is_file() and (out / "vocab.txt").is_file()
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["labels"] == ["neg", "pos"] and manifest["precision"] == "fp32"
    for name in ("paddle", "onnx"):
        assert manifest["verification"][name]["passed"]
        assert manifest["verification"][name]["max_abs_diff"] < 1e-4
    assert manifest["reference"]["metrics"]["accuracy"] == result["reference_metrics"]["accuracy"]


def test_onnx_has_initializers_and_dynamic_axes(exported):
    import onnx

    out, _ = exported
    model = onnx.load(str(out / "onnx" / "model.onnx"))
    assert len(model.graph.initializer) > 10
    dims = model.graph.input[0].type.tensor_type.shape.dim
    assert [d.dim_param != "" or d.dim_value <= 0 for d in dims] == [True, True]


@pytest.mark.parametrize("backend", ["onnxruntime", "paddle"])
def test_runtime_accuracy_matches_dygraph(exported, backend):
    out, result = exported
    res = runner.invoke(app, ["--quiet", "evaluate", str(out), "--backend", backend, "--batch-sizes", "1,4",
                              "--seq-len", "16", "--iterations", "3", "--warmup", "1", "--json"])
    assert res.exit_code == 0, res.output
    ev = json.loads(res.stdout)
    assert ev["backend"] == backend
    assert abs(ev["metrics"]["accuracy"] - result["reference_metrics"]["accuracy"]) <= 0.001
    assert ev["delta_points"] == pytest.approx(0.0, abs=0.1)
    assert [r["batch_size"] for r in ev["latency"]] == [1, 4]
    assert all(r["p50_ms"] > 0 and r["qps"] > 0 for r in ev["latency"])


def test_onnxruntime_evaluation_does_not_import_paddle(exported):
    import subprocess
    import sys

    out, _ = exported
    code = ("import sys; from ernie_compress.runtime.evaluate_export import *; "
            "from ernie_compress.runtime.latency import LatencyConfig; "
            f"r = evaluate_export(EvaluateExportConfig(export_dir=__import__('pathlib').Path({str(out)!r}), "
            "latency=LatencyConfig(batch_sizes=(1,), iterations=2, warmup=0))); "
            "assert 'paddle' not in sys.modules, 'paddle imported'; print(r['metrics']['accuracy'])")
    subprocess.run([sys.executable, "-c", code], check=True, capture_output=True)


def test_profile_lists_operators(exported):
    out, _ = exported
    res = runner.invoke(app, ["--quiet", "evaluate", str(out), "--profile", "--batch-sizes", "2",
                              "--seq-len", "8", "--iterations", "2", "--json"])
    assert res.exit_code == 0, res.output
    ops = [row["op"] for row in json.loads(res.stdout)["profile"]]
    assert "MatMul" in ops or "Gemm" in ops or "FusedMatMul" in ops


def test_bench_dynamic_batching_loses_nothing(exported):
    out, _ = exported
    res = runner.invoke(app, ["--quiet", "bench", str(out), "--concurrency", "4", "--requests", "40",
                              "--json"])
    assert res.exit_code == 0, res.output
    bench = json.loads(res.stdout)
    assert bench["predictions_agree"] == 1.0 and bench["outputs_max_abs_diff"] < 1e-4
    assert bench["dynamic_batching"]["requests"] == 40


def test_only_onnx_format(tiny_checkpoint, tmp_path):
    res = runner.invoke(app, ["--quiet", "export", str(tiny_checkpoint), "--out", str(tmp_path / "o"),
                              "--format", "onnx", "--json"])
    assert res.exit_code == 0, res.output
    assert not (tmp_path / "o" / "paddle").exists() and (tmp_path / "o" / "onnx" / "model.onnx").exists()
    res = runner.invoke(app, ["--quiet", "evaluate", str(tmp_path / "o"), "--backend", "paddle"])
    assert res.exit_code == 2 and "no Paddle static graph" in res.stderr


def test_verification_failure_writes_nothing(tiny_checkpoint, tmp_path, monkeypatch):
    """A planted fault (the ONNX classifier bias off by 0.01) fails the default tolerance: exit 2,
    nothing written."""
    import numpy as np
    import onnx
    from onnx import numpy_helper

    from ernie_compress.export import onnx_export

    convert = onnx_export.convert_to_onnx

    def convert_then_break(program, params, out_path, opset):
        convert(program, params, out_path, opset)
        model = onnx.load(str(out_path))
        bias = next(i for i in model.graph.initializer if list(i.dims) == [2])  # the 2-label classifier's
        bias.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(bias) + np.float32(0.01), bias.name))
        onnx.save(model, str(out_path))

    monkeypatch.setattr(onnx_export, "convert_to_onnx", convert_then_break)
    res = runner.invoke(app, ["--quiet", "export", str(tiny_checkpoint), "--out", str(tmp_path / "x"),
                              "--format", "onnx"])
    assert res.exit_code == 2 and "failed verification" in res.stderr, res.output
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("args, message", [
    (["evaluate", "{out}", "--device", "tpu"], "--device must be one of cpu, gpu, npu"),
    (["evaluate", "{out}", "--backend", "tvm"], "--backend must be one of"),
    (["evaluate", "{out}", "--device", "gpu", "--backend", "onnxruntime"], "onnxruntime-gpu"),
    (["evaluate", "{out}", "--task", "demo:sentiment"], "labels the model does not know"),
    (["evaluate", "{out}", "--batch-sizes", "1,x"], "comma-separated"),
    (["export", "{ckpt}", "--out", "{tmp}/e", "--format", "tflite"], "--format"),
    (["bench", "{tmp}/missing"], "does not exist"),
])
def test_bad_inputs(exported, tiny_checkpoint, tmp_path, args, message):
    out, _ = exported
    args = [a.format(out=out, ckpt=tiny_checkpoint, tmp=tmp_path) for a in args]
    res = runner.invoke(app, ["--quiet"] + args)
    assert res.exit_code == 2, res.output
    assert message in res.stderr and len(res.stderr.strip().splitlines()) == 1
