"""ERNIE 3.0 model configuration, stored as PaddleNLP's ``config.json``.

The keys follow PaddleNLP's ``ErnieConfig`` (``paddlenlp/transformers/ernie/configuration.py``) so
that a user's PaddleNLP ERNIE 3.0 checkpoint loads here and ours load there. Two keys are ours and
only appear once a model has been pruned: ``num_attention_heads_per_layer`` and
``intermediate_size_per_layer``. The head width stays ``hidden_size // num_attention_heads``.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

from ..errors import UserError

SUPPORTED_ACTIVATIONS = ("gelu", "relu", "gelu_new", "gelu_fast")


class TaskHeadConfig:
    """What every model family's config shares: the task head's labels and architecture, and
    reading/writing ``config.json`` with unknown keys kept in ``extra`` (a dataclass mixin)."""

    BASE_ARCHITECTURE = "Model"

    @property
    def num_labels(self) -> int:
        return len(self.id2label)

    @property
    def labels(self) -> list[str]:
        return [self.id2label[i] for i in sorted(self.id2label)]

    @property
    def architecture(self) -> str:
        return self.architectures[0] if self.architectures else self.BASE_ARCHITECTURE

    @classmethod
    def from_dict(cls, data: dict[str, Any]):
        if not isinstance(data, dict):
            raise UserError("config.json must hold a JSON object")
        known = {f.name for f in dataclasses.fields(cls)} - {"extra"}
        kwargs = {k: v for k, v in data.items() if k in known}
        extra = {k: v for k, v in data.items() if k not in known and k != "label2id"}
        try:
            return cls(**kwargs, extra=extra)
        except TypeError as exc:  # pragma: no cover - defensive: dataclass signature errors
            raise UserError(f"config.json: {exc}") from None

    def to_dict(self) -> dict[str, Any]:
        data = {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.name != "extra"}
        data["id2label"] = {str(k): v for k, v in sorted(self.id2label.items())}
        data["label2id"] = {v: k for k, v in sorted(self.id2label.items())}
        data.update(self.extra)
        return data

    def replace(self, **changes: Any):
        return dataclasses.replace(self, **changes)


@dataclass
class ErnieConfig(TaskHeadConfig):
    vocab_size: int = 40000
    hidden_size: int = 768
    num_hidden_layers: int = 12
    num_attention_heads: int = 12
    intermediate_size: int = 3072
    hidden_act: str = "gelu"
    hidden_dropout_prob: float = 0.1
    attention_probs_dropout_prob: float = 0.1
    max_position_embeddings: int = 2048
    type_vocab_size: int = 4
    task_type_vocab_size: int = 3
    use_task_id: bool = True
    task_id: int = 0  # the task-type id PaddleNLP feeds every token when use_task_id (its default input)
    pad_token_id: int = 0
    # PaddleNLP computes every LayerNorm with 1e-12 (its _init_weights overrides the config's value, which
    # is 1e-5 in the ERNIE 3.0 releases); new models use what PaddleNLP computes so they agree there.
    layer_norm_eps: float = 1e-12
    initializer_range: float = 0.02
    # The task head: labels name the classes (sequence/token classification); empty for QA.
    architectures: list[str] = field(default_factory=lambda: ["ErnieForSequenceClassification"])
    id2label: dict[int, str] = field(default_factory=dict)
    classifier_dropout: float | None = None
    # After pruning: heads and FFN width of each layer (None = uniform, the unpruned model).
    num_attention_heads_per_layer: list[int] | None = None
    intermediate_size_per_layer: list[int] | None = None
    model_type: str = "ernie"
    extra: dict[str, Any] = field(default_factory=dict)  # unknown keys, written back unchanged

    def __post_init__(self) -> None:
        self.id2label = {int(k): str(v) for k, v in self.id2label.items()}
        ffn = self.intermediate_size_per_layer
        if ffn and len(set(ffn)) == 1 and ffn[0] > 0 and len(ffn) == self.num_hidden_layers:
            # one FFN width in every layer is a standard model: say it with intermediate_size alone
            self.intermediate_size, self.intermediate_size_per_layer = ffn[0], None
        positive = ("vocab_size", "hidden_size", "num_hidden_layers", "num_attention_heads",
                    "intermediate_size", "max_position_embeddings", "type_vocab_size")
        for name in positive:
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
                raise UserError(f"config.json: '{name}' must be a positive integer, got {value!r}")
        if self.hidden_size % self.num_attention_heads:
            raise UserError(
                f"config.json: hidden_size {self.hidden_size} is not divisible by "
                f"num_attention_heads {self.num_attention_heads}")
        if self.hidden_act not in SUPPORTED_ACTIVATIONS:
            raise UserError(f"config.json: hidden_act '{self.hidden_act}' is not supported "
                            f"(use one of {', '.join(SUPPORTED_ACTIVATIONS)})")
        if not 0 <= self.pad_token_id < self.vocab_size:
            raise UserError(f"config.json: pad_token_id {self.pad_token_id} is outside the "
                            f"vocabulary (size {self.vocab_size})")
        if self.use_task_id and not 0 <= self.task_id < self.task_type_vocab_size:
            raise UserError(f"config.json: task_id {self.task_id} is outside task_type_vocab_size "
                            f"{self.task_type_vocab_size}")
        for name, limit in (("num_attention_heads_per_layer", self.num_attention_heads),
                            ("intermediate_size_per_layer", None)):
            values = getattr(self, name)
            if values is None:
                continue
            if len(values) != self.num_hidden_layers:
                raise UserError(f"config.json: '{name}' has {len(values)} entries for "
                                f"{self.num_hidden_layers} layers")
            if any(not isinstance(v, int) or v < 0 or (limit and v > limit) for v in values):
                raise UserError(f"config.json: '{name}' must hold integers in "
                                f"[0, {limit or 'any'}], got {values}")

    # --- derived -----------------------------------------------------------------------------
    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_attention_heads

    BASE_ARCHITECTURE = "ErnieModel"

    def heads_in_layer(self, layer: int) -> int:
        per_layer = self.num_attention_heads_per_layer
        return self.num_attention_heads if per_layer is None else per_layer[layer]

    def ffn_in_layer(self, layer: int) -> int:
        per_layer = self.intermediate_size_per_layer
        return self.intermediate_size if per_layer is None else per_layer[layer]

    @property
    def heads_per_layer(self) -> list[int]:
        return [self.heads_in_layer(i) for i in range(self.num_hidden_layers)]

    @property
    def ffn_per_layer(self) -> list[int]:
        return [self.ffn_in_layer(i) for i in range(self.num_hidden_layers)]

    # --- (de)serialisation -------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        data = super().to_dict()
        for name in ("num_attention_heads_per_layer", "intermediate_size_per_layer",
                     "classifier_dropout"):
            if data[name] is None:
                del data[name]
        return data
