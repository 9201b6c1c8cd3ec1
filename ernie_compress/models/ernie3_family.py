"""The ERNIE 3.0 encoder family: parameter names, Linear roles, smoothing map, head layout.

Names as PaddleNLP's ``ErnieModel`` (``ernie.py``): post-LN layers
``ernie.encoder.layers.{i}.self_attn.{q,k,v,out}_proj``, ``linear1``/``linear2`` (the FFN),
``norm1`` (after attention) and ``norm2`` (after the FFN).
"""

from __future__ import annotations

from typing import Any

from .architecture import (Distillation, LinearRoles, ParameterNames, ScaleMapping, SeparateHeads)
from .config import ErnieConfig
from .ernie3_layout import check_paddlenlp_writable, normalize_paddlenlp, to_paddlenlp
from .family import LayoutWriter, ModelFamily

NAMES = ParameterNames(
    layer_prefix="ernie.encoder.layers.", attention="self_attn",
    attention_in=("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj"), attention_out="self_attn.out_proj",
    ffn_in=("linear1",), ffn_out="linear2", norms=("norm1", "norm2"),
    embedding="ernie.embeddings.word_embeddings", embedding_norm="ernie.embeddings.layer_norm",
    task_heads=("classifier",))

LINEAR_ROLES = LinearRoles({
    "attention_in": (r"self_attn\.[qkv]_proj",),
    "attention_out": (r"self_attn\.out_proj",),
    "ffn_in": (r"linear1",),
    "ffn_out": (r"linear2",),
})

# Post-LN: a LayerNorm's output is both the next Linears' input and the residual, so a scale folded
# into it would change the residual too; no norm edge is exact. The values reach the output
# projection through the (linear) attention average, so v -> out is. linear1 -> linear2 passes GELU.
SMOOTHING = (ScaleMapping("self_attn.v_proj", ("self_attn.out_proj",)),)


def _normalize(config, state, raw: dict[str, Any], ours: bool):
    return normalize_paddlenlp(config, state, foreign=not ours)


def _student_keys(keys: dict, teacher_config) -> None:
    """A student preset reads the teacher's token types: never fewer than the teacher has."""
    if keys.get("type_vocab_size", 2) < teacher_config.type_vocab_size:
        keys["type_vocab_size"] = teacher_config.type_vocab_size


FAMILY = ModelFamily(
    model_type="ernie", title="ERNIE 3.0", config_class=ErnieConfig,
    implementation="ernie_compress.models.ernie",
    architecture_for_kind={"classification": "ErnieForSequenceClassification",
                           "pair_classification": "ErnieForSequenceClassification",
                           "token_classification": "ErnieForTokenClassification",
                           "question_answering": "ErnieForQuestionAnswering",
                           "masked_lm": "ErnieForMaskedLM"},
    other_kinds_hint="use an ERNIE 4.5 preset (ernie45-*)",
    names=NAMES, linear_roles=LINEAR_ROLES, smoothing=SMOOTHING, head_layout=SeparateHeads(),
    distillation=Distillation(frozenset({"logits", "hidden_states", "attention_relations"})),
    input_names=("input_ids", "token_type_ids"),
    writers={"paddlenlp": LayoutWriter(check_paddlenlp_writable, to_paddlenlp, {"format": "np"})},  # "np"/"pd" only
    normalize=_normalize, onednn_exact=True, student_keys=_student_keys)
