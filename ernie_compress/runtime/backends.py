"""Inference backends behind one interface: Paddle Inference and ONNX Runtime, on CPU/GPU/NPU.

=========  ===========================================  ==========================================
device     paddle (Paddle Inference)                    onnxruntime
=========  ===========================================  ==========================================
cpu        oneDNN (``enable_mkldnn``), or plain         CPUExecutionProvider
gpu        ``enable_use_gpu`` (+ TensorRT FP16/INT8)    CUDAExecutionProvider (+ TensorRT EP)
npu        custom device ``npu`` (Ascend)               CANNExecutionProvider
=========  ===========================================  ==========================================

Selection is a pure function of what is installed (:func:`onnxruntime_providers`,
:func:`paddle_device_check`), so it is unit-tested without the hardware; a missing device or
provider is a one-line error that says what to install. The ONNX Runtime path never imports Paddle.
"""

from __future__ import annotations

import contextlib
import io
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from ..errors import UserError
from ..options import option
from ..paddle_env import cpu_threads, import_paddle

DEVICES = ("cpu", "gpu", "npu")
BACKENDS = ("paddle", "onnxruntime")
DEFAULT_BACKEND = {"cpu": "onnxruntime", "gpu": "paddle", "npu": "paddle"}

ORT_PROVIDERS = {
    "cpu": ("CPUExecutionProvider",),
    "gpu": ("CUDAExecutionProvider",),
    "npu": ("CANNExecutionProvider",),
}
ORT_INSTALL_HINT = {
    "gpu": "pip uninstall onnxruntime && pip install onnxruntime-gpu built for your CUDA "
           "(1.31 needs CUDA 13 and cuDNN 9 on LD_LIBRARY_PATH)",
    "tensorrt": "install the TensorRT libraries (libnvinfer) that your onnxruntime-gpu was built "
                "with and put them on LD_LIBRARY_PATH, or leave out --tensorrt",
    "npu": "install the Ascend CANN toolkit and an onnxruntime build with the CANN execution "
           "provider (onnxruntime-cann)",
}
PADDLE_INSTALL_HINT = {
    "gpu": "pip install paddlepaddle-gpu==3.3.1 (for your CUDA version) instead of paddlepaddle",
    "npu": "install the Ascend CANN toolkit and the PaddleCustomDevice npu plugin "
           "(paddle-custom-npu)",
}


class Session(Protocol):
    backend: str
    device: str

    def run(self, input_ids: np.ndarray, token_type_ids: np.ndarray) -> np.ndarray:
        """Logits for a batch of int64 [batch, seq] inputs."""


@dataclass(frozen=True, kw_only=True)
class ThreadsOption:
    threads: int | None = option(None, scope="run", at_least=1, help="CPU threads (default: all cores).")


@dataclass(frozen=True, kw_only=True)
class RuntimeOptions(ThreadsOption):
    """The options of a command that runs an export (``evaluate``, ``bench``)."""

    device: str = option("cpu", choices=DEVICES, help="Where the export runs: cpu, gpu or npu.")
    backend: str | None = option(None, choices=BACKENDS, help=(
        "paddle (Paddle Inference) or onnxruntime. Default: onnxruntime on cpu, paddle on gpu/npu; the other "
        "one when the export has only its files."))


@dataclass(frozen=True)
class RuntimeConfig:
    device: str = "cpu"
    backend: str | None = None  # None: DEFAULT_BACKEND[device]
    threads: int | None = None  # CPU threads (None: every core)
    tensorrt: bool = False  # gpu only: TensorRT subgraphs (Paddle) / TensorRT EP (ORT)
    mkldnn: bool = True  # paddle cpu: oneDNN kernels
    profile: bool = False  # record per-operator times

    def __post_init__(self) -> None:
        if self.device not in DEVICES:
            raise UserError(f"unknown device '{self.device}' (use one of {', '.join(DEVICES)})")
        if self.backend is not None and self.backend not in BACKENDS:
            raise UserError(f"unknown backend '{self.backend}' (use one of {', '.join(BACKENDS)})")
        if self.tensorrt and self.device != "gpu":
            raise UserError("--tensorrt needs --device gpu")
        if self.threads is not None and self.threads < 1:
            raise UserError(f"--threads must be >= 1, got {self.threads}")

    def backend_for(self, files: dict[str, Any]) -> str:
        """``--backend`` if given; else the device's default when the export has its files, else
        the backend whose files the export has (an ONNX-only export runs on ONNX Runtime)."""
        if self.backend:
            return self.backend
        default = DEFAULT_BACKEND[self.device]
        other = "onnxruntime" if default == "paddle" else "paddle"
        present = {"paddle": "paddle" in files, "onnxruntime": "onnx" in files}
        return other if present[other] and not present[default] else default


def onnxruntime_providers(device: str, available: Sequence[str], tensorrt: bool = False) -> list[str]:
    """The execution providers for ``device``, or a :class:`UserError` naming what to install."""
    wanted = list(ORT_PROVIDERS[device])
    if tensorrt:
        wanted.insert(0, "TensorrtExecutionProvider")
    missing = [p for p in wanted if p not in available]
    if missing:
        hint = ORT_INSTALL_HINT.get(device, "reinstall onnxruntime")
        raise UserError(f"ONNX Runtime has no {', '.join(missing)} here (available: "
                        f"{', '.join(available)}); to run on {device}: {hint}")
    return wanted + ([] if device == "cpu" else ["CPUExecutionProvider"])


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


def _without_source_location(message: str, limit: int = 200) -> str:
    """ONNX Runtime's error text without its leading ``file.cc:123 signature(...)``, one line."""
    message = re.sub(r"^\S+:\d+ .*?\) ", "", message.strip(), count=1)
    message = message.split(" when using [")[0]
    return message if len(message) <= limit else message[:limit].rsplit(" ", 1)[0] + " ..."


class OnnxRuntimeSession:
    backend = "onnxruntime"

    def __init__(self, model_path: Path, config: RuntimeConfig, profile_dir: Path | None = None,
                 disabled_optimizers: tuple[str, ...] = ()):
        """``disabled_optimizers``: ONNX Runtime graph optimizers this session skips (by name, e.g.
        ``SkipLayerNormFusion``); none by default."""
        import onnxruntime as ort


        self.device = config.device
        providers = onnxruntime_providers(config.device, ort.get_available_providers(),
                                          config.tensorrt)
        options = ort.SessionOptions()
        options.intra_op_num_threads = cpu_threads(config.threads)
        options.inter_op_num_threads = 1
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        options.log_severity_level = 3
        if config.profile:
            options.enable_profiling = True
            if profile_dir is not None:
                options.profile_file_prefix = str(profile_dir / "ort_profile")
        # ONNX Runtime's C++ logger writes a provider's load failure (e.g. "libnvinfer.so.10: cannot
        # open shared object file") to stderr at ERROR level; the failure is reported below instead
        ort.set_default_logger_severity(4)
        fallback_notice = io.StringIO()
        try:
            # when a provider fails to start, ONNX Runtime print()s an "EP Error" banner and
            # silently retries on the remaining providers: keep the banner for our own message
            with contextlib.redirect_stdout(fallback_notice):
                skip = {"disabled_optimizers": list(disabled_optimizers)} if disabled_optimizers else {}
                self._session = ort.InferenceSession(str(model_path), options, providers=providers, **skip)
        except Exception as exc:  # onnxruntime raises its own Fail/InvalidGraph types
            raise UserError(f"{model_path}: ONNX Runtime cannot load the model ({exc})") from None
        self.input_names = [i.name for i in self._session.get_inputs()]
        self.providers = self._session.get_providers()
        dropped = [p for p in providers if p not in self.providers]
        if dropped:  # what was asked for must really run (e.g. TensorRT without libnvinfer)
            hint = ORT_INSTALL_HINT.get("tensorrt" if "TensorrtExecutionProvider" in dropped
                                        else config.device, "reinstall onnxruntime")
            reason = next((_without_source_location(line[len("EP Error "):])
                           for line in fallback_notice.getvalue().splitlines()
                           if line.startswith("EP Error ")), "")
            reason = f" ({reason})" if reason else ""
            raise UserError(f"ONNX Runtime could not start {', '.join(dropped)}{reason}; "
                            f"it would run on {', '.join(self.providers)} instead; {hint}")

    @property
    def session(self):
        """The ``onnxruntime.InferenceSession`` (for graphs with other inputs, e.g. the decoder's cache)."""
        return self._session

    def run(self, input_ids: np.ndarray, token_type_ids: np.ndarray) -> np.ndarray:
        feeds = {"input_ids": input_ids, "token_type_ids": token_type_ids}
        return self._session.run(None, {k: feeds[k] for k in self.input_names})[0]

    def end_profiling(self) -> str | None:
        return self._session.end_profiling()


class PaddleInferenceSession:
    backend = "paddle"

    def __init__(self, model_dir: Path, config: RuntimeConfig, program: str, params: str):
        paddle = import_paddle()
        from paddle import inference

        custom = paddle.device.get_all_custom_device_type() or []
        gpus = paddle.device.cuda.device_count() if paddle.is_compiled_with_cuda() else 0
        paddle_device_check(config.device, paddle.is_compiled_with_cuda(), gpus, custom)
        self.device = config.device
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
                cfg.enable_tensorrt_engine(workspace_size=1 << 30, max_batch_size=64,
                                           min_subgraph_size=3,
                                           precision_mode=inference.PrecisionType.Half,
                                           use_static=False, use_calib_mode=False)
        else:
            cfg.enable_custom_device("npu", 0)
        if config.profile:
            cfg.enable_profile()
        cfg.switch_ir_optim(True)
        cfg.disable_glog_info()
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


def onnx_model_file(onnx_files: dict[str, Any], device: str) -> str:
    """The ONNX file for ``device``: an INT8 export's ``model`` holds ONNX Runtime's CPU integer
    kernels; GPU/NPU providers build theirs from the standard QDQ form (``qdq_model``)."""
    if device != "cpu" and "qdq_model" in onnx_files:
        return onnx_files["qdq_model"]
    return onnx_files["model"]


def open_session(export_dir: Path, manifest: dict[str, Any], config: RuntimeConfig,
                 profile_dir: Path | None = None) -> Session:
    """A session for the export in ``export_dir`` on ``config.device`` via ``config.backend``."""
    files = manifest.get("files", {})
    backend = config.backend_for(files)
    if backend == "onnxruntime":
        onnx = files.get("onnx")
        if not onnx:
            raise UserError(f"{export_dir}: this export has no ONNX model; re-export with "
                            f"--format onnx (or use --backend paddle)")
        return OnnxRuntimeSession(export_dir / onnx_model_file(onnx, config.device), config, profile_dir)
    paddle_files = files.get("paddle")
    if not paddle_files:
        raise UserError(f"{export_dir}: this export has no Paddle static graph; re-export with "
                        f"--format paddle (or use --backend onnxruntime)")
    if config.mkldnn and paddle_files.get("onednn") is False:
        from dataclasses import replace

        config = replace(config, mkldnn=False)  # the export says oneDNN computes this graph wrongly
    return PaddleInferenceSession(export_dir / paddle_files["dir"], config,
                                  paddle_files["program"], paddle_files["params"])
