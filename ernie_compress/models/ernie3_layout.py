"""ERNIE 3.0 checkpoints as PaddleNLP writes and reads them (``paddlenlp.transformers.ernie``, 2.8).

Reading a PaddleNLP checkpoint (one without our ``ernie_compress`` config key) applies what
PaddleNLP itself does at load and run time, so the same inputs give the same logits:

- ``id2label``/``label2id`` are left out of ``config.json`` when they are the defaults; the label
  count is then the classifier's width (``LABEL_0``, ``LABEL_1``, ... as PaddleNLP names them);
- every LayerNorm computes with epsilon 1e-12 whatever the config says (``_init_weights``);
- with ``use_task_id`` every token's task-type id is the config's ``task_id``;
- the masked-LM head's tied decoder is saved as ``cls.predictions.decoder.{weight,bias}``;
- older checkpoints keep the config in ``model_config.json`` as ``{"init_args": [{...}],
  "init_class": ..., "num_classes": N}``.

Writing for PaddleNLP (``--layout paddlenlp``) needs a model PaddleNLP can build: the same head
count and FFN width in every layer and ``hidden_size / num_attention_heads`` wide heads (PaddleNLP's
``nn.TransformerEncoderLayer`` has no other shape), so attention-head pruning cannot be expressed;
a uniform FFN prune can (``intermediate_size`` becomes the new width).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from ..errors import UserError
from .config import ErnieConfig

PADDLENLP_LAYER_NORM_EPS = 1e-12
# our name -> PaddleNLP's name for the masked-LM head's decoder (its TransposedLinear)
_MLM_NAMES = {"cls.predictions.decoder_bias": "cls.predictions.decoder.bias"}
_MLM_TIED = ("cls.predictions.decoder.weight", "cls.predictions.decoder_weight")
_HEAD_WEIGHT = {"ErnieForSequenceClassification": "classifier.weight",
                "ErnieForTokenClassification": "classifier.weight"}


def config_from_model_config_json(data: dict[str, Any]) -> dict[str, Any]:
    """The flat config of an older PaddleNLP ``model_config.json`` (``init_args`` nesting)."""
    if not isinstance(data, dict):
        raise UserError("model_config.json must hold a JSON object")
    flat: dict[str, Any] = {}
    args = data.get("init_args")
    if isinstance(args, list) and args and isinstance(args[0], dict):
        inner = dict(args[0])
        nested = inner.get("init_args")  # a task model wraps the base model's init_args
        if isinstance(nested, list) and nested and isinstance(nested[0], dict):
            inner = {**nested[0], **{k: v for k, v in inner.items() if k != "init_args"}}
        flat.update({k: v for k, v in inner.items() if k not in ("init_class", "init_args")})
    else:
        flat.update({k: v for k, v in data.items() if k not in ("init_class", "init_args")})
    cls = data.get("init_class")
    if isinstance(cls, str) and cls.startswith("Ernie"):
        flat["architectures"] = [cls]
    if "num_classes" in data:
        flat["num_classes"] = data["num_classes"]
    return flat


def normalize_paddlenlp(config: ErnieConfig, state: dict[str, np.ndarray],
                        foreign: bool = True) -> tuple[ErnieConfig, dict]:
    """A PaddleNLP checkpoint's config and weights as this package's model computes them (``foreign``:
    written by PaddleNLP, so its run-time behaviour applies; else only the MLM names are mapped)."""
    state = dict(state)
    for ours, theirs in _MLM_NAMES.items():
        if theirs in state:
            state[ours] = state.pop(theirs)
    for tied in _MLM_TIED:  # the word embedding matrix again (tied)
        state.pop(tied, None)
    if "cls.predictions.decoder_bias" in state and "ernie.embeddings.word_embeddings.weight" in state:
        state["cls.predictions.decoder_weight"] = state["ernie.embeddings.word_embeddings.weight"]
    if not foreign:
        return config, state
    changes: dict[str, Any] = {"layer_norm_eps": PADDLENLP_LAYER_NORM_EPS}
    head = _HEAD_WEIGHT.get(config.architecture)
    if head and not config.id2label:
        if head in state:
            n = int(state[head].shape[-1])
        else:
            n = int(config.extra.get("num_labels") or config.extra.get("num_classes") or 2)
        changes["id2label"] = {i: f"LABEL_{i}" for i in range(n)}
    return config.replace(**changes), state


def check_paddlenlp_writable(config: ErnieConfig) -> None:
    """Refuse, with the reason, a model PaddleNLP's ERNIE classes cannot build."""
    if len(set(config.heads_per_layer)) > 1 or config.heads_in_layer(0) != config.num_attention_heads:
        raise UserError(f"--layout paddlenlp: this model's layers keep {config.heads_per_layer} attention heads "
                        f"(pruned); PaddleNLP's ERNIE builds every layer with num_attention_heads heads of width "
                        f"hidden_size/num_attention_heads, so pruned heads cannot be expressed there "
                        f"(prune FFN neurons only, with prune --ffn R --uniform, or keep --layout ours)")
    if len(set(config.ffn_per_layer)) > 1:
        raise UserError(f"--layout paddlenlp: the FFN widths differ between layers ({config.ffn_per_layer}); "
                        f"PaddleNLP needs one intermediate_size (prune with --uniform, or keep --layout ours)")
    if config.ffn_in_layer(0) == 0:
        raise UserError("--layout paddlenlp: the FFN was pruned away entirely; PaddleNLP cannot build it")


def to_paddlenlp(config: ErnieConfig, state: dict[str, np.ndarray]) -> tuple[dict[str, Any], dict]:
    """``config.json`` keys and weights that PaddleNLP's ``from_pretrained`` loads unchanged (the model
    passed :func:`check_paddlenlp_writable`, through ``layouts.check_layout``)."""
    uniform = config.replace(intermediate_size=config.ffn_in_layer(0), num_attention_heads_per_layer=None,
                             intermediate_size_per_layer=None)
    keys = uniform.to_dict()
    keys["num_labels"] = config.num_labels or keys.get("num_labels", 2)
    if config.architecture == "ErnieForQuestionAnswering":
        keys.pop("id2label", None), keys.pop("label2id", None)
    state = {_MLM_NAMES.get(k, k): v for k, v in state.items() if k != "cls.predictions.decoder_weight"}
    if "cls.predictions.decoder.bias" in state:  # PaddleNLP's tied decoder weight has its own name
        state["cls.predictions.decoder.weight"] = state["ernie.embeddings.word_embeddings.weight"]
    return keys, state
