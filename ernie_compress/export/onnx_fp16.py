"""FP16 ONNX: weights and arithmetic in half precision, inputs and outputs unchanged.

onnxruntime's float16 converter (``onnxruntime.transformers.float16``) rewrites initializers and
tensor types to FP16 and, with ``keep_io_types``, adds casts at the graph boundary so callers keep
feeding int64 ids and reading FP32 logits. LayerNormalization, Softmax and the final logits are
numerically sensitive: we keep ops the converter blocks by default in FP32 (its op block list).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any


def convert_onnx_fp16(fp32_path: Path, out_path: Path) -> dict[str, Any]:
    import onnx
    from onnxruntime.transformers.float16 import convert_float_to_float16

    model = onnx.load(str(fp32_path))
    converted = convert_float_to_float16(model, keep_io_types=True, disable_shape_infer=False)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(converted, str(out_path))
    halves = sum(1 for init in converted.graph.initializer if init.data_type == onnx.TensorProto.FLOAT16)
    return {"fp16_initializers": halves, "bytes": out_path.stat().st_size}
