"""Device/backend selection: pure functions, tested without the hardware."""

from __future__ import annotations

import pytest

from ernie_compress.errors import UserError
from ernie_compress.runtime.backends import (RuntimeConfig, onnx_model_file, onnxruntime_providers,
                                             paddle_device_check)


def test_cpu_provider():
    assert onnxruntime_providers("cpu", ["CPUExecutionProvider"]) == ["CPUExecutionProvider"]


def test_gpu_providers_with_and_without_tensorrt():
    available = ["TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider"]
    assert onnxruntime_providers("gpu", available) == ["CUDAExecutionProvider", "CPUExecutionProvider"]
    assert onnxruntime_providers("gpu", available, tensorrt=True)[0] == "TensorrtExecutionProvider"


def test_npu_uses_cann():
    assert onnxruntime_providers("npu", ["CANNExecutionProvider", "CPUExecutionProvider"])[0] == \
        "CANNExecutionProvider"


@pytest.mark.parametrize("device, hint", [("gpu", "onnxruntime-gpu"), ("npu", "CANN")])
def test_missing_provider_says_what_to_install(device, hint):
    with pytest.raises(UserError, match=hint):
        onnxruntime_providers(device, ["CPUExecutionProvider"])


@pytest.mark.parametrize("device, cuda, gpus, custom, hint", [
    ("gpu", False, 0, [], "paddlepaddle-gpu"),
    ("gpu", True, 0, [], "no GPU is visible"),
    ("npu", False, 0, [], "paddle-custom-npu"),
])
def test_paddle_device_check(device, cuda, gpus, custom, hint):
    with pytest.raises(UserError, match=hint):
        paddle_device_check(device, cuda, gpus, custom)


def test_paddle_device_check_accepts_present_devices():
    paddle_device_check("gpu", True, 1, [])
    paddle_device_check("npu", False, 0, ["npu"])
    paddle_device_check("cpu", False, 0, [])


def test_runtime_config_defaults_and_errors():
    both = {"onnx": {}, "paddle": {}}
    assert RuntimeConfig("cpu").backend_for(both) == "onnxruntime"
    assert RuntimeConfig("gpu").backend_for(both) == "paddle"
    with pytest.raises(UserError, match="unknown device 'tpu'"):
        RuntimeConfig("tpu")
    with pytest.raises(UserError, match="unknown backend"):
        RuntimeConfig("cpu", backend="tvm")
    with pytest.raises(UserError, match="needs --device gpu"):
        RuntimeConfig("cpu", tensorrt=True)


def test_this_machine_without_gpu_gives_a_clear_error():
    import onnxruntime as ort

    if "CUDAExecutionProvider" in ort.get_available_providers():
        pytest.skip("this machine has CUDA")
    with pytest.raises(UserError, match="onnxruntime-gpu"):
        onnxruntime_providers("gpu", ort.get_available_providers())


def test_int8_exports_give_the_cpu_integer_model_to_cpu_and_the_qdq_model_to_accelerators():
    int8 = {"model": "onnx/model.onnx", "qdq_model": "onnx/model_qdq.onnx"}
    assert onnx_model_file(int8, "cpu") == "onnx/model.onnx"
    assert onnx_model_file(int8, "gpu") == onnx_model_file(int8, "npu") == "onnx/model_qdq.onnx"
    assert onnx_model_file({"model": "onnx/model.onnx"}, "gpu") == "onnx/model.onnx"


@pytest.mark.parametrize("device, files, backend, want", [
    ("gpu", {"onnx": {}}, None, "onnxruntime"),  # an ONNX-only export runs where it can
    ("gpu", {"onnx": {}, "paddle": {}}, None, "paddle"),
    ("cpu", {"paddle": {}}, None, "paddle"),
    ("cpu", {"onnx": {}, "paddle": {}}, None, "onnxruntime"),
    ("gpu", {"onnx": {}}, "paddle", "paddle"),  # asked for: asked for (and refused later)
])
def test_default_backend_follows_the_files_the_export_has(device, files, backend, want):
    assert RuntimeConfig(device, backend=backend).backend_for(files) == want


def test_a_provider_onnxruntime_silently_dropped_is_an_error(monkeypatch, tmp_path):
    """ONNX Runtime prints an EP Error banner and falls back when TensorRT's libraries are
    missing (seen on an H200 with onnxruntime-gpu 1.31.1): --tensorrt must not quietly run CUDA."""
    import onnxruntime as ort

    from ernie_compress.runtime.backends import OnnxRuntimeSession

    class FellBack:
        def __init__(self, path, options, providers):
            print("*************** EP Error ***************")
            print("EP Error /ort/pybind_state.cc:729 void ort::RegisterTensorRTPlugins(Opts&, const Opts&) "
                  "Please install TensorRT libraries as mentioned in the GPU requirements page.\n"
                  " when using ['TensorrtExecutionProvider', 'CUDAExecutionProvider']")

        def get_inputs(self):
            return []

        def get_providers(self):
            return ["CUDAExecutionProvider", "CPUExecutionProvider"]

    monkeypatch.setattr(ort, "get_available_providers",
                        lambda: ["TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider"])
    monkeypatch.setattr(ort, "InferenceSession", FellBack)
    with pytest.raises(UserError, match="could not start TensorrtExecutionProvider .*install TensorRT.*libnvinfer") as err:
        OnnxRuntimeSession(tmp_path / "m.onnx", RuntimeConfig("gpu", tensorrt=True))
    message = str(err.value)
    assert "(Please install TensorRT libraries as mentioned in the GPU requirements page.)" in message
    assert ".cc:" not in message and "\n" not in message
