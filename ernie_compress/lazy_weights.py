"""Safetensors weights opened without reading them: names, shapes and dtypes from the headers,
each tensor read on its own when asked for.

The format (https://huggingface.co/docs/safetensors, "Format"): an 8-byte little-endian header
length N, N bytes of JSON mapping each tensor name to ``{"dtype", "shape", "data_offsets": [begin,
end]}`` (offsets into the byte buffer that follows the header; an optional ``__metadata__`` entry
of strings), then the buffer. Reading a tensor is one ``numpy.fromfile`` at its offset, so the
memory a reader holds is that tensor's, whatever the checkpoint's size.

BF16 (what the ERNIE 4.5 releases ship) has no numpy dtype, so ``safetensors.numpy`` cannot read
it (``TypeError: data type 'bfloat16' not understood``); here a BF16 tensor is read as its 16-bit
patterns and widened exactly to float32 (a bfloat16 is the top half of the float32 with the same
value). FP8 tensors are refused by name.

A sharded save (``*.safetensors.index.json``, whose ``weight_map`` names each tensor's shard) is
one :class:`SafetensorsWeights` over all its shards. PaddleNLP's ``.pdparams`` is a pickle: it can
only be read whole (:class:`InMemoryWeights` wraps what was read).
"""

from __future__ import annotations

import json
import math
import struct
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .errors import UserError

# safetensors dtype -> numpy dtype of the stored bytes (BF16: its bit patterns, widened on read)
_DTYPES = {"F64": np.float64, "F32": np.float32, "F16": np.float16, "BF16": np.uint16, "I64": np.int64,
           "I32": np.int32, "I16": np.int16, "I8": np.int8, "U64": np.uint64, "U32": np.uint32,
           "U16": np.uint16, "U8": np.uint8, "BOOL": np.bool_}
_HEADER_LIMIT = 100 << 20  # the format caps the JSON header at 100 MB


@dataclass(frozen=True)
class TensorEntry:
    """Where one tensor lies: its file, the byte offset of its data, its stored dtype and shape."""

    file: Path
    offset: int  # from the start of the file
    dtype: str  # the safetensors name: "F32", "BF16", ...
    shape: tuple[int, ...]

    @property
    def read_dtype(self) -> np.dtype:
        """The dtype :meth:`SafetensorsWeights.read` returns (BF16 comes back float32)."""
        return np.dtype(np.float32 if self.dtype == "BF16" else _DTYPES[self.dtype])


def bf16_to_float32(bits: np.ndarray) -> np.ndarray:
    """BF16 bit patterns (uint16) as float32: the same sign, exponent and leading mantissa bits,
    the low 16 mantissa bits zero, so every value (inf and NaN included) is kept exactly."""
    return (bits.astype(np.uint32) << 16).view(np.float32)


def read_header(path: Path) -> tuple[dict[str, TensorEntry], dict[str, str]]:
    """A safetensors file's tensors (name -> :class:`TensorEntry`) and metadata, from its header
    alone; a truncated or malformed file is refused in one line."""
    size = path.stat().st_size
    with open(path, "rb") as f:
        head = f.read(8)
        length = struct.unpack("<Q", head)[0] if len(head) == 8 else -1
        if not 0 < length <= min(_HEADER_LIMIT, size - 8):
            raise UserError(f"{path}: not a safetensors file (no header); the file is truncated or corrupt")
        try:
            header = json.loads(f.read(length))
        except (json.JSONDecodeError, UnicodeDecodeError):
            raise UserError(f"{path}: unreadable safetensors header; the file is truncated or corrupt") from None
    if not isinstance(header, dict):
        raise UserError(f"{path}: unreadable safetensors header; the file is truncated or corrupt")
    metadata = header.pop("__metadata__", None) or {}
    start, entries = 8 + length, {}
    for name, spec in header.items():
        entries[name] = _entry(path, name, spec, start, size)
    return entries, metadata


def _entry(path: Path, name: str, spec, start: int, size: int) -> TensorEntry:
    """One header entry checked against the file: a known dtype, offsets inside the file that
    hold exactly shape x itemsize bytes."""
    try:
        dtype, shape, (begin, end) = spec["dtype"], tuple(int(n) for n in spec["shape"]), spec["data_offsets"]
    except (KeyError, TypeError, ValueError):
        raise UserError(f"{path}: the header entry of '{name}' is malformed; the file is corrupt") from None
    if dtype not in _DTYPES:
        raise UserError(f"{path}: '{name}' is stored as {dtype}, which is not read here (float and integer "
                        f"tensors are; convert FP8 weights to BF16 or FP32 first)")
    nbytes = math.prod(shape) * np.dtype(_DTYPES[dtype]).itemsize
    if end - begin != nbytes or begin < 0 or start + end > size:
        raise UserError(f"{path}: '{name}' lies outside the file or has the wrong size; the file is "
                        f"truncated or corrupt")
    return TensorEntry(path, start + begin, dtype, shape)


class SafetensorsWeights:
    """The tensors of one or more safetensors files, read one at a time (the module docstring)."""

    def __init__(self, entries: Mapping[str, TensorEntry], metadata: Mapping[str, str] | None = None):
        self.entries = dict(entries)
        self.metadata = dict(metadata or {})

    @classmethod
    def open(cls, path: Path) -> SafetensorsWeights:
        """One ``.safetensors`` file."""
        return cls(*read_header(path))

    @classmethod
    def open_shards(cls, index_path: Path, weight_map: Mapping[str, str]) -> SafetensorsWeights:
        """The shards a sharded save's index names (``weight_map``: tensor -> shard file, checked
        by the caller to be file names in the index's folder); every tensor it lists must be in its shard."""
        entries: dict[str, TensorEntry] = {}
        for shard in sorted(set(weight_map.values())):
            entries.update(read_header(index_path.parent / shard)[0])
        missing = sorted(set(weight_map) - set(entries))
        if missing:
            raise UserError(f"{index_path}: {len(missing)} tensor(s) it lists are not in their shards, "
                            f"e.g. {missing[0]}")
        return cls(entries)

    @property
    def names(self) -> list[str]:
        return list(self.entries)

    def shape(self, name: str) -> tuple[int, ...]:
        return self.entries[name].shape

    def dtype(self, name: str) -> np.dtype:
        """The dtype :meth:`read` returns."""
        return self.entries[name].read_dtype

    def read(self, name: str) -> np.ndarray:
        """One tensor, freshly allocated (BF16 widened to float32)."""
        entry = self.entries[name]
        count = math.prod(entry.shape)
        with open(entry.file, "rb") as f:
            data = np.fromfile(f, dtype=_DTYPES[entry.dtype], count=count, offset=entry.offset)
        if data.size != count:
            raise UserError(f"{entry.file}: '{name}' is cut short; the file is truncated or corrupt")
        data = data.reshape(entry.shape)
        return bf16_to_float32(data) if entry.dtype == "BF16" else data

    def read_many(self, names: Iterable[str]) -> dict[str, np.ndarray]:
        return {name: self.read(name) for name in names}


class InMemoryWeights:
    """Weights that were read whole (a ``.pdparams`` pickle cannot be read a tensor at a time),
    behind the same interface as :class:`SafetensorsWeights`."""

    def __init__(self, state: Mapping[str, np.ndarray]):
        self.state = dict(state)

    @property
    def names(self) -> list[str]:
        return list(self.state)

    def shape(self, name: str) -> tuple[int, ...]:
        return tuple(self.state[name].shape)

    def dtype(self, name: str) -> np.dtype:
        return self.state[name].dtype

    def read(self, name: str) -> np.ndarray:
        return self.state[name]

    def read_many(self, names: Iterable[str]) -> dict[str, np.ndarray]:
        return {name: self.state[name] for name in names}


def placeholder(shape: tuple[int, ...], dtype: np.dtype) -> np.ndarray:
    """A read-only array of ``shape`` that occupies one element: every stride zero (a tensor's shape and
    dtype, for conversions that need them but not its data)."""
    view = np.lib.stride_tricks.as_strided(np.zeros(1, dtype), shape=shape, strides=(0,) * len(shape))
    view.flags.writeable = False
    return view


def is_placeholder(array: np.ndarray) -> bool:
    """Whether ``array`` is a :func:`placeholder` (more than one element, every stride zero)."""
    return array.size > 1 and not any(array.strides)
