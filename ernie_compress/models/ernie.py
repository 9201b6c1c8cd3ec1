"""The ERNIE 3.0 encoder in Paddle, with PaddleNLP's parameter names.

ERNIE 3.0 (Sun et al. 2021, "ERNIE 3.0: Large-scale Knowledge Enhanced Pre-training for Language
Understanding and Generation", arXiv:2107.02137) fine-tunes as a post-LN BERT-style Transformer
encoder (Devlin et al. 2019) with an extra task-type embedding. The layout mirrors PaddleNLP's
``ErnieModel`` (built on ``paddle.nn.TransformerEncoderLayer``) so its checkpoints load unchanged:

    ernie.embeddings.{word,position,token_type,task_type}_embeddings.weight, .layer_norm.*
    ernie.encoder.layers.{i}.self_attn.{q,k,v,out}_proj.{weight,bias}
    ernie.encoder.layers.{i}.{linear1,linear2,norm1,norm2}.{weight,bias}
    ernie.pooler.dense.*   classifier.*

The attention is written out here rather than taken from ``paddle.nn.MultiHeadAttention`` so that
each layer may keep a different number of heads (pruning), a head mask can be applied (head
importance, Michel et al. 2019) and attention maps / queries / keys / values can be returned
(MiniLM distillation, Wang et al. 2020). The padding mask is derived from ``pad_token_id`` inside
the model, so an exported graph takes only ``input_ids`` and ``token_type_ids``.
"""

from __future__ import annotations

from typing import Any

from ..paddle_env import import_paddle
from .config import ErnieConfig

paddle = import_paddle()
nn = paddle.nn
F = paddle.nn.functional

_ACTIVATIONS = {
    "gelu": F.gelu,
    "relu": F.relu,
    "gelu_new": lambda x: F.gelu(x, approximate=True),
    "gelu_fast": lambda x: F.gelu(x, approximate=True),
}


@paddle.jit.not_to_static
def _record(record: dict | None, key: str, value) -> None:
    """Append ``value`` to ``record[key]`` (kept out of loops so dy2static leaves it alone)."""
    if record is not None:
        record.setdefault(key, []).append(value)


def _linear(config: ErnieConfig, in_features: int, out_features: int):
    init = nn.initializer.TruncatedNormal(std=config.initializer_range)
    return nn.Linear(in_features, out_features, weight_attr=paddle.ParamAttr(initializer=init))


class ErnieEmbeddings(nn.Layer):
    def __init__(self, config: ErnieConfig):
        super().__init__()
        init = paddle.ParamAttr(initializer=nn.initializer.TruncatedNormal(std=config.initializer_range))
        self.word_embeddings = nn.Embedding(config.vocab_size, config.hidden_size,
                                            padding_idx=config.pad_token_id, weight_attr=init)
        self.position_embeddings = nn.Embedding(config.max_position_embeddings, config.hidden_size,
                                                weight_attr=init)
        self.token_type_embeddings = nn.Embedding(config.type_vocab_size, config.hidden_size,
                                                  weight_attr=init)
        self.use_task_id = config.use_task_id
        self.task_id = config.task_id
        if config.use_task_id:
            self.task_type_embeddings = nn.Embedding(config.task_type_vocab_size,
                                                     config.hidden_size, weight_attr=init)
        self.layer_norm = nn.LayerNorm(config.hidden_size, epsilon=config.layer_norm_eps)
        self.dropout = nn.Dropout(config.hidden_dropout_prob)

    def forward(self, input_ids, token_type_ids=None, task_type_ids=None):
        # input_ids: [batch, seq]
        ones = paddle.ones_like(input_ids)
        position_ids = paddle.cumsum(ones, axis=-1) - ones  # [batch, seq]: 0..seq-1
        if token_type_ids is None:
            token_type_ids = paddle.zeros_like(input_ids)
        x = (self.word_embeddings(input_ids) + self.position_embeddings(position_ids)
             + self.token_type_embeddings(token_type_ids))  # [batch, seq, hidden]
        if self.use_task_id:
            if task_type_ids is None:  # PaddleNLP's default: the config's task_id at every position
                task_type_ids = paddle.full_like(input_ids, self.task_id)
            x = x + self.task_type_embeddings(task_type_ids)
        return self.dropout(self.layer_norm(x))


class ErnieSelfAttention(nn.Layer):
    """Multi-head self-attention with ``num_heads`` heads of width ``head_dim`` (may be pruned)."""

    def __init__(self, config: ErnieConfig, num_heads: int):
        super().__init__()
        self.num_heads = num_heads
        self.head_dim = config.head_dim
        inner = num_heads * self.head_dim
        self.q_proj = _linear(config, config.hidden_size, inner)
        self.k_proj = _linear(config, config.hidden_size, inner)
        self.v_proj = _linear(config, config.hidden_size, inner)
        self.out_proj = _linear(config, inner, config.hidden_size)
        self.dropout = nn.Dropout(config.attention_probs_dropout_prob)

    def _split_heads(self, x):
        # [batch, seq, heads*head_dim] -> [batch, heads, seq, head_dim]
        x = paddle.reshape(x, [0, 0, self.num_heads, self.head_dim])
        return paddle.transpose(x, [0, 2, 1, 3])

    def forward(self, x, attn_bias, head_mask=None, record: dict | None = None):
        # x: [batch, seq, hidden]; attn_bias: [batch, 1, 1, seq] (0 or -1e4)
        q = self._split_heads(self.q_proj(x))  # [batch, heads, seq, head_dim]
        k = self._split_heads(self.k_proj(x))
        v = self._split_heads(self.v_proj(x))
        scores = paddle.matmul(q * (self.head_dim ** -0.5), k, transpose_y=True)  # [b, h, s, s]
        probs = F.softmax(scores + attn_bias, axis=-1)
        if head_mask is not None:
            probs = probs * paddle.reshape(head_mask, [1, -1, 1, 1])  # [1, heads, 1, 1]
        _record(record, "attentions", probs)
        _record(record, "qkv", (q, k, v))
        context = paddle.matmul(self.dropout(probs), v)  # [batch, heads, seq, head_dim]
        context = paddle.transpose(context, [0, 2, 1, 3])
        context = paddle.reshape(context, [0, 0, self.num_heads * self.head_dim])
        return self.out_proj(context)  # [batch, seq, hidden]


class ErnieEncoderLayer(nn.Layer):
    """Post-LN Transformer layer, names as ``paddle.nn.TransformerEncoderLayer``.

    A layer whose heads were all pruned has no ``self_attn``; one whose FFN was pruned to zero
    width has no ``linear1``/``linear2``. The residual path and layer norms stay.
    """

    def __init__(self, config: ErnieConfig, num_heads: int, ffn_size: int):
        super().__init__()
        self.self_attn = ErnieSelfAttention(config, num_heads) if num_heads > 0 else None
        if ffn_size > 0:
            self.linear1 = _linear(config, config.hidden_size, ffn_size)
            self.linear2 = _linear(config, ffn_size, config.hidden_size)
        else:
            self.linear1 = self.linear2 = None
        self.norm1 = nn.LayerNorm(config.hidden_size, epsilon=config.layer_norm_eps)
        self.norm2 = nn.LayerNorm(config.hidden_size, epsilon=config.layer_norm_eps)
        self.dropout = nn.Dropout(0.0)  # PaddleNLP's act_dropout=0
        self.dropout1 = nn.Dropout(config.hidden_dropout_prob)
        self.dropout2 = nn.Dropout(config.hidden_dropout_prob)
        self.activation = _ACTIVATIONS[config.hidden_act]

    def forward(self, x, attn_bias, head_mask=None, record: dict | None = None):
        # x: [batch, seq, hidden]
        if self.self_attn is not None:
            x = self.norm1(x + self.dropout1(self.self_attn(x, attn_bias, head_mask, record)))
        else:
            x = self.norm1(x)
            _record(record, "attentions", None)
            _record(record, "qkv", None)
        if self.linear1 is not None:
            ffn = self.linear2(self.dropout(self.activation(self.linear1(x))))  # [b, s, hidden]
            x = x + self.dropout2(ffn)
        return self.norm2(x)


class ErnieEncoder(nn.Layer):
    def __init__(self, config: ErnieConfig):
        super().__init__()
        self.layers = nn.LayerList([
            ErnieEncoderLayer(config, config.heads_in_layer(i), config.ffn_in_layer(i))
            for i in range(config.num_hidden_layers)
        ])

    def forward(self, x, attn_bias, head_mask=None, record: dict | None = None):
        for i, layer in enumerate(self.layers):
            x = layer(x, attn_bias, None if head_mask is None else head_mask[i], record)
            _record(record, "hidden_states", x)
        return x


class ErniePooler(nn.Layer):
    def __init__(self, config: ErnieConfig):
        super().__init__()
        self.dense = _linear(config, config.hidden_size, config.hidden_size)

    def forward(self, sequence_output):
        return paddle.tanh(self.dense(sequence_output[:, 0]))  # [batch, hidden]


class ErnieModel(nn.Layer):
    """Embeddings, encoder and pooler: ``forward`` returns (sequence_output, pooled_output)."""

    def __init__(self, config: ErnieConfig):
        super().__init__()
        self.config = config
        self.pad_token_id = config.pad_token_id
        self.embeddings = ErnieEmbeddings(config)
        self.encoder = ErnieEncoder(config)
        self.pooler = ErniePooler(config)

    def forward(self, input_ids, token_type_ids=None, head_mask=None, record: dict | None = None):
        # input_ids: [batch, seq] -> [batch, seq, hidden], [batch, hidden]
        is_pad = paddle.cast(input_ids == self.pad_token_id, "float32")
        attn_bias = paddle.unsqueeze(is_pad * -1e4, axis=[1, 2])  # [batch, 1, 1, seq]
        x = self.embeddings(input_ids, token_type_ids)
        _record(record, "embeddings", x)
        x = self.encoder(x, attn_bias, head_mask, record)
        return x, self.pooler(x)


class ErnieForSequenceClassification(nn.Layer):
    """ERNIE + pooler + linear classifier over the ``[CLS]`` position (single sentence or pair)."""

    task_kind = "classification"

    def __init__(self, config: ErnieConfig):
        super().__init__()
        if config.num_labels < 2:
            raise ValueError(f"a {self.task_kind} model needs at least 2 labels in id2label")
        self.config = config
        self.ernie = ErnieModel(config)
        dropout = config.classifier_dropout
        self.dropout = nn.Dropout(config.hidden_dropout_prob if dropout is None else dropout)
        self.classifier = _linear(config, config.hidden_size, config.num_labels)

    def forward(self, input_ids, token_type_ids=None, head_mask=None, record: dict | None = None):
        _, pooled = self.ernie(input_ids, token_type_ids, head_mask, record)
        return self.classifier(self.dropout(pooled))  # [batch, num_labels]


class ErnieForTokenClassification(ErnieForSequenceClassification):
    """ERNIE + the same linear classifier on every position (NER with BIO tags), as PaddleNLP's."""

    task_kind = "token_classification"

    def forward(self, input_ids, token_type_ids=None, head_mask=None, record: dict | None = None):
        sequence, _ = self.ernie(input_ids, token_type_ids, head_mask, record)
        return self.classifier(self.dropout(sequence))  # [batch, seq, num_labels]


class ErnieForQuestionAnswering(nn.Layer):
    """ERNIE + a span head: start and end logits per position (extractive QA), as PaddleNLP's
    (``classifier`` maps hidden -> 2). One output [batch, seq, 2] (start, end) so that every
    runtime returns a single tensor; padding positions get -1e4 so they are never chosen."""

    task_kind = "question_answering"

    def __init__(self, config: ErnieConfig):
        super().__init__()
        self.config = config
        self.ernie = ErnieModel(config)
        self.classifier = _linear(config, config.hidden_size, 2)

    def forward(self, input_ids, token_type_ids=None, head_mask=None, record: dict | None = None):
        sequence, _ = self.ernie(input_ids, token_type_ids, head_mask, record)
        is_pad = paddle.cast(input_ids == self.config.pad_token_id, "float32")  # [batch, seq]
        return self.classifier(sequence) - 1e4 * paddle.unsqueeze(is_pad, -1)  # [batch, seq, 2]


class ErnieLMPredictionHead(nn.Layer):
    """PaddleNLP's MLM head: dense + activation + LayerNorm, decoder tied to the word embeddings."""

    def __init__(self, config: ErnieConfig, embedding_weight):
        super().__init__()
        self.transform = _linear(config, config.hidden_size, config.hidden_size)
        self.activation = _ACTIVATIONS[config.hidden_act]
        self.layer_norm = nn.LayerNorm(config.hidden_size, epsilon=config.layer_norm_eps)
        self.decoder_weight = embedding_weight  # [vocab, hidden], shared
        self.decoder_bias = self.create_parameter([config.vocab_size], is_bias=True)

    def forward(self, hidden):
        # hidden: [n, hidden] -> [n, vocab]
        hidden = self.layer_norm(self.activation(self.transform(hidden)))
        return paddle.matmul(hidden, self.decoder_weight, transpose_y=True) + self.decoder_bias


class ErnieOnlyMLMHead(nn.Layer):
    def __init__(self, config: ErnieConfig, embedding_weight):
        super().__init__()
        self.predictions = ErnieLMPredictionHead(config, embedding_weight)

    def forward(self, hidden):
        return self.predictions(hidden)


class ErnieForMaskedLM(nn.Layer):
    """ERNIE with the masked-LM head, for pre-training an encoder on unlabeled text."""

    task_kind = "masked_lm"

    def __init__(self, config: ErnieConfig):
        super().__init__()
        self.config = config
        self.ernie = ErnieModel(config)
        self.cls = ErnieOnlyMLMHead(config, self.ernie.embeddings.word_embeddings.weight)

    def forward(self, input_ids, token_type_ids=None, masked_positions=None):
        # masked_positions: int64 [n] flat indices into [batch * seq]; logits: [n, vocab]
        sequence, _ = self.ernie(input_ids, token_type_ids)
        hidden = paddle.reshape(sequence, [-1, self.config.hidden_size])
        if masked_positions is not None:
            hidden = paddle.gather(hidden, masked_positions)
        return self.cls(hidden)


ARCHITECTURES: dict[str, Any] = {
    "ErnieForSequenceClassification": ErnieForSequenceClassification,
    "ErnieForMaskedLM": ErnieForMaskedLM,
    "ErnieForTokenClassification": ErnieForTokenClassification,
    "ErnieForQuestionAnswering": ErnieForQuestionAnswering,
}

