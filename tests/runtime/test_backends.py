"""Device/backend selection: pure functions, tested without the hardware."""

from __future__ import annotations

import pytest

from ernie_compress.errors import UserError
from ernie_compress.runtime.backends import RuntimeConfig, onnxruntime_providers, paddle_device_check


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
    assert RuntimeConfig("cpu").resolved_backend == "onnxruntime"
    assert RuntimeConfig("gpu").resolved_backend == "paddle"
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
