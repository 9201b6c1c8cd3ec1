"""ONNX Runtime as a registered runtime: the full-sequence ONNX model (encoder) and the KV-cache
decoder, on CPU (CPUExecutionProvider), GPU (CUDA, optionally TensorRT) and NPU (CANN).

Provider selection is a pure function of what is installed (:func:`onnxruntime_providers`), so it
is unit-tested without the hardware; a missing provider is a one-line error that says what to
install. Nothing here imports Paddle.
"""

from __future__ import annotations

import contextlib
import io
import re
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from ..errors import UserError
from ..paddle_env import cpu_threads
from .op_profile import onnxruntime_op_profile
from .registry import KindSupport, Runtime, SessionRequest
from .session import DECODER, ENCODER

if TYPE_CHECKING:
    from .backends import RuntimeConfig

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


def _probe(device: str) -> str | None:
    """Why ONNX Runtime cannot run on ``device`` here (the missing provider and what to install), or None."""
    import onnxruntime as ort

    try:
        onnxruntime_providers(device, ort.get_available_providers())
    except UserError as exc:
        return str(exc)
    return None


def device_of(providers: Sequence[str]) -> str:
    """The device a session with these providers computes on (its first non-CPU provider's)."""
    by_provider = {p: d for d, names in ORT_PROVIDERS.items() for p in names}
    by_provider["TensorrtExecutionProvider"] = "gpu"
    return next((by_provider[p] for p in providers if by_provider.get(p, "cpu") != "cpu"), "cpu")


def _without_source_location(message: str, limit: int = 200) -> str:
    """ONNX Runtime's error text without its leading ``file.cc:123 signature(...)``, one line."""
    message = re.sub(r"^\S+:\d+ .*?\) ", "", message.strip(), count=1)
    message = message.split(" when using [")[0]
    return message if len(message) <= limit else message[:limit].rsplit(" ", 1)[0] + " ..."


def _session_options(ort, config: RuntimeConfig, profile_dir: Path | None):
    options = ort.SessionOptions()
    options.intra_op_num_threads = cpu_threads(config.threads)
    options.inter_op_num_threads = 1
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.log_severity_level = 3
    if config.profile:
        options.enable_profiling = True
        if profile_dir is not None:
            options.profile_file_prefix = str(profile_dir / "ort_profile")
    return options


def _refuse_fallback(asked: list[str], running: list[str], device: str, notice: str) -> None:
    """What was asked for must really run (e.g. TensorRT without libnvinfer): ONNX Runtime would
    silently fall back to the remaining providers."""
    dropped = [p for p in asked if p not in running]
    if not dropped:
        return
    hint = ORT_INSTALL_HINT.get("tensorrt" if "TensorrtExecutionProvider" in dropped else device,
                                "reinstall onnxruntime")
    reason = next((_without_source_location(line[len("EP Error "):]) for line in notice.splitlines()
                   if line.startswith("EP Error ")), "")
    reason = f" ({reason})" if reason else ""
    raise UserError(f"ONNX Runtime could not start {', '.join(dropped)}{reason}; "
                    f"it would run on {', '.join(running)} instead; {hint}")


class OnnxRuntimeSession:
    """An ONNX graph in an ``onnxruntime.InferenceSession``; as an encoder session, ``run`` feeds
    ``input_ids``/``token_type_ids`` (those the graph has) and returns the first output."""

    backend = "onnxruntime"
    kind = ENCODER

    def __init__(self, model_path: Path, config: RuntimeConfig, profile_dir: Path | None = None,
                 disabled_optimizers: tuple[str, ...] = ()):
        """``disabled_optimizers``: ONNX Runtime graph optimizers this session skips (by name, e.g.
        ``SkipLayerNormFusion``); none by default."""
        import onnxruntime as ort

        self.device = config.device
        providers = onnxruntime_providers(config.device, ort.get_available_providers(), config.tensorrt)
        options = _session_options(ort, config, profile_dir)
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
        _refuse_fallback(providers, self.providers, config.device, fallback_notice.getvalue())

    @property
    def session(self):
        """The ``onnxruntime.InferenceSession`` (for graphs with other inputs, e.g. the decoder's cache)."""
        return self._session

    def run(self, input_ids: np.ndarray, token_type_ids: np.ndarray) -> np.ndarray:
        feeds = {"input_ids": input_ids, "token_type_ids": token_type_ids}
        return self._session.run(None, {k: feeds[k] for k in self.input_names})[0]

    def end_profiling(self) -> str | None:
        return self._session.end_profiling()

    def op_profile(self, input_ids: np.ndarray, token_type_ids: np.ndarray, top_n: int) -> list[dict[str, Any]]:
        """The operators of every run so far (the session was opened with ``profile``); no new run."""
        return onnxruntime_op_profile(self.end_profiling(), top_n)


def onnx_model_file(onnx_files: dict[str, Any], device: str) -> str:
    """The ONNX file for ``device``: an INT8 export's ``model`` holds ONNX Runtime's CPU integer
    kernels; GPU/NPU providers build theirs from the standard QDQ form (``qdq_model``)."""
    if device != "cpu" and "qdq_model" in onnx_files:
        return onnx_files["qdq_model"]
    return onnx_files["model"]


def _open_encoder(request: SessionRequest) -> OnnxRuntimeSession:
    path = request.export_dir / onnx_model_file(request.files, request.config.device)
    return OnnxRuntimeSession(path, request.config, request.profile_dir)


def _open_decoder(request: SessionRequest):
    from .decoding import OnnxDecoder

    return OnnxDecoder.open(request.export_dir / request.files["model"], request.config, request.pad_id,
                            request.host_cache)


RUNTIME = Runtime(  # registered by registry.BUILTIN_MODULES
    name="onnxruntime",
    kinds={ENCODER: KindSupport("onnx", "ONNX model", "onnx", _open_encoder),
           DECODER: KindSupport("decoder", "decoder with a KV cache (onnx/decoder.onnx)", "onnx", _open_decoder)},
    devices=tuple(ORT_PROVIDERS), precisions=("fp32", "fp16", "int8"), preferred_on=("cpu",), profiles=True,
    probe=_probe)
