"""``export --layout gguf``: a weight-only quantized ERNIE 4.5 (dense or MoE) as one GGUF file for llama.cpp.

Tensor names, layouts and metadata keys are those llama.cpp's ``convert_hf_to_gguf.py`` writes for
ERNIE 4.5 (``models/ernie4_5_gguf.py`` maps the names). Types: every quantized Linear as Q4_0 (int4)
or Q8_0 (int8), the int8 output head (the tied embedding, or an untied ``output.weight``) as Q8_0;
norms, the router and its correction bias (and an embedding our scheme left float) as F32. The
quantized weights' codes are recovered from the checkpoint's dequantized weights
(``decoder_onnx.recover_codes``) and written as blocks with their own scales (``gguf_blocks.py``):
the file holds our grid, not a requantization. Tensors are planned first (name, shape, type, bytes),
then made and written one at a time (one layer's experts at a time).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import UserError
from ..models import ernie4_5_gguf as names
from ..quantize.registry import scheme_of
from ..quantize.scheme import quantization_info
from .decoder_onnx import recover_codes
from .prequantized import PrequantizedLayout
from .gguf_blocks import BLOCK, BLOCK_BYTES, FP16_MAX, block_scales, pack_blocks, scale_rounding
from .gguf_vocab import tokenizer_metadata

FILE_TYPES = {"Q8_0": 7, "Q4_0": 2}  # general.file_type: LlamaFileType.MOSTLY_Q8_0 / MOSTLY_Q4_0
GGML_TYPES = {"F32": 0, "Q4_0": 2, "Q8_0": 8}  # GGMLQuantizationType
QUANT_VERSION = 2  # general.quantization_version (GGML_QNT_VERSION)
INSTALL = "pip install 'ernie-compress[gguf]'"


def file_name(block: str) -> str:
    return f"model-{block}.gguf"


def block_type(quant: dict[str, Any]) -> str:
    """The block type of the Linears' codes: Q4_0 for int4, Q8_0 for int8."""
    return "Q4_0" if quant["weight_bits"] == 4 else "Q8_0"


# -- refusals (before any weight is converted) ------------------------------------------------------

def check_gguf(config, quant: dict[str, Any] | None, weight_only: bool) -> None:
    """Refuse, with the quantize flags that fit, what GGUF's Q4_0/Q8_0 blocks cannot hold exactly."""
    if config.architecture not in names.GGUF_ARCHITECTURES:
        raise UserError(f"--layout gguf writes {', '.join(names.GGUF_ARCHITECTURES)} (llama.cpp's ernie4_5 and "
                        f"ernie4_5-moe); "
                        f"{config.architecture} is not one of them")
    if not weight_only:
        raise UserError("--layout gguf writes the codes of a weight-only quantized checkpoint as Q4_0/Q8_0 "
                        "blocks; quantize it first: ernie-compress quantize CHECKPOINT --weight-only int4 "
                        "--group-size 32 (or --weight-only int8) --out DIR")
    _check_uniform(config)
    for name, spec in quant["weights"].items():
        group = spec["group_size"]
        if group is not None and group % BLOCK:
            fit = "--group-size 32 (or 64, 128)" if spec["bits"] == 4 else "no --group-size (per channel) or 32"
            raise UserError(f"GGUF's Q{spec['bits']}_0 blocks hold one scale per {BLOCK} input rows; {name} has "
                            f"groups of {group}: quantize with --weight-only int{spec['bits']} {fit}")
    widths = {config.hidden_size, config.num_attention_heads * config.head_dim, *config.ffn_per_layer,
              getattr(config, "shared_expert_size", 0)}
    if any(w % BLOCK for w in widths):
        raise UserError(f"GGUF's blocks need input widths that are multiples of {BLOCK}; this model has "
                        f"{sorted(widths)}")


def _check_uniform(config) -> None:
    """llama.cpp reads one head count, one dense FFN width, one expert count and width for all layers,
    and makes every ``interleave_moe_layer_step``-th layer from ``leading_dense_block_count`` on an MoE
    layer, to the last: refuse a model pruned per layer or whose MoE layers end earlier."""
    moe = getattr(config, "moe_layers", [])
    dense_ffn = {f for i, f in enumerate(config.ffn_per_layer) if i not in moe}
    moe_ffn = {f for i, f in enumerate(config.ffn_per_layer) if i in moe}
    experts = {e for e in getattr(config, "experts_per_layer", []) if e}
    if len(set(config.heads_per_layer)) > 1 or len(dense_ffn) > 1 or len(moe_ffn) > 1 or len(experts) > 1:
        raise UserError("--layout gguf needs the same heads, FFN width and expert count in every layer (llama.cpp "
                        "reads one count for all layers); this model was pruned per layer")
    if moe and config.last_moe_layer != config.num_hidden_layers - 1:
        raise UserError(f"llama.cpp's ernie4_5-moe makes MoE layers up to the last one; this model's end at layer "
                        f"{config.last_moe_layer} (moe_layer_end_index) of {config.num_hidden_layers}")


def require_gguf():
    """The ``gguf`` package (llama.cpp's own writer), its INFO lines silenced (our stderr stays clean)."""
    try:
        import gguf
    except ImportError:
        raise UserError(f"--layout gguf needs the gguf package: {INSTALL}") from None
    logging.getLogger("gguf").setLevel(logging.WARNING)
    return gguf


# -- the tensors -----------------------------------------------------------------------------------

@dataclass(frozen=True)
class Planned:
    """One GGUF tensor: its name, numpy shape (reversed GGML ne), type, and how to make its data."""

    name: str
    shape: tuple[int, ...]
    kind: str  # F32, Q4_0, Q8_0
    make: Callable[[], np.ndarray]

    @property
    def nbytes(self) -> int:
        return int(np.prod(self.stored_shape)) * (4 if self.kind == "F32" else 1)

    @property
    def stored_shape(self) -> tuple[int, ...]:
        """The shape of the data written: a quantized [..., out, in] is [..., out, in / 32 * block bytes] bytes."""
        if self.kind == "F32":
            return tuple(self.shape)
        return (*self.shape[:-1], self.shape[-1] // BLOCK * BLOCK_BYTES[self.kind])


def _quantized_parts(weight: np.ndarray, spec: dict[str, Any], kind: str, splits: list[tuple[int, int]],
                     stats: dict[str, float]) -> Iterator[np.ndarray]:
    """The blocks of each output-column part of a quantized weight [in, out] (transposed spec: the
    tied table [vocab, in]); ``stats`` keeps the largest relative fp16 rounding of a scale."""
    matrix = weight.T if spec.get("transposed") else weight  # [in, out]
    linear = recover_codes(matrix, spec["bits"], spec["group_size"])
    if float(np.abs(linear.scales).max(initial=0.0)) > FP16_MAX:
        raise UserError(f"a scale above fp16's range ({FP16_MAX:g}) cannot be written in GGUF blocks")
    stats["max_scale_rounding"] = max(stats.get("max_scale_rounding", 0.0), scale_rounding(linear.scales))
    scales = block_scales(linear.scales, matrix.shape[0], spec["group_size"])  # [in / 32, out]
    for start, stop in splits:
        yield pack_blocks(linear.codes[:, start:stop].T, scales[:, start:stop].T, kind)  # [part, bytes]


def plan_tensors(config, state: dict[str, np.ndarray], quant: dict[str, Any],
                 stats: dict[str, float]) -> list[Planned]:
    """Every GGUF tensor of the checkpoint (embedding, layers, output; a layer's routed experts
    stacked); making the quantized ones records their scales' fp16 rounding in ``stats``."""
    planned: list[Planned] = []
    experts: dict[int, list[int]] = {}
    for name in sorted(state, key=names.order):
        if (expert := names.expert_of(name)) is not None:
            experts.setdefault(expert[0], []).append(expert[1])
            continue
        targets = names.gguf_names(name)
        if targets is None:
            raise UserError(f"--layout gguf has no llama.cpp tensor for {name}")
        spec, value = quant["weights"].get(name), state[name]
        if spec is None:  # float: norms, the router and its correction bias, an untied embedding
            value = names.float_value(name, value)
            planned.append(Planned(targets[0], value.shape, "F32", lambda v=value: np.ascontiguousarray(v, np.float32)))
            continue
        kind = _kind(spec)
        rows, columns = value.T.shape if spec.get("transposed") else value.shape  # [in, out]
        splits = names.column_splits(config, name, columns)
        parts = _lazy_parts(value, spec, kind, splits, stats)
        planned += [Planned(target, (stop - start, rows), kind, lambda i=i, parts=parts: parts(i))
                    for i, (target, (start, stop)) in enumerate(zip(targets, splits))]
    for layer, ids in experts.items():
        planned += _expert_tensors(config, state, quant, layer, sorted(set(ids)), stats)
    return planned


def _kind(spec: dict[str, Any]) -> str:
    return "Q8_0" if spec["bits"] == 8 else "Q4_0"


def _expert_tensors(config, state: dict[str, np.ndarray], quant: dict[str, Any], layer: int, experts: list[int],
                    stats: dict[str, float]) -> list[Planned]:
    """``ffn_gate_exps`` / ``ffn_up_exps`` [E, f, h] and ``ffn_down_exps`` [E, h, f] of one MoE layer:
    each expert's blocks stacked (convert_hf_to_gguf stacks the experts the same way)."""
    h, f = config.hidden_size, config.moe_intermediate_size
    kind = _kind(quant["weights"][names.expert_weights(layer, experts[0])[0]])
    cache: dict[str, np.ndarray] = {}

    def stacked(which: str) -> np.ndarray:
        if not cache:  # one layer's experts at a time
            gates, ups, downs = [], [], []
            for e in experts:
                up_gate, down = names.expert_weights(layer, e)
                halves = [(0, f), (f, 2 * f)]
                gate, up = _quantized_parts(state[up_gate], quant["weights"][up_gate], kind, halves, stats)
                downs += _quantized_parts(state[down], quant["weights"][down], kind, [(0, h)], stats)
                gates.append(gate), ups.append(up)
            cache.update(gate=np.stack(gates), up=np.stack(ups), down=np.stack(downs))  # [E, out, bytes]
        return cache.pop(which)

    shapes = {"gate": (len(experts), f, h), "up": (len(experts), f, h), "down": (len(experts), h, f)}
    return [Planned(names.expert_tensor(layer, which), shapes[which], kind, lambda w=which: stacked(w))
            for which in names.EXPERT_TENSORS]


def _lazy_parts(value: np.ndarray, spec: dict[str, Any], kind: str, splits,
                stats: dict[str, float]) -> Callable[[int], np.ndarray]:
    """Part ``i`` of a split weight's blocks; the codes are recovered once, when the first part is asked for."""
    cache: dict[int, np.ndarray] = {}

    def part(i: int) -> np.ndarray:
        if not cache:
            cache.update(enumerate(_quantized_parts(value, spec, kind, splits, stats)))
        return cache.pop(i)

    return part


# -- the file ----------------------------------------------------------------------------------------

def model_metadata(config, quant: dict[str, Any]) -> dict[str, Any]:
    """The ``general.*`` and architecture keys (gguf writer method name -> value) as the converter
    writes them from an ERNIE 4.5 config.json (``Ernie4_5Model`` / ``Ernie4_5MoeModel``)."""
    keys = {"add_type": "model", "add_name": "ERNIE 4.5 (ernie-compress)", "add_quantized_by": "ernie-compress",
            "add_block_count": config.num_hidden_layers, "add_context_length": config.max_position_embeddings,
            "add_embedding_length": config.hidden_size, "add_feed_forward_length": config.intermediate_size,
            "add_head_count": config.num_attention_heads, "add_head_count_kv": config.num_key_value_heads,
            "add_rope_freq_base": float(config.rope_theta), "add_layer_norm_rms_eps": float(config.rms_norm_eps),
            "add_key_length": config.head_dim, "add_value_length": config.head_dim,
            "add_file_type": FILE_TYPES[block_type(quant)], "add_quantization_version": QUANT_VERSION}
    if getattr(config, "moe_layers", None):
        keys.update(add_expert_count=config.moe_num_experts, add_expert_used_count=config.moe_k,
                    add_interleave_moe_layer_step=config.moe_layer_interval,
                    add_leading_dense_block_count=config.moe_layer_start_index,
                    add_expert_feed_forward_length=config.moe_intermediate_size,
                    add_expert_shared_count=config.moe_num_shared_experts)
        if config.moe_num_shared_experts:  # the shared experts' one MLP (the converter: intermediate_size / kv heads,
            keys["add_expert_shared_feed_forward_length"] = config.shared_expert_size  # the same for the releases)
    return keys


def write_gguf(path: Path, config, state: dict[str, np.ndarray], tokenizer, quant: dict[str, Any]) -> dict[str, Any]:
    """Write the GGUF file; what the manifest records about it."""
    gguf = require_gguf()
    if tokenizer.vocab_size > config.vocab_size:
        raise UserError(f"the tokenizer has {tokenizer.vocab_size} tokens, more than the embedding's "
                        f"{config.vocab_size} rows: llama.cpp's vocabulary must match the embedding")
    stats: dict[str, float] = {}
    planned = plan_tensors(config, state, quant, stats)
    writer = gguf.GGUFWriter(path, names.GGUF_ARCHITECTURES[config.architecture])
    for method, value in {**model_metadata(config, quant), **tokenizer_metadata(tokenizer, config.vocab_size)}.items():
        if "." in method:  # a key the writer has no method for (gguf_vocab.LOWERCASE_KEY)
            writer.add_bool(method, value)
        else:
            getattr(writer, method)(value)
    for t in planned:
        writer.add_tensor_info(t.name, t.stored_shape, np.dtype(np.float32 if t.kind == "F32" else np.uint8), t.nbytes,
                               raw_dtype=gguf.GGMLQuantizationType(GGML_TYPES[t.kind]))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_ti_data_to_file()
    for t in planned:
        writer.write_tensor_data(t.make())  # one tensor in memory at a time
    writer.close()
    return {"file": path.name, "architecture": names.GGUF_ARCHITECTURES[config.architecture],
            "blocks": block_type(quant),
            "tensors": {kind: sum(t.kind == kind for t in planned) for kind in GGML_TYPES},
            "max_scale_rounding": stats.get("max_scale_rounding", 0.0), "bytes": path.stat().st_size}



# -- export --layout gguf --------------------------------------------------------------------------

def _check_layout(config) -> None:
    quant = quantization_info(config)
    check_gguf(config, quant, scheme_of(quant).export == "weight_only")
    require_gguf()


def _write_layout(directory: Path, config, state: dict[str, np.ndarray], tokenizer) -> dict[str, Any]:
    quant = quantization_info(config)
    return write_gguf(directory / file_name(block_type(quant)), config, state, tokenizer, quant)


GGUF = PrequantizedLayout(_check_layout, _write_layout, "llama.cpp (and the engines built on it: llama-cpp-python, "
                                                         "Ollama)")
