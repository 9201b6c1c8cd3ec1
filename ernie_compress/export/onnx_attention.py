"""Fuse each encoder self-attention core into ONNX Runtime's ``com.microsoft.MultiHeadAttention``.

paddle2onnx writes attention as standard ops (Vaswani et al., 2017, "Attention Is All You Need",
eq. 1), per layer::

    q, k, v: [B, S, H] (the projections: MatMul + Add, or MatMulIntegerToFloat with bias in INT8)
    Reshape(q, [0, 0, N, D]) -> Transpose(0, 2, 1, 3) -> Mul(scale)          q4:  [B, N, S, D]
    Reshape(k, [0, 0, N, D]) -> Transpose(0, 2, 3, 1)                        kT:  [B, N, D, S]
    Reshape(v, [0, 0, N, D]) -> Transpose(0, 2, 1, 3)                        v4:  [B, N, S, D]
    Softmax(MatMul(q4, kT) + mask) -> MatMul(., v4) -> Transpose(0, 2, 1, 3) -> Reshape([0, 0, H])

where ``mask = Unsqueeze(Cast(Equal(input_ids, pad)) * c, [1, 2])``: [B, 1, 1, S]. ONNX Runtime's
transformer optimizer does not recognise this form (it fused 0 Attention in our graphs), so its
CPU session runs ~10 kernels and 4 transposed copies per layer. ``MultiHeadAttention``
(contrib-op spec: query/key/value [B, S, H], ``key_padding_mask`` [B, S] int32 where 0 masks a key,
``mask_filter_value`` added to masked scores, ``scale`` applied to QK^T) computes the same thing in
one kernel straight from the projections' [B, S, H] layout. The projections stay what they were,
so the rewrite is the same for FP32 and INT8 graphs and changes no weight: only the float work
around attention (batched MatMuls, softmax, transposes) moves into the fused kernel.

The matcher accepts exactly the form above and leaves anything else alone; the export verifies
the fused graph against dygraph like any other.
"""

from __future__ import annotations

from .onnx_graph import GraphIndex

FUSED_OP = "MultiHeadAttention"
ORT_DOMAIN = "com.microsoft"


def _perm(node) -> list[int]:
    return next((list(a.ints) for a in node.attribute if a.name == "perm"), [])


def _heads(g: GraphIndex, transpose, perm: list[int]) -> tuple[str, int, int, list] | None:
    """Follow ``Transpose(perm) <- Reshape(x, [0, 0, N, D])`` up to x: (x, N, D, the two nodes)."""
    if transpose is None or _perm(transpose) != perm:
        return None
    reshape = g.parent(transpose.input[0], "Reshape")
    shape = None if reshape is None else g.const(reshape.input[1])
    if shape is None or shape.shape != (4,) or list(shape[:2]) != [0, 0] or min(shape[2:]) <= 0:
        return None
    if len(g.readers.get(reshape.output[0], [])) != 1 or len(g.readers.get(transpose.output[0], [])) != 1:
        return None
    return reshape.input[0], int(shape[2]), int(shape[3]), [reshape, transpose]


def _padding_mask(g: GraphIndex, name: str) -> tuple[str, str, float] | None:
    """``Unsqueeze(Mul(Cast(Equal(ids, pad)), c), [1, 2])`` -> (ids, pad tensor name, c)."""
    unsqueeze = g.parent(name, "Unsqueeze")
    axes = None if unsqueeze is None or len(unsqueeze.input) < 2 else g.const(unsqueeze.input[1])
    if axes is None or sorted(axes.reshape(-1).tolist()) != [1, 2]:
        return None
    mul = g.parent(unsqueeze.input[0], "Mul")
    if mul is None:
        return None
    for cast_in, c_in in ((mul.input[0], mul.input[1]), (mul.input[1], mul.input[0])):
        cast, c = g.parent(cast_in, "Cast"), g.const(c_in)
        equal = None if cast is None else g.parent(cast.input[0], "Equal")
        if c is not None and c.size == 1 and equal is not None:
            ids, pad = equal.input
            if g.const(pad) is None:
                ids, pad = pad, ids
            if g.const(pad) is not None and g.const(ids) is None:
                return ids, pad, float(c.reshape(-1)[0])
    return None


def _match(g: GraphIndex, softmax) -> dict | None:
    """The attention core around one Softmax, or None when it is not exactly the form above."""
    axis = next((a.i for a in softmax.attribute if a.name == "axis"), -1)
    if axis != -1:
        return None
    add = g.parent(softmax.input[0], "Add")
    if add is None or len(g.readers.get(add.output[0], [])) != 1:
        return None
    for scores_in, mask_in in ((add.input[0], add.input[1]), (add.input[1], add.input[0])):
        scores = g.parent(scores_in, "MatMul")
        mask = _padding_mask(g, mask_in)
        if scores is not None and mask is not None and len(g.readers.get(scores.output[0], [])) == 1:
            break
    else:
        return None
    scale_node = g.parent(scores.input[0], "Mul")
    if scale_node is None:
        return None
    scaled_in, scale_c = scale_node.input
    scale = g.const(scale_c)
    if scale is None:
        scaled_in, scale_c = scale_c, scaled_in
        scale = g.const(scale_c)
    if scale is None or scale.size != 1 or len(g.readers.get(scale_node.output[0], [])) != 1:
        return None
    q = _heads(g, g.parent(scaled_in, "Transpose"), [0, 2, 1, 3])
    k = _heads(g, g.parent(scores.input[1], "Transpose"), [0, 2, 3, 1])
    context = g.only_reader(softmax.output[0], "MatMul")
    if q is None or k is None or context is None or context.input[0] != softmax.output[0]:
        return None
    v = _heads(g, g.parent(context.input[1], "Transpose"), [0, 2, 1, 3])
    merge = g.only_reader(context.output[0], "Transpose")
    if v is None or merge is None or _perm(merge) != [0, 2, 1, 3]:
        return None
    flatten = g.only_reader(merge.output[0], "Reshape")
    shape = None if flatten is None else g.const(flatten.input[1])
    heads, head_dim = q[1], q[2]
    if (k[1:3] != (heads, head_dim) or v[1:3] != (heads, head_dim) or shape is None
            or shape.reshape(-1).tolist() not in ([0, 0, heads * head_dim], [0, 0, -1])):
        return None
    return {"query": q[0], "key": k[0], "value": v[0], "output": flatten.output[0], "heads": heads,
            "scale": float(scale.reshape(-1)[0]), "mask": mask,
            "replaced": q[3] + k[3] + v[3] + [scale_node, scores, add, softmax, context, merge, flatten]}


def padding_mask_nodes(rules: list[tuple[str, str, float]], prefix: str) -> tuple[dict, list]:
    """One int32 key mask [B, S] (1 keeps a key, 0 masks it) per padding rule (ids, pad id, filler):
    the rule -> mask name, and the nodes that compute them (``Not(Equal(ids, pad))`` cast). ``prefix``
    names them apart from another fusion's masks in the same graph."""
    from onnx import TensorProto, helper

    masks: dict[tuple[str, str, float], str] = {}
    nodes = []
    for ids, pad, filler in rules:
        if (ids, pad, filler) not in masks:
            name = f"{prefix}_key_padding_mask_{len(masks)}"
            nodes += [helper.make_node("Equal", [ids, pad], [f"{name}_is_pad"], name=f"{name}_equal"),
                      helper.make_node("Not", [f"{name}_is_pad"], [f"{name}_keep"], name=f"{name}_not"),
                      helper.make_node("Cast", [f"{name}_keep"], [name], name=f"{name}_cast", to=TensorProto.INT32)]
            masks[(ids, pad, filler)] = name
    return masks, nodes


def without_dead_mask_chain(nodes: list, outputs: set[str]) -> list:
    """``nodes`` less the old float mask chain (Equal -> Cast -> Mul -> Unsqueeze) once a fusion has left
    it without a reader (nor a graph output among ``outputs``)."""
    while True:
        read = {name for n in nodes for name in n.input} | outputs
        dead = {id(n) for n in nodes if n.output and all(o not in read for o in n.output)
                and n.op_type in ("Unsqueeze", "Mul", "Cast", "Equal")}
        if not dead:
            return nodes
        nodes = [n for n in nodes if id(n) not in dead]


def fuse_attention(model) -> int:
    """Rewrite every matching attention core of ``model`` (an ``onnx.ModelProto``, in place) as one
    ``MultiHeadAttention`` node; returns how many were fused (0 leaves the model unchanged)."""
    from onnx import helper

    g = GraphIndex(model.graph)
    matches = [m for m in (_match(g, n) for n in g.nodes if n.op_type == "Softmax") if m is not None]
    if not matches:
        return 0
    masks, new_mask_nodes = padding_mask_nodes([m["mask"] for m in matches], "attention")
    replaced = {id(node) for m in matches for node in m["replaced"]}
    fused_at = {id(m["replaced"][-1]): m for m in matches}  # the fused node takes the output Reshape's place
    nodes = []
    for node in g.nodes:
        m = fused_at.get(id(node))
        if m is not None:
            nodes += new_mask_nodes  # before the first fused node: after whatever makes `pad`
            new_mask_nodes = []
            nodes.append(helper.make_node(
                FUSED_OP, [m["query"], m["key"], m["value"], "", masks[m["mask"]]], [m["output"]],
                name=f"{m['output']}_mha", domain=ORT_DOMAIN, num_heads=m["heads"], scale=m["scale"],
                mask_filter_value=m["mask"][2]))
        elif id(node) not in replaced:
            nodes.append(node)
    nodes = without_dead_mask_chain(nodes, g.outputs)
    del model.graph.node[:]
    model.graph.node.extend(nodes)
    if not any(op.domain == ORT_DOMAIN for op in model.opset_import):
        model.opset_import.append(helper.make_opsetid(ORT_DOMAIN, 1))
    return len(matches)
