"""Convert a Paddle static graph to ONNX with paddle2onnx, isolated in a subprocess.

paddle2onnx's C++ core can abort the whole process on a graph it does not handle, so it runs in a
child interpreter and we check that the file appeared. Its default optimize tool (polygraphy)
tries to download a package, so ``optimize_tool="None"``. The raw output holds the weights as
``Constant`` nodes; ONNX Runtime's pre-processing for quantization (symbolic shape inference plus
the basic graph optimizations) turns them into initializers and annotates shapes, which is what
downstream tools (the quantizer, the float16 converter) expect.
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
from pathlib import Path

DEFAULT_OPSET = 17  # opset 17 emits LayerNormalization as one node

_CONVERT = """
import json, sys
import paddle2onnx
args = json.loads(sys.argv[1])
paddle2onnx.export(args["program"], args["params"], save_file=args["out"],
                   opset_version=args["opset"], optimize_tool="None", enable_onnx_checker=True,
                   verbose=False)
"""


class OnnxExportError(RuntimeError):
    pass


def convert_to_onnx(program: Path, params: Path, out: Path, opset: int = DEFAULT_OPSET,
                    timeout_s: int = 600) -> Path:
    """Write ``out`` (an ONNX model with initializers and shape annotations)."""
    out.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=out.parent) as tmp:
        raw = Path(tmp) / "raw.onnx"
        args = json.dumps({"program": str(program), "params": str(params), "out": str(raw),
                           "opset": opset})
        proc = subprocess.run([sys.executable, "-c", _CONVERT, args], capture_output=True,
                              text=True, timeout=timeout_s,
                              env=_child_env())
        if proc.returncode != 0 or not raw.is_file():
            tail = (proc.stderr or proc.stdout).strip().splitlines()[-3:]
            raise OnnxExportError(f"paddle2onnx failed (exit {proc.returncode}): {' | '.join(tail)}")
        preprocess_for_onnxruntime(raw, out)
    return out


ONNX_OPS = ("onnxruntime", "standard")
INT8_ATTENTION = ("multihead", "qattention")  # export --int8-attention


def rewrite_for_onnxruntime(path: Path, quantized_attention: bool = False) -> dict[str, int]:
    """Rewrite the model at ``path`` for ONNX Runtime's CPU session (in place): with
    ``quantized_attention`` an INT8 layer's q/k/v projections and attention core as ``QAttention``
    (:mod:`.onnx_qattention`), the other attention cores as ``MultiHeadAttention``
    (:mod:`.onnx_attention`), residual sums before a LayerNormalization as ``Sum``
    (:mod:`.onnx_layer_norm`). Returns how many of each were rewritten."""
    import onnx

    from .onnx_attention import fuse_attention
    from .onnx_layer_norm import residual_sums_as_sum
    from .onnx_qattention import fuse_quantized_attention

    model = onnx.load(str(path))
    counts = {"quantized_attention": fuse_quantized_attention(model)} if quantized_attention else {}
    counts.update(fused_attention=fuse_attention(model), residual_sums=residual_sums_as_sum(model))
    if any(counts.values()):
        onnx.save(model, str(path))
    return counts


def rename_output(path: Path, name: str) -> None:
    """Give the model's single output a task name (``logits``, ``token_logits``, ``span_logits``)."""
    import onnx

    model = onnx.load(str(path))
    old = model.graph.output[0].name
    if old == name:
        return
    for node in model.graph.node:
        node.output[:] = [name if o == old else o for o in node.output]
        node.input[:] = [name if i == old else i for i in node.input]
    model.graph.output[0].name = name
    onnx.save(model, str(path))


def preprocess_for_onnxruntime(src: Path, dst: Path) -> None:
    """Symbolic shape inference + basic graph optimizations (constants become initializers)."""
    import logging

    import onnxruntime
    from onnxruntime.quantization.shape_inference import quant_pre_process

    onnxruntime.set_default_logger_severity(3)  # unused-initializer warnings are expected here
    quiet = logging.getLogger().level
    logging.getLogger().setLevel(logging.WARNING)
    try:
        try:
            quant_pre_process(str(src), str(dst), skip_optimization=False, skip_onnx_shape=False,
                              skip_symbolic_shape=False, auto_merge=True)
        except AssertionError:
            # ONNX Runtime's symbolic shape inference cannot follow some data-dependent shapes
            # (the decoder's causal mask built from the sequence length); ONNX's own shape
            # inference is enough for the optimizer and the quantizer.
            quant_pre_process(str(src), str(dst), skip_optimization=False, skip_onnx_shape=False,
                              skip_symbolic_shape=True)
    finally:
        logging.getLogger().setLevel(quiet)


def _child_env() -> dict[str, str]:
    import os

    env = dict(os.environ)
    env.setdefault("MKL_DEBUG_CPU_TYPE", "5")
    env.setdefault("GLOG_minloglevel", "2")
    return env
