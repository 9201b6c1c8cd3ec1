"""Lookups over an ONNX graph that the graph rewrites share: who produces a tensor, who reads it,
which tensors are constants (initializers or ``Constant`` nodes)."""

from __future__ import annotations

import numpy as np


class GraphIndex:
    """Producer/reader lookups over an ``onnx.GraphProto``'s nodes and its constant initializers."""

    def __init__(self, graph):
        from onnx import numpy_helper

        self.graph = graph
        self.nodes = list(graph.node)
        self.producer = {out: node for node in self.nodes for out in node.output}
        self.readers: dict[str, list] = {}
        for node in self.nodes:
            for name in node.input:
                self.readers.setdefault(name, []).append(node)
        self.outputs = {o.name for o in graph.output}
        self._init = {init.name: init for init in graph.initializer}
        self._to_array = numpy_helper.to_array

    def is_initializer(self, name: str) -> bool:
        return name in self._init

    def is_constant(self, name: str) -> bool:
        node = self.producer.get(name)
        return name in self._init or (node is not None and node.op_type == "Constant")

    def const(self, name: str) -> np.ndarray | None:
        init = self._init.get(name)
        if init is not None:
            return self._to_array(init)
        node = self.producer.get(name)
        if node is not None and node.op_type == "Constant":
            return self._to_array(node.attribute[0].t)
        return None

    def parent(self, name: str, op_type: str):
        """The node of type ``op_type`` that produces ``name``, or None."""
        node = self.producer.get(name)
        return node if node is not None and node.op_type == op_type else None

    def only_reader(self, name: str, op_type: str):
        """The single node reading ``name`` when it is of ``op_type`` (and ``name`` is no graph output)."""
        readers = self.readers.get(name, [])
        if len(readers) != 1 or name in self.outputs or readers[0].op_type != op_type:
            return None
        return readers[0]
