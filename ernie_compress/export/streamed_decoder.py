"""``export --stream``: a weight-only decoder's ``onnx/decoder.onnx`` written one checkpoint group at
a time, and verified without building the model.

**Writing.** :func:`~.decoder_onnx.build_decoder` composes the graph block by block and calls back
before each group's nodes ("rest" for the embedding, each ``layers.{i}``, "rest" again for the final
norm and head). At each call the previous group's initializers are appended to the external-data
file (ONNX external data, https://onnx.ai/onnx/repo-docs/ExternalData.html: each tensor's
``external_data`` names the file, the byte offset and length; ``data_location`` EXTERNAL) and their
bytes dropped from the ModelProto; then the next group is read from the lazy checkpoint and its
quantized Linears' codes and scales recovered (:func:`~.decoder_onnx.recover_codes`, only when the
graph asks for them). The nodes and initializers are the in-memory export's, in the same order, so
the tensors written are the same; the ModelProto saved at the end holds only the graph. Tensors of
1 MiB or more start at a 4 KiB boundary so that runtimes can memory-map them.

**Verification.** The export generates greedily from held-out prompts in ONNX Runtime; then one
streamed NumPy forward (``numpy_reference.py``) over each prompt followed by the export's tokens gives
the reference's next-token logits at the same positions, teacher-forced with the export's tokens.
Where every pick agrees, the reference's own greedy text is the export's (by induction over the
steps), so this checks what the in-memory export checks against dygraph with one pass over the
weights instead of one per generated token.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import UserError
from ..lazy_checkpoint import LazyCheckpoint
from ..models.families import family_of
from . import decoder_onnx, logit_scale
from .numpy_reference import reference_logits

SPILL_BYTES = 1024  # initializers of at least this many bytes go to the external-data file (save_model's threshold)
ALIGN_BYTES, ALIGN_FROM = 4096, 1 << 20  # tensors of ALIGN_FROM bytes or more start at an ALIGN_BYTES boundary


class RecoveredCodes(Mapping):
    """Codes and scales of the current group's quantized weights, recovered when the graph first asks
    (``quant['weights']`` names them; a tied head is recovered from the table transposed)."""

    def __init__(self, state: dict[str, np.ndarray], specs: dict[str, dict]):
        self.state, self.specs, self.cache = state, specs, {}

    def __getitem__(self, name: str) -> decoder_onnx.WeightOnlyLinear:
        if name not in self.cache:
            if name not in self.specs or name not in self.state:
                raise KeyError(name)
            spec, weight = self.specs[name], self.state[name]
            self.cache[name] = decoder_onnx.recover_codes(weight.T if spec.get("transposed") else weight,
                                                          spec["bits"], spec["group_size"])
        return self.cache[name]

    def __iter__(self) -> Iterator[str]:
        return (name for name in self.specs if name in self.state)

    def __len__(self) -> int:
        return sum(1 for _ in self)


class ExternalData:
    """One external-data file that initializers are appended to, tensor by tensor."""

    def __init__(self, path: Path):
        self.path, self.location = path, path.name
        self.file = open(path, "wb")
        self.written = 0  # initializers of the graph already handled

    def spill(self, initializers: list) -> None:
        """Append the bytes of the initializers added since the last call and leave references."""
        from onnx import external_data_helper

        for tensor in initializers[self.written:]:
            if len(tensor.raw_data) < SPILL_BYTES:
                continue
            if len(tensor.raw_data) >= ALIGN_FROM:
                self.file.write(b"\0" * (-self.file.tell() % ALIGN_BYTES))
            offset = self.file.tell()
            self.file.write(tensor.raw_data)
            external_data_helper.set_external_data(tensor, self.location, offset, len(tensor.raw_data))
            tensor.ClearField("raw_data")
        self.written = len(initializers)

    def close(self) -> None:
        self.file.close()


def write_decoder(lazy: LazyCheckpoint, path: Path, quant: dict, accuracy_level: int,
                  experts: str = "auto", fused_attention: bool = False) -> tuple[list[str], Any]:
    """``path`` (graph) and ``path.data`` (weights) built group by group from ``lazy`` (``experts``: how
    MoE layers run, as ``--moe-experts``; ``fused_attention``: GroupQueryAttention); returns the files
    written (relative to ``path``'s folder) and the model (graph only, for its kernel counts)."""
    import onnx

    path.parent.mkdir(parents=True, exist_ok=True)
    state: dict[str, np.ndarray] = {}
    codes = RecoveredCodes(state, quant.get("weights", {}))
    weights = decoder_onnx.DecoderWeights(state, codes, accuracy_level, experts)
    data = ExternalData(path.with_name(path.name + ".data"))

    def enter(g, group: str | None) -> None:
        data.spill(g.initializers)  # the previous group's tensors, out of memory
        state.clear()
        codes.cache.clear()
        if group is not None:
            state.update(lazy.load_group(group))

    try:
        model = decoder_onnx.build_decoder(lazy.config, weights, enter=enter, fused_attention=fused_attention)
    finally:
        data.close()
    onnx.save(model, str(path))
    return [path.name, data.path.name], model


def check_streamable(lazy: LazyCheckpoint, weight_only: bool, fmt: str, layout: str | None) -> None:
    """Refuse, before any weight is read, what a streamed export cannot write (one line each)."""
    if fmt not in ("onnx", "decoder"):
        raise UserError(f"--stream writes the decoder (onnx/decoder.onnx) only: use --format onnx, not {fmt} "
                        f"(nothing was written)")
    if layout is not None:
        raise UserError("--stream writes the decoder only: export --layout without --stream (nothing was written)")
    family = family_of(lazy.config)
    if not family.serves(lazy.config, "causal_lm") or family.output_head(lazy.config) is None:
        raise UserError(f"{lazy.path}: --stream exports decoders (causal LMs); this is a {lazy.config.architecture}: "
                        f"export it without --stream")
    if not weight_only:
        raise UserError(f"{lazy.path}: --stream exports weight-only checkpoints (integer kernels); quantize it with "
                        f"--weight-only first, or export it without --stream")


def compare_with_reference(lazy: LazyCheckpoint, prompts: list[list[int]], runs: list[dict[str, Any]],
                           new_tokens: int) -> dict[str, Any]:
    """The reference's logits at the export's generated positions (teacher-forced with its tokens)
    against the export's: the same measures as the in-memory export's check against dygraph."""
    sequences = [ids + run["tokens"] for ids, run in zip(prompts, runs)]
    expected = reference_logits(lazy, sequences, [len(ids) for ids in prompts])  # [steps, vocab] each
    largest = relative = 0.0
    agree: list[bool] = []
    for run, reference in zip(runs, expected):
        diff = float(np.abs(run["logits"] - reference).max())
        largest, relative = max(largest, diff), max(relative, diff / logit_scale(reference))
        agree += list(run["logits"].argmax(axis=1) == reference.argmax(axis=1))
    return {"prompts": len(prompts), "new_tokens": new_tokens, "greedy_tokens_equal": bool(all(agree)),
            "teacher_forced_agreement": float(np.mean(agree)), "max_abs_diff": largest,
            "max_relative_diff": relative, "teacher_forced_with": "the export's greedy tokens"}
