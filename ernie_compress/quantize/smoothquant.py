"""SmoothQuant (Xiao et al. 2023, "SmoothQuant: Accurate and Efficient Post-Training Quantization for
Large Language Models") for W8A8 decoders: int8 weights per output channel and int8 activations,
quantized at run time per tensor as ONNX Runtime's ``DynamicQuantizeLinear`` does (asymmetric uint8:
scale = (max(x, 0) - min(x, 0)) / 255, zero point round(-min / scale)).

Per-tensor activation quantization loses the many small channels to the few large ones (outlier
channels, fixed across tokens). SmoothQuant moves that range into the weights: along each edge of the
family's smoothing map (a norm, or a fused Linear's part, feeding Linears), input channel j is
divided by

    s_j = max|X_j|^alpha / max|W_j|^(1 - alpha)

(folded into the norm's weight or the feeding columns) and the consumers' row j multiplied by it; the
float model computes the same function (``awq.fold_scales_``). alpha = 0 is no smoothing; the paper
uses 0.5 for most models, more for larger ones. Here alpha is searched on the task's dev split (the
quantized model, activation quantization simulated, scored at each alpha of :data:`ALPHAS`) unless given.
Channel maxima come from calibration texts of the training split, padding left out.

:func:`dynamic_int8_inputs` simulates the activation quantization in Paddle (a pre-hook per quantized
Linear), so the quantize stage reports what the exported ``DynamicQuantizeMatMul`` kernels compute.
"""

from __future__ import annotations

import numpy as np

from ..models.architecture import ScaleMapping
from .awq import fold_scales_

ALPHAS = (0.0, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8)  # searched (0: no smoothing, the plain W8A8 row)
SMALLEST = 1e-5  # a channel maximum below this is taken as this (a scale never 0 or infinite)


def collect_channel_absmax(model, names: list[str], batches, pad_id: int) -> dict[str, np.ndarray]:
    """Per Linear of ``names``: max |x| of each input channel [in] over the non-padding positions of
    ``batches`` (``Batch`` objects), from one pass through ``model``."""
    from ..paddle_env import import_paddle

    paddle = import_paddle()
    layers = dict(model.named_sublayers())
    peaks = {name: np.zeros(layers[name].weight.shape[0]) for name in names}
    real = {}

    def hook(name):
        def record(layer, inputs):
            x = inputs[0].numpy().reshape(-1, inputs[0].shape[-1])[real["rows"]]  # [tokens, in]
            if len(x):
                peaks[name] = np.maximum(peaks[name], np.abs(x).max(axis=0))
        return record

    handles = [layers[name].register_forward_pre_hook(hook(name)) for name in names]
    try:
        with paddle.no_grad():
            for batch in batches:
                real["rows"] = (batch.input_ids != pad_id).reshape(-1)
                model(paddle.to_tensor(batch.input_ids), paddle.to_tensor(batch.token_type_ids))
    finally:
        for handle in handles:
            handle.remove()
    return peaks


def smoothing_scales(activation_max: np.ndarray, weight_max: np.ndarray, alpha: float) -> np.ndarray:
    """s = max|X|^alpha / max|W|^(1 - alpha) per channel (the paper's equation 4)."""
    act, weight = np.maximum(activation_max, SMALLEST), np.maximum(weight_max, SMALLEST)
    return act ** alpha / weight ** (1 - alpha)


def smooth_(state: dict[str, np.ndarray], family, config, edges: list[ScaleMapping],
            activation_max: dict[str, np.ndarray], alpha: float) -> None:
    """Fold SmoothQuant's scales of every edge into ``state`` (in place; entries replaced, not written
    into). A part column's maxima are those of all the consumer rows that read it."""
    for edge in edges:
        weights = [state[f"{name}.weight"] for name in edge.layers]  # [in, out]
        columns, index = family.smoothing_columns(config, edge, weights[0].shape[0])
        parts = int(index.max()) + 1
        act = np.zeros(parts)
        np.maximum.at(act, index, np.max([activation_max[name] for name in edge.layers], axis=0))
        wmax = np.zeros(parts)
        np.maximum.at(wmax, index, np.max([np.abs(w).max(axis=1) for w in weights], axis=0))
        fold_scales_(state, edge, smoothing_scales(act, wmax, alpha), columns, index)


def dynamic_int8_inputs(model, names: list[str]) -> list:
    """Pre-hooks on the Linears ``names`` that replace each input by its per-tensor uint8 round trip
    (``DynamicQuantizeLinear`` then dequantized); returns the hook handles (``.remove()`` undoes them)."""
    from ..paddle_env import import_paddle

    paddle = import_paddle()
    layers = dict(model.named_sublayers())

    def quantized(layer, inputs):
        x = inputs[0]
        low, high = paddle.minimum(x.min(), paddle.zeros([])), paddle.maximum(x.max(), paddle.zeros([]))
        scale = paddle.maximum((high - low) / 255.0, paddle.full([], 1e-12))
        zero = paddle.clip(paddle.round(-low / scale), 0, 255)
        codes = paddle.clip(paddle.round(x / scale) + zero, 0, 255)
        return ((codes - zero) * scale, *inputs[1:])

    return [layers[name].register_forward_pre_hook(quantized) for name in names]
