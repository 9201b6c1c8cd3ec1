"""Keep ONNX Runtime's CPU session on its fast LayerNormalization kernel for the residual sums.

Every post-LN encoder layer ends twice in ``LayerNormalization(x + sublayer(x))`` (Ba et al., 2016,
"Layer Normalization"; Vaswani et al., 2017, section 3.1). At load, ONNX Runtime's
``SkipLayerNormFusion`` turns each ``Add -> LayerNormalization`` into its contrib op
``SkipLayerNormalization``, whose CPU kernel (onnxruntime 1.32, contrib_ops/cpu/skip_layer_norm.cc)
is a scalar loop with a division per element, several times slower than ``Add`` +
``LayerNormalization`` (``benchmarks/layer_norm_kernels.py`` times both; in an INT8 ERNIE 3.0 base
at batch 32 it is a large share of what is not integer GEMM). The fusion matches the op type
``Add`` only, so writing the residual sum as the standard ``Sum`` (same arithmetic: one float
addition per element) keeps both kernels fast. A session can get the same with
``disabled_optimizers=["SkipLayerNormFusion"]``; the graph rewrite makes it the default for anyone
who loads the file.
"""

from __future__ import annotations

from .onnx_graph import GraphIndex


def residual_sums_as_sum(model) -> int:
    """Rewrite each ``Add`` whose only reader is a LayerNormalization (and whose inputs are both
    computed tensors, not constants: a residual sum, not a bias) as ``Sum``, in place on the
    ``onnx.ModelProto``; returns how many were rewritten."""
    g = GraphIndex(model.graph)
    rewritten = 0
    for node in g.nodes:
        if node.op_type != "Add" or node.domain not in ("", "ai.onnx") or len(node.input) != 2:
            continue
        norm = g.only_reader(node.output[0], "LayerNormalization")
        if norm is None or norm.input[0] != node.output[0] or any(map(g.is_constant, node.input)):
            continue
        node.op_type = "Sum"
        rewritten += 1
    return rewritten
