"""Post-training calibration: run training examples through the FP32 model, record what each
quantized Linear receives, and set the fake-quant model's activation thresholds from it.

Weights need no calibration: their per-channel abs-max is read from the weights themselves.
"""

from __future__ import annotations

import numpy as np

from ..data.batching import EncodedSplit
from ..paddle_env import import_paddle
from ..progress import progress_bar
from .fake_quant import quanted_layers, set_activation_scales_
from .observers import OBSERVERS

MAX_SAMPLES_PER_LAYER = 400_000  # values kept per layer for the percentile/mse/kl observers


def calibrate_(qmodel, split: EncodedSplit, samples: int, observer: str, percentile: float,
               seed: int = 0, batch_size: int = 32) -> dict[str, float]:
    """Set the activation thresholds of ``qmodel`` in place; returns them by layer name."""
    paddle = import_paddle()
    layers = quanted_layers(qmodel)
    seen: dict[str, list[np.ndarray]] = {name: [] for name in layers}
    maxima: dict[str, float] = {name: 0.0 for name in layers}
    rng = np.random.default_rng(seed)

    def make_hook(name):
        def hook(layer, inputs):
            x = inputs[0].numpy().ravel()
            maxima[name] = max(maxima[name], float(np.abs(x).max()))
            keep = min(x.size, MAX_SAMPLES_PER_LAYER // 8)
            seen[name].append(rng.choice(x, keep, replace=False) if keep < x.size else x)
        return hook

    # observe the FP32 inputs: bypass the fake quanters while calibrating
    handles = []
    for name, layer in layers.items():
        handles.append(layer.register_forward_pre_hook(make_hook(name)))
    bypass = [(layer, layer.activation_quanter, layer.weight_quanter) for layer in layers.values()]
    for layer, _, _ in bypass:
        layer.activation_quanter = None
        layer.weight_quanter = None
    qmodel.eval()
    order = rng.permutation(len(split))[:samples]
    try:
        with paddle.no_grad(), progress_bar(-(-len(order) // batch_size), "calibrate") as bar:
            for start in range(0, len(order), batch_size):
                idx = np.sort(order[start:start + batch_size])
                seq = int(split.lengths[idx].max())
                qmodel(paddle.to_tensor(split.input_ids[idx, :seq]),
                       paddle.to_tensor(split.token_type_ids[idx, :seq]))
                bar.advance()
    finally:
        for h in handles:
            h.remove()
        for layer, act, weight in bypass:
            layer.activation_quanter, layer.weight_quanter = act, weight
    thresholds = {}
    for name in layers:
        values = np.concatenate(seen[name])
        if len(values) > MAX_SAMPLES_PER_LAYER:
            values = rng.choice(values, MAX_SAMPLES_PER_LAYER, replace=False)
        values = np.append(values, maxima[name])  # the sample must keep the true extreme
        thresholds[name] = OBSERVERS[observer](values, percentile)
    set_activation_scales_(qmodel, {n: {"input_absmax": t} for n, t in thresholds.items()})
    return thresholds
