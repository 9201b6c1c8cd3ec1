"""Paddle Inference as a registered runtime: the exported static graph (encoder) on CPU (oneDNN,
``enable_mkldnn``, or plain), GPU (``enable_use_gpu``, optionally TensorRT FP16 subgraphs) and NPU
(the Ascend custom device ``npu``).

The device check is a pure function of the Paddle build (:func:`paddle_device_check`), unit-tested
without the hardware; a missing device is a one-line error that says what to install. Paddle is
imported only when a session opens.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from ..errors import UserError
from ..paddle_env import cpu_threads, import_paddle
from .op_profile import paddle_op_profile
from .registry import KindSupport, Runtime, SessionRequest
from .session import ENCODER

if TYPE_CHECKING:
    from .backends import RuntimeConfig

PADDLE_INSTALL_HINT = {
    "gpu": "pip install paddlepaddle-gpu==3.3.1 (for your CUDA version) instead of paddlepaddle",
    "npu": "install the Ascend CANN toolkit and the PaddleCustomDevice npu plugin "
           "(paddle-custom-npu)",
}


def paddle_device_check(device: str, compiled_with_cuda: bool, gpu_count: int,
                        custom_devices: Sequence[str]) -> None:
    """Refuse a device that this Paddle build or machine lacks, saying what to install."""
    if device == "gpu" and not (compiled_with_cuda and gpu_count > 0):
        why = "this Paddle build has no CUDA" if not compiled_with_cuda else "no GPU is visible"
        raise UserError(f"cannot run Paddle Inference on gpu: {why}; "
                        f"{PADDLE_INSTALL_HINT['gpu']}")
    if device == "npu" and "npu" not in custom_devices:
        raise UserError(f"cannot run Paddle Inference on npu: no 'npu' custom device is registered; "
                        f"{PADDLE_INSTALL_HINT['npu']}")


def _check_device(device: str):
    """Paddle, once ``device`` is known to exist in this build and machine (else a UserError)."""
    paddle = import_paddle()
    custom = paddle.device.get_all_custom_device_type() or []
    gpus = paddle.device.cuda.device_count() if paddle.is_compiled_with_cuda() else 0
    paddle_device_check(device, paddle.is_compiled_with_cuda(), gpus, custom)
    return paddle


def _probe(device: str) -> str | None:
    """Why Paddle Inference cannot run on ``device`` here (what to install), or None."""
    try:
        _check_device(device)
    except UserError as exc:
        return str(exc)
    return None


def _inference_config(inference, model_dir: Path, config: RuntimeConfig, program: str, params: str):
    """A ``paddle.inference.Config`` for ``config.device`` (and its threads, oneDNN, TensorRT, profile)."""
    cfg = inference.Config(str(model_dir / program), str(model_dir / params))
    if config.device == "cpu":
        cfg.disable_gpu()
        cfg.set_cpu_math_library_num_threads(cpu_threads(config.threads))
        if config.mkldnn:
            cfg.enable_mkldnn()
        else:
            cfg.disable_mkldnn()
    elif config.device == "gpu":
        cfg.enable_use_gpu(256, 0)
        if config.tensorrt:
            cfg.enable_tensorrt_engine(workspace_size=1 << 30, max_batch_size=64, min_subgraph_size=3,
                                       precision_mode=inference.PrecisionType.Half,
                                       use_static=False, use_calib_mode=False)
    else:
        cfg.enable_custom_device("npu", 0)
    if config.profile:
        cfg.enable_profile()
    cfg.switch_ir_optim(True)
    cfg.disable_glog_info()
    return cfg


class PaddleInferenceSession:
    """A Paddle static graph in a Paddle Inference predictor (an encoder session)."""

    backend = "paddle"
    kind = ENCODER

    def __init__(self, model_dir: Path, config: RuntimeConfig, program: str, params: str):
        _check_device(config.device)
        from paddle import inference

        self.device = config.device
        cfg = _inference_config(inference, model_dir, config, program, params)
        try:
            self._predictor = inference.create_predictor(cfg)
        except Exception as exc:  # Paddle raises generic errors for unreadable programs
            raise UserError(f"{model_dir}: Paddle Inference cannot load the model ({exc})") from None
        self.input_names = self._predictor.get_input_names()
        self._inputs = {n: self._predictor.get_input_handle(n) for n in self.input_names}
        self._output = self._predictor.get_output_handle(self._predictor.get_output_names()[0])

    def run(self, input_ids: np.ndarray, token_type_ids: np.ndarray) -> np.ndarray:
        feeds = {"input_ids": input_ids, "token_type_ids": token_type_ids}
        for name, handle in self._inputs.items():
            handle.copy_from_cpu(np.ascontiguousarray(feeds[name]))
        self._predictor.run()
        return self._output.copy_to_cpu()

    def op_profile(self, input_ids: np.ndarray, token_type_ids: np.ndarray, top_n: int) -> list[dict[str, Any]]:
        """Operators of five runs on this batch, by total CPU time."""
        return paddle_op_profile(self.run, input_ids, token_type_ids, top_n)


def _open_encoder(request: SessionRequest) -> PaddleInferenceSession:
    files, config = request.files, request.config
    if config.mkldnn and files.get("onednn") is False:
        config = replace(config, mkldnn=False)  # the export says oneDNN computes this graph wrongly
    return PaddleInferenceSession(request.export_dir / files["dir"], config, files["program"], files["params"])


RUNTIME = Runtime(  # registered by registry.BUILTIN_MODULES
    name="paddle",
    kinds={ENCODER: KindSupport("paddle", "Paddle static graph", "paddle", _open_encoder)},
    devices=("cpu", "gpu", "npu"), precisions=("fp32", "fp16"), preferred_on=("gpu", "npu"), profiles=True,
    probe=_probe)
