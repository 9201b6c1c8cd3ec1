"""Model families: everything the stages need to know about one kind of model, in one place.

A family is found by ``config.json``'s ``model_type``. It names its config class, its Paddle
implementation (``ARCHITECTURES``, ``LINEAR_ROLES``; imported only when a model is
built), the architecture for each task kind, the exported graph's inputs, the checkpoint layouts
it can be written in and how a foreign layout is read back, and what the compression stages can
do with it. A stage asks ``family_of(config)`` instead of testing ``model_type``; a new family (an
MoE, another encoder) is one more entry here plus its modules in this folder.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from types import ModuleType
from typing import Any

from ..errors import UserError
from .config import ErnieConfig
from .ernie3_layout import normalize_paddlenlp
from .ernie4_5_config import Ernie45Config
from .ernie4_5_layout import normalize_ernie45_state


@dataclass(frozen=True)
class ModelFamily:
    model_type: str
    title: str  # for messages: "ERNIE 3.0"
    config_class: type
    implementation: str  # module with ARCHITECTURES and LINEAR_ROLES (imports Paddle)
    architecture_for_kind: Mapping[str, str]
    other_kinds_hint: str  # what to say for a task kind the family does not serve
    layer_prefix: str  # parameter names of layer i start with f"{layer_prefix}{i}."
    word_embedding: str  # the embedding parameter whose rows are the vocabulary
    input_names: tuple[str, ...]  # of the exported graph
    layouts: tuple[str, ...]  # checkpoint layouts it can be written in (models/layouts.py)
    normalize: Callable[..., Any]  # (config, state, raw config.json, ours) -> (config, state) in our layout
    attention_distillation: bool  # MiniLM attention relations (stages/distill.py)
    grouped_query_attention: bool  # heads pruned per KV group (prune/gqa.py)
    onednn_exact: bool  # Paddle Inference's oneDNN CPU kernels compute its graph correctly

    def module(self) -> ModuleType:
        """The Paddle implementation (imports Paddle)."""
        return importlib.import_module(self.implementation)

    def architecture_for(self, kind: str) -> str:
        """The model class that serves a task kind."""
        if kind not in self.architecture_for_kind:
            raise UserError(f"{self.title} models do not do {kind} here; {self.other_kinds_hint}")
        return self.architecture_for_kind[kind]


def _normalize_ernie3(config, state, raw: dict[str, Any], ours: bool):
    return normalize_paddlenlp(config, state, foreign=not ours)


def _normalize_ernie45(config, state, raw: dict[str, Any], ours: bool):
    return normalize_ernie45_state(state, config, raw, ours)


FAMILIES: dict[str, ModelFamily] = {f.model_type: f for f in (
    ModelFamily(
        model_type="ernie", title="ERNIE 3.0", config_class=ErnieConfig,
        implementation="ernie_compress.models.ernie",
        architecture_for_kind={"classification": "ErnieForSequenceClassification",
                               "pair_classification": "ErnieForSequenceClassification",
                               "token_classification": "ErnieForTokenClassification",
                               "question_answering": "ErnieForQuestionAnswering"},
        other_kinds_hint="use an ERNIE 4.5 preset (ernie45-*)",
        layer_prefix="ernie.encoder.layers.", word_embedding="ernie.embeddings.word_embeddings.weight",
        input_names=("input_ids", "token_type_ids"), layouts=("ours", "paddlenlp"),
        normalize=_normalize_ernie3, attention_distillation=True, grouped_query_attention=False,
        onednn_exact=True),
    ModelFamily(
        model_type="ernie4_5", title="ERNIE 4.5", config_class=Ernie45Config,
        implementation="ernie_compress.models.ernie4_5",
        architecture_for_kind={"classification": "Ernie4_5ForSequenceClassification",
                               "pair_classification": "Ernie4_5ForSequenceClassification",
                               "causal_lm": "Ernie4_5ForCausalLM"},
        other_kinds_hint="they serve classification and causal LM (lm, demo:lm) so far",
        layer_prefix="ernie.layers.", word_embedding="ernie.embed_tokens.weight",
        input_names=("input_ids",), layouts=("ours", "paddleformers", "hf"),
        normalize=_normalize_ernie45, attention_distillation=False, grouped_query_attention=True,
        # Paddle 3.3.1's oneDNN CPU kernels compute the ERNIE 4.5 graph wrongly (logits off by up to
        # 0.76 with every fusion pass off; exact with plain kernels)
        onednn_exact=False),
)}


def family_of(config_or_type: Any) -> ModelFamily:
    """The family of a config (or a ``model_type`` string)."""
    model_type = config_or_type if isinstance(config_or_type, str) else config_or_type.model_type
    family = FAMILIES.get(model_type)
    if family is None:
        raise UserError(f"model_type '{model_type}' is not supported (supported: {', '.join(FAMILIES)})")
    return family


def config_from_dict(data: dict[str, Any]):
    """The config class ``model_type`` names (a missing one is ERNIE 3.0, as PaddleNLP's files)."""
    model_type = str(data.get("model_type", "ernie")) if isinstance(data, dict) else "ernie"
    family = FAMILIES.get("ernie4_5" if model_type.startswith("ernie4_5") else "ernie")
    return family.config_class.from_dict(data)
