"""Device selection for training (paddle_env.training_device): the default follows what Paddle has,
a missing device is refused with what to install. Paddle's answers are replaced, so the GPU and NPU
branches run here on a CPU-only machine; Paddle is then told the device chosen."""

from __future__ import annotations

import re

import pytest

from ernie_compress.errors import UserError
from ernie_compress.paddle_env import import_paddle, training_device


@pytest.fixture
def fake_paddle(monkeypatch):
    paddle = import_paddle()
    chosen = []

    def install(cuda: bool, gpus: int, custom: list[str]):
        monkeypatch.setattr(paddle, "is_compiled_with_cuda", lambda: cuda)
        monkeypatch.setattr(paddle.device.cuda, "device_count", lambda: gpus)
        monkeypatch.setattr(paddle.device, "get_all_custom_device_type", lambda: custom)
        monkeypatch.setattr(paddle, "set_device", chosen.append)
        return chosen

    return install


@pytest.mark.parametrize("cuda, gpus, custom, requested, expected", [
    (False, 0, [], None, "cpu"),
    (True, 0, [], None, "cpu"),  # a CUDA build on a machine without a GPU
    (True, 2, [], None, "gpu"),
    (True, 2, [], "cpu", "cpu"),
    (False, 0, ["npu"], "npu", "npu"),
])
def test_the_device_follows_what_paddle_has(fake_paddle, cuda, gpus, custom, requested, expected):
    chosen = fake_paddle(cuda, gpus, custom)
    assert training_device(requested) == expected and chosen == [expected]


@pytest.mark.parametrize("cuda, gpus, custom, requested, message", [
    (False, 0, [], "gpu", "this Paddle build has no CUDA (pip install paddlepaddle-gpu)"),
    (True, 0, [], "gpu", "no GPU is visible"),
    (True, 1, [], "npu", "no 'npu' custom device is registered"),
])
def test_a_missing_device_is_refused(fake_paddle, cuda, gpus, custom, requested, message):
    chosen = fake_paddle(cuda, gpus, custom)
    with pytest.raises(UserError, match=re.escape(message)):
        training_device(requested)
    assert chosen == []
