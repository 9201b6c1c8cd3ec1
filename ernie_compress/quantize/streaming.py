"""Weight-only round-to-nearest, streamed: one decoder layer in memory at a time.

RTN rounds every weight on its own (``weight_only.py``), so a decoder can be quantized group by
group from a lazy checkpoint (``lazy_checkpoint.py``): read one layer's tensors, round its Linears,
hand them to the writer (one shard each), drop them. The memory held is one layer's (or, for the
group outside the layers, the embedding and head's), whatever the model's depth, as in
llm-compressor's sequential pipeline and GPTQModel's layer-by-layer loop. The rounding functions are
the in-memory quantize's own (:func:`~.weight_only.round_linears_`, :func:`~.weight_only.round_head_`),
so the tensors written are byte-equal to it.

GPTQ needs each layer's calibration inputs, which come from running the layers before it: it is
streamed by ``sequential.py``, which reuses this module's checks and estimates.
"""

from __future__ import annotations

import math
import shutil
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..errors import UserError
from ..lazy_checkpoint import LazyCheckpoint
from ..models.families import family_of
from .scheme import QUANTIZED_ROLES
from .weight_only import (COLUMN_BLOCK_BYTES, INT8_HEAD, HeadGrid, check_group_sizes, lm_head_weight, round_head_,
                          round_linears_, store_codes_)

GIB = 1 << 30
# bytes a Linear's rounding holds at once, per float32 byte of its weight: its int8 codes, their float32
# copy and the dequantized result; plus the float64 temporaries of one block of columns (quantize_rtn)
ROUNDING_FACTOR = 3
ROUNDING_FIXED = 4 * COLUMN_BLOCK_BYTES
# bytes a written group holds, per float32 byte of it: the tensors, and safetensors' serialized copy
WRITE_FACTOR = 2


def quantized_linears(lazy: LazyCheckpoint) -> list[str]:
    """The Linears weight-only quantizes (``scheme.QUANTIZED_ROLES``), by name, from the checkpoint's
    shapes: no weight is read and no model is built."""
    family = family_of(lazy.config)
    return [name[:-len(".weight")] for name, shape in lazy.shapes().items()
            if name.endswith(".weight") and len(shape) == 2
            and family.linear_role(name[:-len(".weight")]) in QUANTIZED_ROLES]


def check_streamable(lazy: LazyCheckpoint, names: list[str], group_size: int | None) -> None:
    """Refuse, before reading a weight, a model that is not a decoder (causal LM) or whose Linears
    the group size does not divide."""
    if lm_head_weight(lazy.config) is None:
        raise UserError(f"{lazy.path}: --stream quantizes decoders (causal LMs); this is a "
                        f"{lazy.config.architecture}: quantize it without --stream")
    shapes = lazy.shapes()
    check_group_sizes({name: shapes[f"{name}.weight"][0] for name in names}, group_size)


def group_bytes(lazy: LazyCheckpoint, names: set[str]) -> dict[str, tuple[int, int]]:
    """Per group: (bytes of its tensors once read, float32 bytes of its largest quantized matrix),
    from the headers."""
    head = lm_head_weight(lazy.config)
    quantized = {f"{n}.weight" for n in names} | ({head[0]} if head else set())
    sizes: dict[str, tuple[int, int]] = {}
    for group in lazy.groups:
        specs = lazy.group_specs(group)  # name -> (shape, dtype)
        total = sum(math.prod(shape) * dtype.itemsize for shape, dtype in specs.values())
        largest = max((math.prod(shape) * 4 for n, (shape, _) in specs.items() if n in quantized), default=0)
        sizes[group] = (total, largest)
    return sizes


@dataclass(frozen=True)
class MemoryNeed:
    """What a streamed run needs at its peak, estimated from the headers."""

    group: str  # the group that needs the most
    bytes: int  # its bytes: the group and its serialized copy, plus the largest rounding's temporaries
    what: str = "the rounding's temporaries"  # what the estimate adds to the group's weights

    def refuse_above(self, limit_gib: float, baseline: int) -> None:
        """Refuse (one line) when this group plus the process's ``baseline`` bytes exceed ``limit_gib``."""
        need = self.bytes + baseline
        if need > limit_gib * GIB:
            raise UserError(f"--max-memory {limit_gib:g} GiB is below what the largest group needs: {self.group} "
                            f"{need / GIB:.2f} GiB (its weights read and written, {self.what}, and "
                            f"{baseline / GIB:.2f} GiB this process holds already); raise --max-memory")


def memory_need(lazy: LazyCheckpoint, names: list[str]) -> MemoryNeed:
    """The group of the highest estimated peak (``WRITE_FACTOR`` x its bytes + ``ROUNDING_FACTOR`` x
    its largest quantized matrix + ``ROUNDING_FIXED``)."""
    sizes = group_bytes(lazy, set(names))
    need = {g: WRITE_FACTOR * total + ROUNDING_FACTOR * largest + ROUNDING_FIXED for g, (total, largest) in sizes.items()}
    group = max(need, key=need.get)
    return MemoryNeed(group, need[group])


def stream_rtn(lazy: LazyCheckpoint, names: list[str], rounding, bits: int, group_size: int | None,
               start: int = 0, store: dict[str, dict] | None = None,
               head: HeadGrid = INT8_HEAD) -> Iterator[dict[str, np.ndarray]]:
    """Each group's tensors in our layout from group ``start`` on (a resumed run), its Linears (``names``)
    rounded by ``rounding`` (weight [in, out] -> codes, scales) and the output head to ``head``, stored
    dequantized, or with ``store`` (the scheme's weights) as their codes: one group at a time."""
    roundings = dict.fromkeys(names, rounding)
    for group in list(lazy.groups)[start:]:
        state = lazy.load_group(group)
        kept = {} if store is not None else None
        round_linears_(state, roundings, bits, group_size, kept)
        round_head_(state, lazy.config, kept, head)
        yield state if store is None else store_codes_(state, kept, store)


def scheme_weights(lazy: LazyCheckpoint, names: list[str], bits: int, group_size: int | None,
                   head_grid: HeadGrid = INT8_HEAD) -> dict[str, dict]:
    """The scheme's entry per quantized weight, as :func:`stream_rtn` will write them (known up front,
    so config.json can be written before the weights)."""
    weights = {f"{name}.weight": {"bits": bits, "group_size": group_size} for name in names}
    head = lm_head_weight(lazy.config)
    key, transposed = head
    weights[key] = head_grid.entry(transposed)
    return weights


def check_disk(lazy: LazyCheckpoint, out: Path, bits: dict[str, int] | None = None, what: str = "the quantized weights") -> None:
    """Refuse, before reading a weight, an ``out`` whose file system has less free space than the
    weights will take: each tensor as :meth:`~.lazy_checkpoint.LazyCheckpoint.load_group` gives it
    (a streamed quantize: the dequantized weights stay float), or, for the tensors ``bits`` names
    (weight name -> bits: an export's integer codes), ``bits / 8`` bytes per weight plus a float
    scale per 16 weights at most (the smallest group MatMulNBits takes)."""
    bits = bits or {}
    need = sum(math.prod(shape) * (bits[name] / 8 + 4 / 16 if name in bits else dtype.itemsize)
               for group in lazy.groups for name, (shape, dtype) in lazy.group_specs(group).items())
    where = Path(out).expanduser().resolve()
    while not where.exists():
        where = where.parent
    free = shutil.disk_usage(where).free
    if need > free:
        raise UserError(f"--out {out}: {what} need {need / GIB:.2f} GiB and {where} has "
                        f"{free / GIB:.2f} GiB free; free space or choose another --out")

