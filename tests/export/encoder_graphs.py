"""Helpers of the encoder graph-rewrite tests: padded inputs, and an export's last hidden states."""

from __future__ import annotations

import numpy as np
import onnx

from tests.helpers import random_ids


def padded_inputs(batch: int = 6, seq: int = 24) -> dict[str, np.ndarray]:
    ids = random_ids(batch, seq, 60)
    for row in range(batch):  # rows of every length from 4 tokens up: padding decides the result
        ids[row, 4 + row * 4:] = 0
    return {"input_ids": ids, "token_type_ids": np.zeros_like(ids)}


def last_hidden(path_or_model, feeds) -> np.ndarray:
    """The encoder's last hidden states [batch, seq, hidden] (the output of its last LayerNorm: values
    of order one, where the tiny model's logits are a few hundredths)."""
    import onnxruntime as ort
    from onnx import TensorProto, helper

    model = onnx.load(str(path_or_model)) if not isinstance(path_or_model, onnx.ModelProto) else path_or_model
    hidden = [n.output[0] for n in model.graph.node if n.op_type == "LayerNormalization"][-1]
    model.graph.output.append(helper.make_tensor_value_info(hidden, TensorProto.FLOAT, None))
    options = ort.SessionOptions()
    options.log_severity_level = 3
    session = ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])
    return session.run([hidden], feeds)[0]
