"""The toy family's ONNX graph blocks: ERNIE 4.5's blocks read through the toy's own name table
(its MLP's math is ERNIE 4.5's SwiGLU under other names, so no block builder is new)."""

from __future__ import annotations

from ernie_compress.models.ernie4_5_onnx import (  # noqa: F401 - the blocks the export composes
    GRAPH_NAME, AttentionIO, DecoderNames, decoder_layer, embedding, head, rms_norm, rope_tables)

from .toy_family import NAMES as TOY_NAMES

NAMES = DecoderNames(TOY_NAMES)
