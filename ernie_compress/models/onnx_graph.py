"""Writing an ONNX graph node by node: the builder every family's ONNX blocks (``*_onnx.py``) share.

A block builder receives a :class:`GraphBuilder`, the names of the tensors it reads, and the
parameter names of its layer; it appends nodes and initializers and returns the names of its
outputs (the way ONNX Runtime's generative model builder writes a decoder, rather than tracing
one). How a Linear's weight is applied is the builder's ``matmul`` strategy, and how an embedding
table's rows are read its ``gather`` strategy: float MatMul and Gather here; the export swaps in
integer kernels (``export/decoder_onnx.py``: ``com.microsoft.MatMulNBits``, ``GatherBlockQuantized``)
without any block knowing.

Only numpy is imported at module level; onnx is imported where a node is made.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

OPSET = 17
IR_VERSION = 8  # ONNX 1.12, the release that brought opset 17
# a decoder graph's metadata key: "shared" where GroupQueryAttention computes every present key/value,
# so a runtime may bind past and present to one buffer (``runtime/decoding.OnnxDecoder``)
SHARED_BUFFER_KEY = "ernie_compress.kv_buffer"


def f32(x) -> np.ndarray:
    return np.asarray(x, dtype=np.float32)


def i64(x) -> np.ndarray:
    return np.asarray(x, dtype=np.int64)


def float_matmul(g: GraphBuilder, x: str, weight: str, transposed: bool = False, name: str | None = None,
                 columns: tuple[int, int] | None = None) -> str:
    """``x @ W`` for a Paddle weight W [in, out]; ``transposed``: W is stored [out, in] (a tied
    embedding table [vocab, hidden] read as the head), one Gemm with ``transB``; ``columns``: only
    the output columns [start, stop) of W (an initializer of their own)."""
    if transposed:
        return g.op("Gemm", x, g.weight(weight), transB=1, name=name)
    if columns is not None:
        start, stop = columns
        return g.op("MatMul", x, g.const(f"{weight}[{start}:{stop}]", f32(g.weights[weight][:, start:stop])), name=name)
    return g.op("MatMul", x, g.weight(weight), name=name)


MatMul = Callable[..., str]  # (g, x, weight name, transposed=False, name=None, columns=None) -> output name


def float_gather(g: GraphBuilder, ids: str, table: str) -> str:
    """Rows of a float embedding table [vocab, hidden]: ids [b, s] int64 -> [b, s, hidden]."""
    return g.op("Gather", g.weight(table), ids, axis=0)


Gather = Callable[..., str]  # (g, ids, table name) -> output name


@dataclass
class GraphBuilder:
    """Nodes and initializers with generated names, over a checkpoint's weights (by parameter name)."""

    weights: Mapping[str, np.ndarray]
    matmul: MatMul = float_matmul
    gather: Gather = float_gather  # how an embedding table's rows are read (the export: quantized rows)
    # what the export decided, for blocks that apply more than one weight at a time (a mixture of
    # experts' fused kernel): integer codes/scales by weight name (``export/decoder_onnx.WeightOnlyLinear``),
    # the integer kernels' accuracy_level, and how experts run ("auto", "fused" or "dispatch")
    integer: Mapping[str, Any] = field(default_factory=dict)
    accuracy_level: int = 0
    experts: str = "auto"
    # a fused projection's parts (q/k/v, gate/up) as one MatMul each over its columns rather than the
    # fused MatMul and a Split (``linear_parts``): off, as measured (``benchmarks/fused_decoder_ops.py``)
    separate_projections: bool = False
    nodes: list = field(default_factory=list)
    initializers: list = field(default_factory=list)
    names: set = field(default_factory=set)
    count: int = 0

    def const(self, name: str, array: np.ndarray) -> str:
        """An initializer (one per name: the shape constants every layer shares are written once)."""
        from onnx import numpy_helper

        if name not in self.names:
            self.names.add(name)
            self.initializers.append(numpy_helper.from_array(np.asarray(array), name))
        return name

    def weight(self, name: str) -> str:
        """The checkpoint's parameter ``name`` as a float32 initializer of the same name."""
        return self.const(name, f32(self.weights[name]))

    def op(self, op_type: str, *inputs: str, outputs: int = 1, name: str | None = None, domain: str | None = None,
           output_names: Sequence[str] | None = None, **attrs) -> Any:
        """Append one node; returns its output name (a list of them for ``outputs`` > 1). ``name``
        names the output (a graph output, a cache tensor), ``output_names`` each of several; otherwise
        they are generated. An empty input name skips an optional input."""
        from onnx import helper

        self.count += 1
        base = name or f"{op_type.lower()}_{self.count}"
        outs = [base] if outputs == 1 else [f"{base}:{i}" for i in range(outputs)]
        outs = list(output_names) if output_names is not None else outs
        outputs = len(outs)
        self.nodes.append(helper.make_node(op_type, list(inputs), outs, name=f"n{self.count}_{op_type}",
                                           domain=domain, **attrs))
        return outs[0] if outputs == 1 else outs

    def fresh(self, stem: str) -> str:
        """A tensor name no other node has."""
        self.count += 1
        return f"{stem}_{self.count}"

    def linear(self, x: str, prefix: str, name: str | None = None) -> str:
        """A Paddle ``nn.Linear`` named ``prefix``: ``x @ {prefix}.weight (+ {prefix}.bias where the
        checkpoint has one)``; ``name`` names the last node's output."""
        bias = f"{prefix}.bias"
        if bias not in self.weights:
            return self.matmul(self, x, f"{prefix}.weight", name=name)
        return self.op("Add", self.matmul(self, x, f"{prefix}.weight"), self.weight(bias), name=name)

    def linear_parts(self, x: str, prefix: str, sizes: Sequence[int]) -> list[str]:
        """A Linear whose output columns are several tensors (a fused q/k/v or gate/up projection):
        x [..., in] -> [..., size] for each of ``sizes``. The fused Linear and a Split of its output;
        with ``separate_projections``, one MatMul per part over its columns of the weight instead (no
        Split copies the output, but the narrower integer GEMMs cost as much: no faster at ERNIE-4.5-0.3B
        W4's shape, ``benchmarks/fused_decoder_ops.py``), except where the kernel quantizes its input
        (W8A8, static INT8): that input is quantized once."""
        weight, bias = f"{prefix}.weight", f"{prefix}.bias"
        q = self.integer.get(weight)
        if not self.separate_projections or (q is not None and getattr(q, "activations", "float") != "float"):
            return self.op("Split", self.linear(x, prefix), self.const(f"split.{'.'.join(map(str, sizes))}", i64(sizes)),
                           outputs=len(sizes), axis=-1)
        parts, start = [], 0
        for size in sizes:
            part = self.matmul(self, x, weight, columns=(start, start + size))
            if bias in self.weights:
                part = self.op("Add", part, self.const(f"{bias}[{start}:{start + size}]",
                                                        f32(self.weights[bias][start:start + size])))
            parts.append(part)
            start += size
        return parts

    def model(self, graph_name: str, inputs: Sequence, outputs: Sequence) -> Any:
        """The ONNX model of the nodes so far; ``inputs``/``outputs`` are ``make_tensor_value_info``s.
        Its IR version is opset 17's (ONNX 1.12), not the installed onnx package's newest: runtimes
        refuse a model whose IR version is newer than theirs (ONNX Runtime 1.31 stops at IR 13)."""
        from onnx import helper

        graph = helper.make_graph(self.nodes, graph_name, list(inputs), list(outputs), self.initializers)
        opsets = [helper.make_opsetid("", OPSET), helper.make_opsetid("com.microsoft", 1)]
        return helper.make_model(graph, opset_imports=opsets, producer_name="ernie-compress", ir_version=IR_VERSION)


def pack_codes(codes: np.ndarray, bits: int) -> np.ndarray:
    """Signed integer codes [..., K] -> ONNX Runtime's packed uint8 [..., K * bits / 8], as MatMulNBits
    and QMoE read them: zero point 2^(bits-1), and for int4 two codes a byte, the even one in the low
    nibble."""
    unsigned = (codes.astype(np.int16) + 2 ** (bits - 1)).astype(np.uint8)
    if bits == 4:
        unsigned = unsigned[..., 0::2] | (unsigned[..., 1::2] << 4)
    return np.ascontiguousarray(unsigned)
