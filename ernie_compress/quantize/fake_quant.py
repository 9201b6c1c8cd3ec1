"""Fake-quantized (quantize-dequantize) Paddle models for QAT, PTQ and verification.

Quantization-aware training (Jacob et al. 2018, "Quantization and Training of Neural Networks for
Efficient Integer-Arithmetic-Only Inference"): each quantized Linear rounds its weight and its
input to the int grid in the forward pass and passes gradients straight through (the
straight-through estimator, Bengio et al. 2013). Built from ``paddle.quantization.QAT`` with:

- activations: Paddle's ``FakeQuanterWithAbsMaxObserver`` — moving-average abs-max scale,
  symmetric, per tensor (observing the whole global batch under data parallelism);
- weights: paddleslim's ``FakeQuanterChannelWiseAbsMaxObserver`` — abs-max per output channel
  (Paddle Linear weights are [in, out]: axis 1), symmetric.

Only these two pieces are used: Paddle 3.3.1's ``QAT.convert`` / ``jit.save`` of quantized models
and paddleslim's ``save_quantized_model`` give wrong outputs on CPU (DESIGN.md), so the learned
scales are read from the quanters and carried to ONNX Runtime instead.
"""

from __future__ import annotations

import numpy as np

from ..errors import UserError
from ..paddle_env import import_paddle
from .scheme import Int8Scheme, quantized_linear_names


def _require_paddleslim():
    """paddleslim's observer class. paddleslim logs to stderr while it is imported (a missing
    scipy, "please use Paddle >= 2.3.0" on 3.3.1): its loggers are created then, bound to the
    stream they see, so importing it with stderr captured keeps that noise out of our output."""
    import contextlib
    import io

    try:
        with contextlib.redirect_stderr(io.StringIO()), contextlib.redirect_stdout(io.StringIO()):
            from paddleslim.quant.quanters import FakeQuanterChannelWiseAbsMaxObserver
    except ImportError as exc:
        raise UserError(f"INT8 quantization needs paddleslim ({exc}); install it with: "
                        f"pip install --no-deps paddleslim==2.6.0") from None
    return FakeQuanterChannelWiseAbsMaxObserver


def _synced_activation_quanter(moving_rate: float, bit_length: int):
    """Paddle's moving-average abs-max activation quanter, which under data parallelism observes
    the abs-max of the whole global batch (the max over the ranks) instead of this rank's rows, so
    that N ranks learn the scales one process learns. Paddle's own kernel does the work: it is fed
    this rank's activations plus one extra element holding the global abs-max (gradient-free),
    which is cut off again. In one process it is Paddle's quanter unchanged."""
    paddle = import_paddle()
    from paddle.quantization.quanters import FakeQuanterWithAbsMaxObserver
    from paddle.quantization.quanters.abs_max import FakeQuanterWithAbsMaxObserverLayer

    from ..distributed import world

    class SyncedLayer(FakeQuanterWithAbsMaxObserverLayer):
        def dynamic_forward(self, input):
            if not self.training or world().size == 1:
                return super().dynamic_forward(input)
            global_max = paddle.max(paddle.abs(input)).detach()
            paddle.distributed.all_reduce(global_max, op=paddle.distributed.ReduceOp.MAX)
            extended = paddle.concat([input.reshape([-1]), global_max.reshape([1]).astype(input.dtype)])
            return super().dynamic_forward(extended)[:-1].reshape(input.shape)

    class Synced(FakeQuanterWithAbsMaxObserver):
        def _get_class(self):
            return SyncedLayer

    return Synced(moving_rate=moving_rate, bit_length=bit_length)


def fake_quant_model(model, scheme: Int8Scheme, moving_rate: float = 0.9):
    """A copy of ``model`` whose encoder Linears fake-quantize weights and inputs."""
    paddle = import_paddle()
    from paddle.quantization import QAT, QuantConfig

    channel_wise = _require_paddleslim()
    names = set(quantized_linear_names(model))
    layers = [layer for name, layer in model.named_sublayers() if name in names]
    config = QuantConfig(activation=None, weight=None)
    config.add_layer_config(
        layers,
        activation=_synced_activation_quanter(moving_rate, scheme.activation_bits),
        weight=channel_wise(bit_length=scheme.weight_bits))
    model.train()  # QAT.quantize insists on a model in training mode
    quantized = QAT(config).quantize(model, inplace=False)
    quantized.config = model.config
    _ = paddle  # imported for its side effects (threads, MKL settings)
    return quantized


def quanted_layers(qmodel) -> dict[str, object]:
    """Name -> QuantedLinear sublayer."""
    return {name: layer for name, layer in qmodel.named_sublayers()
            if hasattr(layer, "activation_quanter") and hasattr(layer, "weight_quanter")}


def collect_scales(qmodel) -> dict[str, dict[str, list[float] | float]]:
    """The learned abs-max of each quantized Linear's input and weight channels."""
    scales = {}
    for name, layer in quanted_layers(qmodel).items():
        act = float(np.asarray(layer.activation_quanter.scales().numpy()).reshape(-1)[0])
        weight = np.abs(layer.weight.numpy()).max(axis=0)  # [out]: what the quanter observes
        if not (np.isfinite(act) and act > 0):
            raise UserError(f"{name}: the activation scale is {act}; calibrate on more data")
        scales[name] = {"input_absmax": act, "weight_absmax": weight.astype(float).tolist()}
    return scales


def set_activation_scales_(qmodel, scales: dict[str, dict]) -> None:
    """Load stored activation abs-max values into a fake-quant model (for verification)."""
    paddle = import_paddle()
    layers = quanted_layers(qmodel)
    missing = sorted(set(layers) - set(scales))
    if missing:
        raise UserError(f"the scales file lacks {len(missing)} quantized layer(s), e.g. {missing[0]}")
    for name, layer in layers.items():
        value = paddle.to_tensor([float(scales[name]["input_absmax"])], dtype="float32")
        layer.activation_quanter._scale.set_value(value)


def float_state(qmodel) -> dict[str, np.ndarray]:
    """The float weights of a fake-quant model under the plain model's parameter names."""
    return {k: v.numpy() for k, v in qmodel.state_dict().items()
            if "_quanter." not in k}
