"""The scheme registry: each quantization scheme a checkpoint can carry, and how it deploys.

A quantize method (``stages/quantize.py``, one runner per config type) records its scheme in
``config.json["quantization"]``, whose ``method`` names it (``qat``, ``weight_only_gptq``, ...).
The export (``stages/export.py``) looks that method up here instead of comparing dtype strings:
the entry names the export path that writes and verifies its ONNX files, the precision the
manifest states, and the ONNX Runtime kernels its quantized MatMuls must run as.

Adding a method: a method that deploys like an existing scheme (SmoothQuant: INT8 with scales
migrated from activations to weights; AWQ: weight-only with activation-aware scales) adds its
method name to that scheme's ``methods``; one that deploys differently registers a new scheme
here and its export path in ``stages/export.py`` (``tests/quantize/test_method_registry.py``
checks that every method the quantize stage can write has both).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from ..errors import UserError


@dataclass(frozen=True)
class Scheme:
    """How checkpoints of one quantization scheme deploy."""

    name: str
    methods: tuple[str, ...]  # config.json quantization "method" values that carry this scheme
    export: str  # the export path that writes and verifies its ONNX files (a key of stages/export.EXPORT_PATHS)
    precision: str  # what the export manifest says onnx/model.onnx computes in
    kernels: tuple[str, ...] = ()  # ONNX Runtime kernels its quantized MatMuls run as (empty: float ones)
    fake_quant: bool = False  # float weights + learned scales: the export reproduces the fake-quant model


SCHEMES: dict[str, Scheme] = {}


def register_scheme(scheme: Scheme) -> Scheme:
    """Add ``scheme``; a method name may belong to one scheme only."""
    taken = {m for s in SCHEMES.values() if s.name != scheme.name for m in s.methods}
    if taken & set(scheme.methods):
        raise ValueError(f"scheme {scheme.name}: methods {sorted(taken & set(scheme.methods))} already registered")
    SCHEMES[scheme.name] = scheme
    return scheme


FP32 = register_scheme(Scheme("fp32", methods=(), export="fp32", precision="fp32"))
# QAT and PTQ (scheme.py's Int8Scheme): ONNX Runtime's CPU integer kernels, after its fusions
INT8 = register_scheme(Scheme("int8", methods=("qat", "ptq"), export="int8_qdq", precision="int8", fake_quant=True,
                              kernels=("MatMulIntegerToFloat", "QLinearMatMul", "MatMulInteger",
                                       "DynamicQuantizeMatMul", "QGemm")))
FP16 = register_scheme(Scheme("fp16", methods=("fp16",), export="fp16", precision="fp16"))
# weight_only.py / gptq.py: model.onnx is the float model of the dequantized weights (hence fp32);
# a causal LM's decoder.onnx runs the integer weights as MatMulNBits
WEIGHT_ONLY = register_scheme(Scheme("weight_only", methods=("weight_only_rtn", "weight_only_gptq", "weight_only_awq"),
                                     export="weight_only", precision="fp32", kernels=("MatMulNBits",)))

# smoothquant.py: int8 weights per channel (stored dequantized, as weight-only int8) and int8 activations
# quantized at run time; decoder.onnx runs them as DynamicQuantizeMatMul (model.onnx: the float model)
W8A8 = register_scheme(Scheme("w8a8", methods=("w8a8_smoothquant", "w8a8_rtn"), export="w8a8", precision="fp32",
                              kernels=("DynamicQuantizeMatMul",)))


def scheme_of(quant: dict[str, Any] | None) -> Scheme:
    """The scheme of a checkpoint's ``quantization`` entry (None: FP32)."""
    if not quant:
        return FP32
    method = quant.get("method")
    for scheme in SCHEMES.values():
        if method in scheme.methods:
            return scheme
    known = ", ".join(m for s in SCHEMES.values() for m in s.methods)
    raise UserError(f"config.json's quantization method {method!r} is not one this version deploys ({known})")
