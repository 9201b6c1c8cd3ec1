"""The :class:`ModelFamily` record: everything the stages and algorithms need to know about one
kind of model. Each family fills one in its own module (``ernie3_family.py``,
``ernie4_5_family.py``); ``families.py`` registers them by ``model_type``."""

from __future__ import annotations

import importlib
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from types import ModuleType
from typing import Any

from ..errors import UserError
from .architecture import (Distillation, ExpertSite, HeadLayout, LinearRoles, ParameterNames, RoutedExperts,
                           ScaleMapping)


@dataclass(frozen=True)
class LayoutWriter:
    """How a family writes one foreign checkpoint layout (``--layout``)."""

    check: Callable[[Any], None]  # refuse (UserError) a model the layout cannot express, before writing
    write: Callable[[Any, dict], tuple[dict, dict]]  # (config, state) -> (config.json keys, weights)
    metadata: dict[str, str] | None  # the safetensors metadata its readers accept


@dataclass(frozen=True)
class ModelFamily:
    model_type: str
    title: str  # for messages: "ERNIE 3.0"
    config_class: type
    implementation: str  # module with ARCHITECTURES (imports Paddle)
    architecture_for_kind: Mapping[str, str]  # task kind -> model class
    other_kinds_hint: str  # what to say for a task kind the family does not serve
    names: ParameterNames  # where the weights live
    linear_roles: LinearRoles  # which Linear does what (quantization, smoothing)
    smoothing: tuple[ScaleMapping, ...]  # per layer: which norm/Linear feeds which Linears
    head_layout: HeadLayout  # how heads sit in the weights: picks the pruning strategy
    distillation: Distillation  # what a teacher of the family can give a student
    input_names: tuple[str, ...]  # of the exported graph
    writers: Mapping[str, LayoutWriter]  # the foreign layouts it can be written in, besides ours
    normalize: Callable[..., Any]  # (config, state, raw config.json, ours) -> (config, state) in our layout
    onednn_exact: bool  # Paddle Inference's oneDNN CPU kernels compute its graph correctly
    student_keys: Callable[[dict, Any], None] = lambda keys, teacher_config: None  # fit a preset to a teacher
    onnx_blocks: str | None = None  # module with its layers as ONNX graph blocks (the cached decoder export)
    static_graph_refusal: str | None = None  # why its models do not trace to a Paddle static graph (None: they
    #   do); export then writes ONNX only, model.onnx built from its ONNX blocks
    routed_experts: RoutedExperts | None = None  # where its MoE layers keep routed experts (None: no MoE)
    # a smoothing edge's ``part`` of a fused Linear: (config, part) -> (its output columns, for each input
    # row of the consumers which of those columns it reads); None: the family's edges have no parts
    smoothing_parts: Callable[[Any, str], tuple[slice, Any]] | None = None

    @property
    def layouts(self) -> tuple[str, ...]:
        """Checkpoint layouts it can be written in (``models/layouts.py``): ours, then its writers'."""
        return ("ours", *self.writers)

    def teaches(self, student: ModelFamily) -> bool:
        """Whether a teacher of this family can distil into a student of ``student``: its own family,
        or one its :class:`~.architecture.Distillation` names (same tokenizer and vocabulary)."""
        return student is self or student.model_type in self.distillation.students

    def module(self) -> ModuleType:
        """The Paddle implementation (imports Paddle)."""
        return importlib.import_module(self.implementation)

    def graph_blocks(self) -> ModuleType:
        """Its layers as ONNX graph blocks (``GRAPH_NAME``, ``NAMES`` and one builder per block), which
        ``export/decoder_onnx.py`` composes into the cached decoder."""
        if self.onnx_blocks is None:
            raise UserError(f"{self.title} models have no cached-decoder ONNX export here")
        return importlib.import_module(self.onnx_blocks)

    def serves(self, config, kind: str) -> bool:
        """Whether ``config``'s architecture is the family's model for task kind ``kind``."""
        return self.architecture_for_kind.get(kind) == config.architecture

    def cached_decoder(self, model):
        """A causal LM ``model`` wrapped for incremental generation with a KV cache (the implementation's
        ``CachedDecoder``)."""
        decoder = getattr(self.module(), "CachedDecoder", None)
        if decoder is None or not self.serves(model.config, "causal_lm"):
            raise UserError(f"{self.title} {model.config.architecture} models do not generate here")
        return decoder(model)

    def architecture_for(self, kind: str) -> str:
        """The model class that serves a task kind."""
        if kind not in self.architecture_for_kind:
            raise UserError(f"{self.title} models do not do {kind} here; {self.other_kinds_hint}")
        return self.architecture_for_kind[kind]

    @property
    def layer_prefix(self) -> str:
        """Parameter names of layer i start with f"{layer_prefix}{i}."."""
        return self.names.layer_prefix

    @property
    def word_embedding(self) -> str:
        """The embedding parameter whose rows are the vocabulary."""
        return self.names.word_embedding

    def linear_role(self, name: str) -> str | None:
        """The role (``architecture.LinearRoles``) of the sublayer ``name`` of a model, or None for
        a sublayer outside the layers or without a role."""
        prefix = self.names.layer_prefix
        if not name.startswith(prefix):
            return None
        index, _, rest = name[len(prefix):].partition(".")
        return self.linear_roles.role_of(rest) if index.isdigit() and rest else None

    def routed_expert(self, name: str) -> ExpertSite | None:
        """Where the Linear sublayer ``name`` of a model sits when it belongs to a routed expert of an
        MoE layer (its block and expert), else None: a dense Linear, a shared expert's, the router."""
        prefix = self.names.layer_prefix
        if self.routed_experts is None or not name.startswith(prefix):
            return None
        index, _, rest = name[len(prefix):].partition(".")
        return self.routed_experts.locate(f"{prefix}{index}.", rest) if index.isdigit() and rest else None

    def output_head(self, config) -> tuple[str, bool] | None:
        """A causal LM's output head: (weight name, True when it is the tied embedding table
        [vocab, hidden], read transposed); None for a model of another task."""
        if not self.serves(config, "causal_lm"):
            return None
        if config.tie_word_embeddings or self.names.lm_head is None:
            return self.names.word_embedding, True
        return f"{self.names.lm_head}.weight", False

    def smoothing_columns(self, config, edge: ScaleMapping, consumer_rows: int) -> tuple[slice, Any]:
        """Which output columns of ``edge.prev`` (a norm: its whole width) feed the consumers, and for
        each of the consumers' ``consumer_rows`` input rows the column of those it reads (numpy int [rows])."""
        import numpy as np

        if edge.part is None:
            return slice(None), np.arange(consumer_rows)
        return self.smoothing_parts(config, edge.part)

    def smoothing_edges(self, config, quantized: list[str]) -> list[ScaleMapping]:
        """The smoothing edges of ``config``'s model whose consumers are all among the ``quantized``
        Linears (AWQ and SmoothQuant fold scales along these)."""
        return [edge for edge in self.smoothing_map(config.num_hidden_layers)
                if all(name in quantized for name in edge.layers)]

    def smoothing_map(self, num_layers: int) -> Iterator[ScaleMapping]:
        """The smoothing edges of a model with ``num_layers`` layers, in full module names."""
        for i in range(num_layers):
            layer = self.names.layer(i)
            for edge in self.smoothing:
                yield ScaleMapping(layer + edge.prev, tuple(layer + name for name in edge.layers), edge.part)
