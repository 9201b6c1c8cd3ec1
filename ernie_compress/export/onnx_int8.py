"""INT8 QDQ ONNX from an FP32 ONNX model plus the scales a QAT/PTQ checkpoint carries.

ONNX Runtime's static quantizer inserts QuantizeLinear/DequantizeLinear pairs around the chosen
MatMuls (QDQ format); at session creation its CPU graph optimizer fuses each pattern into an
integer kernel (``MatMulIntegerToFloat`` / ``QLinearMatMul``). We choose exactly the MatMuls whose
weight is a quantized Linear (paddle2onnx names initializers by Paddle's parameter ``name``, e.g.
``linear_3.w_0``, which we map back to state-dict names) and pin every scale through
``TensorQuantOverrides``:

- activation (the MatMul's input): ``rmin = -absmax, rmax = +absmax`` with u8 (zero point 128);
- weight: per output channel (axis 1, Paddle's [in, out] layout), ``scale = absmax / qmax`` and
  zero point 0, where ``qmax`` is 63 for 7-bit (reduce_range) and 127 for 8-bit weights — the same
  grid the fake-quant model trained on.

Calibration is then only a formality (every quantized tensor is overridden): a few real inputs
are passed because the API requires a reader.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from ..errors import UserError
from .onnx_graph import GraphIndex


class _SampleReader:
    """The ``CalibrationDataReader`` protocol over a list of feed dicts."""

    def __init__(self, feeds: list[dict[str, np.ndarray]]):
        self._feeds = iter(feeds)

    def get_next(self):
        return next(self._feeds, None)


def int8_overrides(model, scales: dict[str, dict[str, Any]], weight_bits: int,
                   param_names: dict[str, str]) -> tuple[list[str], dict]:
    """(names of the MatMul nodes to quantize, TensorQuantOverrides) for ``model``.

    ``param_names`` maps the Paddle parameter names paddle2onnx gives the initializers
    (``linear_3.w_0``) to state-dict names (``ernie.encoder.layers.0.linear1.weight``).
    """
    from onnxruntime.quantization import QuantType

    initializers = {init.name for init in model.graph.initializer}
    qmax = (1 << (weight_bits - 1)) - 1
    nodes, overrides, found = [], {}, set()
    for node in model.graph.node:
        if node.op_type != "MatMul" or len(node.input) != 2 or node.input[1] not in initializers:
            continue
        weight = node.input[1]
        structured = param_names.get(weight, weight)
        layer = structured[: -len(".weight")] if structured.endswith(".weight") else None
        if layer not in scales:
            continue
        found.add(layer)
        nodes.append(node.name)
        act = float(scales[layer]["input_absmax"])
        if node.input[0] in overrides:  # q/k/v read one tensor: one grid, wide enough for all
            act = max(act, float(overrides[node.input[0]][0]["rmax"]))
        overrides[node.input[0]] = [{"rmin": np.float32(-act), "rmax": np.float32(act),
                                     "quant_type": QuantType.QUInt8}]
        channel = np.maximum(np.asarray(scales[layer]["weight_absmax"], dtype=np.float64), 1e-8)
        overrides[weight] = [{"axis": 1, "scale": np.float32(a / qmax), "zero_point": np.int8(0),
                              "quant_type": QuantType.QInt8} for a in channel]
    missing = sorted(set(scales) - found)
    if missing:
        raise UserError(f"the ONNX graph has no MatMul for {len(missing)} quantized layer(s), "
                        f"e.g. {missing[0]}; cannot place their scales")
    return nodes, overrides


def quantize_onnx_int8(fp32_path: Path, out_path: Path, qdq_path: Path, scales: dict[str, dict[str, Any]],
                       weight_bits: int, samples: list[dict[str, np.ndarray]],
                       param_names: dict[str, str]) -> dict[str, Any]:
    """Write the INT8 models; returns what was quantized.

    ``qdq_path``: the standard QDQ model (QuantizeLinear/DequantizeLinear around float MatMuls),
    for runtimes that build their own integer kernels from QDQ (TensorRT, OpenVINO, ORT's GPU
    providers). ``out_path``: the same model with each quantized Linear written as ONNX Runtime's
    CPU integer kernel, bias included (:func:`fuse_bias_into_integer_matmuls`).
    """
    import onnx
    from onnxruntime.quantization import QuantFormat, QuantType, quantize_static

    model = onnx.load(str(fp32_path))
    qdq_path.parent.mkdir(parents=True, exist_ok=True)
    nodes, overrides = int8_overrides(model, scales, weight_bits, param_names)
    quantize_static(
        str(fp32_path), str(qdq_path), _SampleReader(samples), quant_format=QuantFormat.QDQ,
        op_types_to_quantize=["MatMul"], nodes_to_quantize=nodes, per_channel=True,
        reduce_range=weight_bits == 7, activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
        extra_options={"TensorQuantOverrides": overrides, "ActivationSymmetric": False,
                       "WeightSymmetric": True,
                       # keep MatMul outputs in float: no re-quantization (and no scale that the
                       # checkpoint does not carry); ORT then fuses to MatMulIntegerToFloat
                       "OpTypesToExcludeOutputQuantization": ["MatMul"]})
    quantized = onnx.load(str(qdq_path))
    rewired = keep_float_for_other_consumers(quantized)
    onnx.save(quantized, str(qdq_path))
    bias_fused = fuse_bias_into_integer_matmuls(quantized)  # from here on the CPU model
    onnx.save(quantized, str(out_path))
    return {"quantized_matmuls": len(nodes), "weight_bits": weight_bits, "float_consumers_kept": rewired,
            "bias_fused_matmuls": bias_fused}


def keep_float_for_other_consumers(model) -> int:
    """Point every non-MatMul reader of a quantize-dequantize pair back at the float tensor.

    The QDQ quantizer replaces a quantized activation by its dequantized copy for *all* readers,
    so the residual connection (the Add / LayerNorm beside the next Linear) would read the
    rounded activation: a numerical change the fake-quant model never made, and a
    DequantizeLinear that ONNX Runtime cannot fuse away. Only the MatMuls need the rounded copy.
    Operates on the ``onnx.ModelProto`` in place; returns how many inputs were pointed back.
    """
    producer = {out: node for node in model.graph.node for out in node.output}
    float_of = {}  # DequantizeLinear output -> the float tensor its QuantizeLinear read
    for node in model.graph.node:
        if node.op_type == "DequantizeLinear":
            q = producer.get(node.input[0])
            if q is not None and q.op_type == "QuantizeLinear":
                float_of[node.output[0]] = q.input[0]
    rewired = 0
    for node in model.graph.node:
        if node.op_type in ("MatMul", "DequantizeLinear", "QuantizeLinear"):
            continue
        for i, name in enumerate(node.input):
            if name in float_of:
                node.input[i] = float_of[name]
                rewired += 1
    return rewired


def integer_ops(onnx_path: Path, threads: int = 1) -> dict[str, int]:
    """Operator counts of the graph ONNX Runtime actually runs (after its CPU fusions)."""
    import tempfile

    import onnx
    import onnxruntime as ort

    with tempfile.TemporaryDirectory() as tmp:
        optimized = Path(tmp) / "optimized.onnx"
        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        options.optimized_model_filepath = str(optimized)
        options.intra_op_num_threads = threads
        options.log_severity_level = 3
        ort.InferenceSession(str(onnx_path), options, providers=["CPUExecutionProvider"])
        graph = onnx.load(str(optimized)).graph
    counts: dict[str, int] = {}
    for node in graph.node:
        counts[node.op_type] = counts.get(node.op_type, 0) + 1
    return counts


def fuse_bias_into_integer_matmuls(model) -> int:
    """Rewrite each quantized Linear (DQ(x), DQ(W) -> MatMul -> Add(bias)) as one
    ``com.microsoft.MatMulIntegerToFloat(x_q, W_q, x_scale, W_scale, x_zp, W_zp, bias)``.

    ONNX Runtime's QDQ fusion builds ``MatMulIntegerToFloat`` without its bias input, so a bias Add
    that no later fusion absorbs (attention's q/k/v projections: 3 per layer) stays a separate
    pass over a [batch, seq, hidden] float tensor; its dynamic-quantization fusion takes the bias.
    This writes the fused form itself (same integers, same scales, same arithmetic). Operates on
    the ``onnx.ModelProto`` in place; returns how many Linears were rewritten.
    """
    from onnx import helper

    index = GraphIndex(model.graph)
    replacement, dropped = {}, set()  # Add node id -> fused node; MatMul node ids dropped
    for node in index.nodes:
        fused = _integer_linear_with_bias(index, node) if node.op_type == "MatMul" else None
        if fused is not None:
            add, inputs = fused
            replacement[id(add)] = helper.make_node("MatMulIntegerToFloat", inputs, [add.output[0]],
                                                    name=f"{node.name}_int8_bias", domain="com.microsoft")
            dropped.add(id(node))
    if not replacement:
        return 0
    # the fused node takes the Add's place: every input it reads is produced before the MatMul
    nodes = [replacement.get(id(n), n) for n in index.nodes if id(n) not in dropped]
    read = {name for n in nodes for name in n.input} | index.outputs
    nodes = [n for n in nodes if n.op_type != "DequantizeLinear" or n.output[0] in read]
    del model.graph.node[:]
    model.graph.node.extend(nodes)
    if not any(op.domain == "com.microsoft" for op in model.opset_import):
        model.opset_import.append(helper.make_opsetid("com.microsoft", 1))
    return len(replacement)


def _integer_linear_with_bias(index: GraphIndex, matmul):
    """(the bias Add, MatMulIntegerToFloat's inputs) when ``matmul`` multiplies a dequantized activation
    (one scale) by a dequantized constant weight [in, out] (one scale per output column, or one in all)
    and only a 1-D constant bias Add reads it; else None."""
    x_dq, w_dq = (index.parent(name, "DequantizeLinear") for name in matmul.input[:2])
    if x_dq is None or w_dq is None or len(x_dq.input) < 3 or len(w_dq.input) < 3:
        return None
    if not all(index.is_initializer(name) for name in (w_dq.input[0], w_dq.input[1], x_dq.input[1])):
        return None
    axis = next((a.i for a in w_dq.attribute if a.name == "axis"), 1)
    if axis not in (1, -1) and index.const(w_dq.input[1]).size != 1:
        return None  # MatMulIntegerToFloat takes one scale per output column [in, out], or one in all
    if index.const(x_dq.input[1]).size != 1:
        return None  # and one activation scale
    add = index.only_reader(matmul.output[0], "Add")
    if add is None:
        return None
    bias = add.input[1] if add.input[0] == matmul.output[0] else add.input[0]
    if not index.is_initializer(bias) or index.const(bias).ndim != 1:
        return None
    return add, [x_dq.input[0], w_dq.input[0], x_dq.input[1], w_dq.input[1], x_dq.input[2], w_dq.input[2], bias]
