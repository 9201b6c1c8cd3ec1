"""What every runtime session is, for encoders and decoders alike.

Two kinds of model come out of ``export``:

- ``encoder``: a full-sequence graph (``onnx/model.onnx``, the Paddle static graph): logits for a
  padded batch of rows in one call: a sequence or token head, or a causal LM scored as a whole
  (perplexity).
- ``decoder``: a KV-cache decoder (``onnx/decoder.onnx``): a prompt is prefilled once, then one
  token per step runs against the cache (generation).

Both open through :func:`ernie_compress.runtime.registry.open_session` and satisfy :class:`Session`
(``run`` on token rows, ``input_names``, where it runs); a decoder session adds cached generation
(:class:`DecoderSession`: ``prefill``/``step``, the shape Optimum's merged decoder and
onnxruntime-genai's generator loop have).
"""

from __future__ import annotations

from typing import Any, Protocol, runtime_checkable

import numpy as np

ENCODER = "encoder"
DECODER = "decoder"
KINDS = (ENCODER, DECODER)


@runtime_checkable
class Session(Protocol):
    """A loaded model on one device, through one registered runtime."""

    backend: str  # the registered runtime's name
    device: str  # cpu, gpu or npu
    kind: str  # ENCODER or DECODER
    input_names: list[str]  # the graph's inputs

    def run(self, input_ids: np.ndarray, token_type_ids: np.ndarray) -> np.ndarray:
        """Logits for int64 [batch, seq] rows: an encoder's per sequence or per position; a decoder's
        [batch, vocab] at each row's last position (rows of equal length, no cache kept)."""


@runtime_checkable
class DecoderSession(Session, Protocol):
    """A session with cached generation: the cache lives inside, one sequence state per session."""

    def prefill(self, rows: list[list[int]]) -> np.ndarray:
        """Logits [batch, vocab] of each row's last token; the rows' cache replaces the old one."""

    def step(self, tokens: np.ndarray) -> np.ndarray:
        """Logits [batch, vocab] after one more token per row [batch]."""

    def cache_bytes(self) -> int:
        """Bytes the current KV cache holds."""

    def fork(self) -> Any:
        """A session over the same loaded model with its own (empty) cache state."""


class OperatorProfiler(Protocol):
    """A session that can say where its time went (``evaluate --profile``)."""

    def op_profile(self, input_ids: np.ndarray, token_type_ids: np.ndarray, top_n: int) -> list[dict[str, Any]]:
        """Operators by total time, largest first (runs on the given batch where the runtime needs it)."""
