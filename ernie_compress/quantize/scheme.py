"""What INT8 quantization covers, and how its scales are stored in a checkpoint.

Quantized: every Linear of the encoder (q/k/v/out projections and both FFN layers, the layers
that hold ~all of the encoder's multiply-adds). Weights are symmetric per output channel;
activations (each Linear's input) are symmetric per tensor. The pooler and classifier stay FP32
(two small matmuls on one position), as do the attention score/context matmuls, whose inputs are
both activations (QAT does not fake-quantize them either, so INT8 there would be untrained).

``reduce_range``: on x86 CPUs without VNNI, ONNX Runtime's u8 x s8 kernels accumulate pairs of
products in int16 (``vpmaddubsw``), which saturates with full-range int8 weights; 7-bit weights
avoid it. We then *train* with 7-bit weights too (QAT) so the deployed grid is the trained one.

Checkpoint: ``config.json["quantization"]`` describes the scheme; ``quantization_scales.json``
holds, per quantized Linear, the activation abs-max (``input_absmax``) and the per-channel weight
abs-max (``weight_absmax``) as learned in Paddle. The export uses exactly these numbers.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from ..errors import UserError
from ..models.families import family_of

SCALES_FILE = "quantization_scales.json"
QUANTIZED_ROLES = ("attention_in", "attention_out", "ffn_in", "ffn_out")


@dataclass(frozen=True)
class Int8Scheme:
    method: str  # "qat" or "ptq"
    weight_bits: int = 8  # 7 with reduce_range
    activation_bits: int = 8
    per_channel: bool = True
    reduce_range: bool = True
    activation_observer: str = "moving_average_abs_max"  # QAT; PTQ: abs_max|percentile|mse|kl
    dtype: str = "int8"

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "scales_file": SCALES_FILE}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "Int8Scheme":
        keys = {k: v for k, v in d.items() if k in cls.__dataclass_fields__}
        return cls(**keys)


def quantized_linear_names(model) -> list[str]:
    """Names of the Linear sublayers that INT8 covers (see the module docstring)."""
    family = family_of(model.config)
    return [name for name, _ in model.named_sublayers() if family.linear_role(name) in QUANTIZED_ROLES]


def quantization_info(config) -> dict[str, Any] | None:
    """The ``quantization`` entry of a checkpoint's config, if any."""
    return config.extra.get("quantization")


def read_scales(checkpoint_dir: Path) -> dict[str, dict[str, Any]]:
    path = Path(checkpoint_dir) / SCALES_FILE
    if not path.is_file():
        raise UserError(f"{checkpoint_dir}: an INT8 checkpoint needs {SCALES_FILE}")
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise UserError(f"{path}: invalid JSON ({exc.msg})") from None
