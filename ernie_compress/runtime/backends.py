"""How an export is asked to run (device, backend, threads) and the runtimes behind it.

=========  ===========================================  ==========================================
device     paddle (Paddle Inference)                    onnxruntime
=========  ===========================================  ==========================================
cpu        oneDNN (``enable_mkldnn``), or plain         CPUExecutionProvider
gpu        ``enable_use_gpu`` (+ TensorRT FP16/INT8)    CUDAExecutionProvider (+ TensorRT EP)
npu        custom device ``npu`` (Ascend)               CANNExecutionProvider
=========  ===========================================  ==========================================

The runtimes are registered with what they can run (``registry.py``; the built-in ones are
``paddle_backend.py`` and ``onnxruntime_backend.py``); this module holds the options every command
that runs an export shares, and re-exports the runtime names other modules import from here.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any

from ..errors import UserError
from ..options import option
from .onnxruntime_backend import (ORT_INSTALL_HINT, ORT_PROVIDERS, OnnxRuntimeSession, onnx_model_file,
                                  onnxruntime_providers)
from .paddle_backend import PADDLE_INSTALL_HINT, PaddleInferenceSession, paddle_device_check
from .registry import choose_runtime, get_runtime, open_session, runtime_names
from .session import ENCODER, Session

__all__ = ["DEVICES", "BACKENDS", "ORT_INSTALL_HINT", "ORT_PROVIDERS", "PADDLE_INSTALL_HINT", "OnnxRuntimeSession",
           "PaddleInferenceSession", "RuntimeConfig", "RuntimeOptions", "Session", "ThreadsOption",
           "onnx_model_file", "onnxruntime_providers", "open_session", "paddle_device_check"]

DEVICES = ("cpu", "gpu", "npu")
BACKENDS = runtime_names()  # the runtimes registered when the command line is built (--backend's choices)


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
    backend: str | None = None  # None: the device's default runtime among those whose files the export has
    threads: int | None = None  # CPU threads (None: every core)
    tensorrt: bool = False  # gpu only: TensorRT subgraphs (Paddle) / TensorRT EP (ORT)
    mkldnn: bool = True  # paddle cpu: oneDNN kernels
    profile: bool = False  # record per-operator times

    def __post_init__(self) -> None:
        if self.device not in DEVICES:
            raise UserError(f"unknown device '{self.device}' (use one of {', '.join(DEVICES)})")
        if self.backend is not None:
            get_runtime(self.backend)  # an unknown name is a one-line error listing the registered ones
        if self.tensorrt and self.device != "gpu":
            raise UserError("--tensorrt needs --device gpu")
        if self.threads is not None and self.threads < 1:
            raise UserError(f"--threads must be >= 1, got {self.threads}")

    def backend_for(self, files: dict[str, Any], kind: str = ENCODER) -> str:
        """``--backend`` if given; else the device's default runtime when the export has its files,
        else one whose files the export has (an ONNX-only export runs on ONNX Runtime)."""
        return self.backend or choose_runtime(files, kind, self.device).name

    def for_kind(self, kind: str) -> RuntimeConfig:
        """This config for a ``kind`` model of the same export: ``backend`` kept where that runtime
        runs ``kind``, else left for the export's files to choose (``evaluate --backend paddle`` on a
        causal LM: the full-sequence model on Paddle Inference, the KV-cache decoder where it runs)."""
        if self.backend and not get_runtime(self.backend).runs(kind):
            return replace(self, backend=None)
        return self
