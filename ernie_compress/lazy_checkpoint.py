"""A checkpoint opened without reading its weights: config, lineage and tokenizer checked first,
tensors read one decoder layer at a time, in this package's layout.

Every layout conversion the families' ``normalize`` functions do (renames, transposes, qkv and
gate/up fusion, transformers' fused 3-D experts split) is local to one decoder layer, or to the
tensors outside the layers (embeddings, final norm, head: "the rest"). So the family's own
``normalize`` runs on one *group* at a time: the rest (whose normalization also gives the config,
e.g. ERNIE 3.0's label count from its head's shape), then each ``layers.{i}`` group. The memory
held is one group's, whatever the model's depth.

Shapes in our layout come from the same functions run over placeholders: each tensor a
zero-stride view of one element with the header's shape and dtype, so renames and transposes cost
nothing and only a fusion (a concatenation) allocates, one layer's worth at most. No weight is read
for :meth:`LazyCheckpoint.shapes` (``info``'s parameter counts).

A ``.pdparams`` pickle cannot be read a tensor at a time; it is read whole (as
:func:`~.checkpoint.load_checkpoint` does) and then served group by group.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .checkpoint import (CheckpointFacts, CheckpointHeader, check_integrity, load_policy, open_weights,
                         read_checkpoint_header)
from .errors import UserError
from .lazy_weights import InMemoryWeights, SafetensorsWeights, placeholder
from .models.config import ErnieConfig
from .models.layouts import normalize_loaded

REST = "rest"  # the group of the tensors outside the decoder/encoder layers
_LAYER = re.compile(r"(?:^|\.)layers\.(\d+)\.")


def layer_of(name: str) -> int | None:
    """The layer index a tensor name belongs to (``ernie.layers.3.…``, ``model.layers.3.…``,
    ``ernie.encoder.layers.3.…``), None for the rest."""
    match = _LAYER.search(name)
    return int(match.group(1)) if match else None


def group_names(names: list[str]) -> dict[str, list[str]]:
    """Raw tensor names by group: :data:`REST` first, then ``layers.{i}`` in layer order."""
    groups: dict[str, list[str]] = {REST: []}
    by_layer: dict[int, list[str]] = {}
    for name in names:
        layer = layer_of(name)
        (groups[REST] if layer is None else by_layer.setdefault(layer, [])).append(name)
    groups.update((f"layers.{i}", by_layer[i]) for i in sorted(by_layer))
    return groups


@dataclass
class LazyCheckpoint(CheckpointFacts):
    """A checkpoint whose weights stay on disk until a group of them is asked for (module docstring)."""

    header: CheckpointHeader
    weights: SafetensorsWeights | InMemoryWeights
    config: ErnieConfig  # normalized (as a loaded Checkpoint's)
    groups: dict[str, list[str]]  # group -> the raw tensor names in it
    _specs: dict[str, dict[str, tuple[tuple[int, ...], np.dtype]]] = field(default_factory=dict, repr=False)

    @property
    def path(self) -> Path:
        return self.header.path

    @property
    def lineage(self) -> dict[str, Any]:
        return self.header.lineage

    @property
    def tokenizer_dir(self) -> Path | None:
        return self.header.tokenizer_dir

    @property
    def lazy(self) -> bool:
        """Whether tensors are read one at a time (False for a ``.pdparams`` pickle, read whole)."""
        return isinstance(self.weights, SafetensorsWeights)

    def load_group(self, group: str) -> dict[str, np.ndarray]:
        """One group's tensors read and normalized to our layout (name -> array)."""
        raw = self.weights.read_many(self.groups[group])
        return self._normalize(group, raw)

    def iter_groups(self) -> Iterator[tuple[str, dict[str, np.ndarray]]]:
        """(group, its normalized tensors) for the rest, then each layer: one group in memory at a time."""
        for group in self.groups:
            yield group, self.load_group(group)

    def group_specs(self, group: str) -> dict[str, tuple[tuple[int, ...], np.dtype]]:
        """One group's tensors in our layout: name -> (shape, dtype as :meth:`load_group` returns it),
        without reading a weight."""
        if group not in self._specs:
            names = self.groups[group]
            raw = {n: placeholder(self.weights.shape(n), self.weights.dtype(n)) for n in names}
            self._specs[group] = {name: (tuple(v.shape), v.dtype) for name, v in self._normalize(group, raw).items()}
        return self._specs[group]

    def shapes(self) -> dict[str, tuple[int, ...]]:
        """Every tensor's shape in our layout, without reading a weight."""
        return {name: spec[0] for group in self.groups for name, spec in self.group_specs(group).items()}

    def dtypes(self) -> dict[str, np.dtype]:
        """Every tensor's dtype in our layout (as :meth:`load_group` returns it), without reading a weight."""
        return {name: spec[1] for group in self.groups for name, spec in self.group_specs(group).items()}

    def _normalize(self, group: str, raw: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """``raw`` (one group's tensors) in our layout, by the family's ``normalize``."""
        return _normalize_group(self.header, self.weights, self.groups, group, raw)[1]


def _normalize_group(header: CheckpointHeader, weights, groups: dict[str, list[str]], group: str,
                     raw: dict[str, np.ndarray]) -> tuple[ErnieConfig, dict[str, np.ndarray]]:
    """(config, tensors) of one group in our layout. The rest is normalized beside placeholders of the
    first layer's tensors (then dropped): which layout a file is in is told from its layers' names."""
    layers = [g for g in groups if g != REST]
    if group == REST and layers:
        raw = {**{n: placeholder(weights.shape(n), weights.dtype(n)) for n in groups[layers[0]]}, **raw}
    try:
        config, state = normalize_loaded(header.config, raw, header.raw, header.ours)
    except UserError as exc:
        raise UserError(f"{header.path}: {exc}") from None
    if group == REST:
        state = {name: value for name, value in state.items() if layer_of(name) is None}
    return config, state


def open_checkpoint(path: str | Path, tokenizer: str | Path | None = None, check_tokenizer: bool = False,
                    trust_pickle: bool | None = None, ignore_integrity: bool | None = None) -> LazyCheckpoint:
    """Open a checkpoint directory lazily: config and lineage read, the tokenizer checked (with
    ``check_tokenizer``; ``tokenizer``: another folder holding it) and the weights' sha256 checked
    against the lineage, all before any tensor is read; then the headers of its safetensors."""
    trust_pickle = load_policy.trust_pickle if trust_pickle is None else trust_pickle
    ignore_integrity = load_policy.ignore_integrity if ignore_integrity is None else ignore_integrity
    header = read_checkpoint_header(path, tokenizer, check_tokenizer)
    check_integrity(header, ignore_integrity)
    weights = open_weights(header.path, trust_pickle)
    groups = group_names(weights.names)
    rest = {n: placeholder(weights.shape(n), weights.dtype(n)) for n in groups[REST]}
    # the rest's normalization gives the config (e.g. ERNIE 3.0's label count from its head)
    config = _normalize_group(header, weights, groups, REST, rest)[0]
    _check_layers(header.path, config, groups)
    return LazyCheckpoint(header=header, weights=weights, config=config, groups=groups)


def _check_layers(path: Path, config: ErnieConfig, groups: dict[str, list[str]]) -> None:
    """Refuse weights whose layers are not exactly config.json's ``num_hidden_layers`` (a layer missing
    from a partial download would otherwise surface only when a stage builds the model)."""
    present = {int(g.split(".", 1)[1]) for g in groups if g != REST}
    expected = set(range(config.num_hidden_layers))
    if present != expected:
        missing, extra = sorted(expected - present), sorted(present - expected)
        what = (f"no weights for layer(s) {missing[:5]}" if missing else f"weights for layer(s) {extra[:5]} it does not have")
        raise UserError(f"{path}: config.json says {config.num_hidden_layers} layers but the checkpoint has {what}; "
                        f"the save is incomplete or belongs to another config")
