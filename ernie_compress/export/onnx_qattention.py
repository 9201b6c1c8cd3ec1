"""Fuse an INT8 encoder layer's q/k/v projections and attention core into ONNX Runtime's
``com.microsoft.QAttention``.

In the INT8 CPU model (``onnx_int8.py``) each projection is ``MatMulIntegerToFloat(x_q, W_q,
x_scale, W_scale, x_zp, W_zp, bias)`` over one uint8 activation ``x_q`` (q, k and v read one tensor,
so they share one activation grid), then the attention core of ``onnx_attention.py`` reshapes,
transposes, scales, masks and multiplies. ``QAttention`` (contrib-op spec: input uint8
[B, S, H_in], weight int8 [H_in, 3H] with per-column scales and zero points [3H], bias [3H],
mask_index, ``scale`` and ``mask_filter_value`` attributes; 1/sqrt(head size) when no scale is
given) computes the same three integer GEMMs as one [H_in, 3H] GEMM and the attention in one
kernel. The weights, scales and biases are the projections' own, concatenated in q, k, v order
(the kernel's layout): no number changes, only where the float work around attention runs.

The padding mask is the 2-D key mask ``MultiHeadAttention`` takes ([B, S] int32, 1 keeps a key):
the attention kernels share their mask handling (``AttentionBase``), and the masked scores get the
graph's own filler (``mask_filter_value``). The matcher accepts exactly the form above — three
integer projections of one quantized input, per-column (or per-tensor) weight scales, zero weight
zero points, and nothing else reading the projections — and leaves anything else to the float
``MultiHeadAttention`` fusion; the export verifies the fused graph against dygraph like any other.
"""

from __future__ import annotations

import numpy as np

from .onnx_attention import ORT_DOMAIN, _match, padding_mask_nodes, without_dead_mask_chain
from .onnx_graph import GraphIndex

FUSED_OP = "QAttention"


def _projection(g: GraphIndex, name: str) -> dict | None:
    """The integer projection producing ``name``: its quantized input and its constant operands."""
    node = g.parent(name, "MatMulIntegerToFloat")
    if node is None or node.domain != ORT_DOMAIN or len(node.input) != 7 or len(g.readers.get(name, [])) != 1:
        return None
    x, w, x_scale, w_scale, x_zp, w_zp, bias = node.input
    arrays = {key: g.const(n) for key, n in (("w", w), ("w_scale", w_scale), ("w_zp", w_zp), ("bias", bias),
                                              ("x_scale", x_scale), ("x_zp", x_zp))}
    if any(a is None for a in arrays.values()):
        return None
    weight = arrays["w"]
    if weight.ndim != 2 or weight.dtype != np.int8 or np.any(arrays["w_zp"] != 0) or arrays["bias"].shape != (weight.shape[1],):
        return None
    if arrays["w_scale"].size not in (1, weight.shape[1]) or arrays["x_scale"].size != 1 or arrays["x_zp"].size != 1:
        return None
    return {"node": node, "x": x, **arrays}


def _match_quantized(g: GraphIndex, softmax) -> dict | None:
    """An attention core whose q, k and v are integer projections of one quantized input."""
    m = _match(g, softmax)
    if m is None:
        return None
    projections = [_projection(g, m[key]) for key in ("query", "key", "value")]
    if any(p is None for p in projections):
        return None
    q = projections[0]
    same_input = all(p["x"] == q["x"] and p["x_scale"].item() == q["x_scale"].item()
                     and p["x_zp"].item() == q["x_zp"].item() and p["w"].shape == q["w"].shape for p in projections)
    if not same_input or q["x_zp"].dtype != np.uint8:
        return None
    return {**m, "projections": projections}


def fuse_quantized_attention(model) -> int:
    """Rewrite every matching layer of ``model`` (an ``onnx.ModelProto``, in place) as one ``QAttention``;
    returns how many were fused (0 leaves the model unchanged)."""
    from onnx import helper, numpy_helper

    g = GraphIndex(model.graph)
    matches = [m for m in (_match_quantized(g, n) for n in g.nodes if n.op_type == "Softmax") if m is not None]
    if not matches:
        return 0
    masks, mask_nodes = padding_mask_nodes([m["mask"] for m in matches], "qattention")
    initializers = []
    replaced = {id(node) for m in matches for node in m["replaced"] + [p["node"] for p in m["projections"]]}
    fused_at = {}
    for i, m in enumerate(matches):
        projections = m["projections"]
        width = projections[0]["w"].shape[1]
        weight = np.concatenate([p["w"] for p in projections], axis=1)  # [H_in, 3H] int8: q | k | v columns
        scales = np.concatenate([np.broadcast_to(p["w_scale"].reshape(-1), (width,)) for p in projections])
        bias = np.concatenate([p["bias"] for p in projections])
        prefix = f"qattention_{i}"
        initializers += [numpy_helper.from_array(weight, f"{prefix}.weight"),
                         numpy_helper.from_array(scales.astype(np.float32), f"{prefix}.weight_scale"),
                         numpy_helper.from_array(np.zeros(3 * width, np.int8), f"{prefix}.weight_zero_point"),
                         numpy_helper.from_array(bias.astype(np.float32), f"{prefix}.bias")]
        q = projections[0]["node"]
        fused_at[id(m["replaced"][-1])] = helper.make_node(
            FUSED_OP, [q.input[0], f"{prefix}.weight", f"{prefix}.bias", q.input[2], f"{prefix}.weight_scale",
                       masks[m["mask"]], q.input[4], f"{prefix}.weight_zero_point"], [m["output"]],
            name=f"{m['output']}_qattention", domain=ORT_DOMAIN, num_heads=m["heads"], scale=m["scale"],
            mask_filter_value=m["mask"][2])
    nodes = []
    for node in g.nodes:
        fused = fused_at.get(id(node))
        if fused is not None:
            nodes += mask_nodes  # before the first fused node: after whatever makes the padding id
            mask_nodes = []
            nodes.append(fused)
        elif id(node) not in replaced:
            nodes.append(node)
    del model.graph.node[:]
    model.graph.node.extend(nodes)
    model.graph.initializer.extend(initializers)
    operands = {name for m in matches for p in m["projections"] for name in p["node"].input[1:]}
    _drop_unread(model, operands)
    return len(matches)


def _drop_unread(model, operands: set[str]) -> None:
    """Remove the nodes of the old float mask chain that nothing reads any more, and those of the
    projections' constant ``operands`` (weights, scales, zero points, biases) that nothing reads."""
    outputs = {o.name for o in model.graph.output}
    nodes = without_dead_mask_chain(list(model.graph.node), outputs)
    read = {name for n in nodes for name in n.input} | outputs | {i.name for i in model.graph.input}
    kept = [t for t in model.graph.initializer if t.name in read or t.name not in operands]
    del model.graph.node[:]
    model.graph.node.extend(nodes)
    del model.graph.initializer[:]
    model.graph.initializer.extend(kept)
