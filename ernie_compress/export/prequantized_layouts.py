"""The pre-quantized checkpoint layouts ``export --layout`` writes besides the float ones of
``models/layouts.py``: each a weight-only checkpoint's integer codes in a serving engine's format
(gguf: one file for llama.cpp, ``gguf.py``)."""

from __future__ import annotations

from .gguf import GGUF
from .prequantized import PrequantizedLayout
from .prequantized_compressed_tensors import COMPRESSED_TENSORS
from .prequantized_gptq import GPTQ

PREQUANTIZED_LAYOUTS: dict[str, PrequantizedLayout] = {"compressed-tensors": COMPRESSED_TENSORS, "gptq": GPTQ, "gguf": GGUF}
