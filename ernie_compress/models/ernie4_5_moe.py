"""ERNIE 4.5 mixture-of-experts decoder (ERNIE-4.5-21B-A3B, -300B-A47B) in Paddle, the Paddle release's names.

The dense ERNIE 4.5 decoder (``ernie4_5.py``: attention, RMSNorm, rotary embeddings, the dense
SwiGLU MLP, the causal-LM head and the KV-cache path) with, in the layers the config names
(``Ernie45MoeConfig.is_moe_layer``), a sparse mixture-of-experts MLP (Shazeer et al. 2017; the
routing of PaddleFormers 1.2.0 ``ernie4_5_moe`` and transformers' ``Ernie4_5_Moe``):

1. router logits ``x @ gate`` in FP32 (no bias; AMP off), ``p = softmax(logits)`` over the experts;
2. the ``moe_k`` experts with the largest ``p + e_score_correction_bias`` are chosen (the bias
   balances the load without an auxiliary loss, Wang et al. 2024; without ``moe_use_aux_free``:
   the largest ``p``);
3. their mixing weights are the *unbiased* ``p`` of the chosen experts, divided by their sum
   clamped to at least ``moe_norm_min``;
4. output = sum over chosen experts of weight * expert(x) (each expert a SwiGLU MLP of width
   ``moe_intermediate_size``), plus the shared experts' MLP (width ``moe_num_shared_experts *
   moe_intermediate_size``) on every token.

An expert runs only on the tokens routed to it (so hooks on its Linears see exactly those tokens).
Training adds ``router_aux_loss_coef`` x the load-balancing loss (:meth:`Ernie45MoeForCausalLM.
auxiliary_loss`; ``losses.hard_label_loss`` adds it): per MoE layer ``E * sum_e f_e * P_e`` over the
non-pad tokens, with ``f_e`` the share of tokens whose top-k of the *unbiased* ``p`` holds expert
``e`` (no gradient) and ``P_e`` the mean of ``p_e`` (Fedus et al. 2022, Switch Transformer, eq. 4-6),
summed over the MoE layers as PaddleFormers does (transformers pools the layers' tokens instead).
The correction bias is not trained (neither reference trains it by gradients; the release's update
rule lives in Baidu's trainer). PaddleFormers' router z-loss and orthogonal loss are not computed.

Parameters (Paddle layout: Linear weights [in, out]; ``h`` hidden, ``E`` experts, ``f``
``moe_intermediate_size``, ``S`` shared experts; biases ``[out]`` beside each Linear when
``use_bias``), as the ERNIE-4.5-300B-A47B-Paddle release names and shapes them:

====================================================================  ==============  =========
name                                                                  shape           dtype
====================================================================  ==============  =========
``ernie.embed_tokens.weight``                                         [vocab, h]
``ernie.layers.{i}.input_layernorm.weight``, ``post_attention_layernorm.weight``  [h]
``ernie.layers.{i}.self_attn.qkv_proj.weight`` (all q, all k, all v)  [h, (H+2K)*d]
``ernie.layers.{i}.self_attn.o_proj.weight``                          [H*d, h]
dense layer ``i``: ``ernie.layers.{i}.mlp.up_gate_proj.weight`` (gate | up)  [h, 2*ffn]
dense layer ``i``: ``ernie.layers.{i}.mlp.down_proj.weight``          [ffn, h]
MoE layer ``i``: ``ernie.layers.{i}.mlp.gate.weight`` (the router)    [h, E]          float32
``ernie.layers.{i}.mlp.experts.{e}.up_gate_proj.weight`` (gate | up)  [h, 2*f]
``ernie.layers.{i}.mlp.experts.{e}.down_proj.weight``                 [f, h]
``ernie.layers.{i}.mlp.shared_experts.up_gate_proj.weight`` (S > 0)   [h, 2*S*f]
``ernie.layers.{i}.mlp.shared_experts.down_proj.weight`` (S > 0)      [S*f, h]
``ernie.layers.{i}.mlp.moe_statics.e_score_correction_bias``          [1, E]          float32
``ernie.norm.weight``                                                 [h]
``lm_head.weight`` (untied models only)                               [h, vocab]
====================================================================  ==============  =========

PaddleFormers keeps the same names under ``model.`` in its own format; its default save and
transformers use the Hugging Face names (per-expert ``gate_proj``/``up_proj``/``down_proj`` [out,
in], ``mlp.gate.weight`` [E, h]). Multi-token-prediction weights (``mtp_*``) are not part of this
model: transformers drops them on load too.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from ..paddle_env import import_paddle
from .ernie4_5 import (CachedDecoder, Ernie45Attention, Ernie45DecoderLayer, Ernie45ForCausalLM, Ernie45MLP,
                       Ernie45Model, RMSNorm, _linear, layer_inputs)
from .ernie4_5_moe_config import Ernie45MoeConfig

paddle = import_paddle()
nn = paddle.nn
F = nn.functional

__all__ = ["ARCHITECTURES", "CachedDecoder", "Dispatch", "Ernie45MoeBlock", "Ernie45MoeForCausalLM", "build_layer",
           "layer_inputs", "load_balancing_loss"]


@dataclass(frozen=True)
class Dispatch:
    """Where one forward of an MoE block sent its tokens (kept while ``Ernie45MoeBlock.keep_dispatch``
    is set, for calibration: GPTQ's per-expert Hessians, expert importance). Tokens are rows of the
    block's flattened input [T, h] (row-major over [b, s])."""

    tokens: int  # T
    rows: list  # per expert: the token rows routed to it [n_e] int64 (in the order the expert sees them)
    weights: list  # per expert: their mixing weights [n_e] (the router's, after renormalisation)


class MoeStatics(nn.Layer):
    """Holds the router's ``e_score_correction_bias`` [1, experts] (FP32, not trained by gradients),
    under the name both references give it (``moe_statics``)."""

    def __init__(self, experts: int):
        super().__init__()
        self.e_score_correction_bias = self.create_parameter(
            [1, experts], dtype="float32", is_bias=True, default_initializer=nn.initializer.Constant(0.0))
        self.e_score_correction_bias.stop_gradient = True


def load_balancing_loss(probs, chosen, real):
    """``E * sum_e f_e * P_e`` over the tokens where ``real`` is 1: ``probs`` [T, E] the router's
    softmax, ``chosen`` [T, k] the experts counted for ``f`` (no gradient), ``real`` [T] float."""
    experts = probs.shape[-1]
    tokens = paddle.clip(paddle.sum(real), min=1.0)
    picked = paddle.sum(F.one_hot(chosen, experts), axis=1)  # [T, E]: 1 where a token picked the expert
    share = paddle.sum(picked * paddle.unsqueeze(real, -1), axis=0) / tokens  # [E], sums to k
    mean_prob = paddle.sum(probs * paddle.unsqueeze(real, -1), axis=0) / tokens  # [E]
    return experts * paddle.sum(share.detach() * mean_prob)


class Ernie45MoeBlock(nn.Layer):
    """The sparse MLP of an MoE layer (the module docstring gives the routing)."""

    def __init__(self, config: Ernie45MoeConfig):
        super().__init__()
        self.top_k, self.norm_min = config.moe_k, config.moe_norm_min
        self.gate = _linear(config, config.hidden_size, config.moe_num_experts, bias=False)
        expert = config.replace(intermediate_size=config.moe_intermediate_size)  # the dense MLP at expert width
        self.experts = nn.LayerList([Ernie45MLP(expert) for _ in range(config.moe_num_experts)])
        self.shared_experts = (Ernie45MLP(config.replace(intermediate_size=config.shared_expert_size))
                               if config.moe_num_shared_experts else None)
        self.moe_statics = MoeStatics(config.moe_num_experts) if config.moe_use_aux_free else None
        self.routing = None  # (probs, unbiased top-k) of the last training forward, for the auxiliary loss
        self.keep_dispatch = False  # set by calibration: record each forward's Dispatch in self.dispatch
        self.dispatch: Dispatch | None = None

    def route(self, tokens):
        """tokens [T, h] -> softmax probabilities [T, E] (FP32), chosen experts [T, k] and their mixing
        weights [T, k] (in the tokens' dtype)."""
        with paddle.amp.auto_cast(enable=False):
            probs = F.softmax(self.gate(paddle.cast(tokens, "float32")), axis=-1)  # [T, E]
            scores = probs if self.moe_statics is None else probs + self.moe_statics.e_score_correction_bias
            chosen = paddle.topk(scores, self.top_k, axis=-1)[1]  # [T, k]: chosen on the biased scores
            picked = paddle.take_along_axis(probs, chosen, axis=-1)  # [T, k]: weighted by the unbiased ones
            weights = picked / paddle.clip(paddle.sum(picked, axis=-1, keepdim=True), min=self.norm_min)
        return probs, chosen, paddle.cast(weights, tokens.dtype)

    def forward(self, x):
        # x: [b, s, h]
        tokens = paddle.reshape(x, [-1, x.shape[-1]])  # [T, h]
        probs, chosen, weights = self.route(tokens)
        self.routing = (probs, paddle.topk(probs, self.top_k, axis=-1)[1]) if self.training else None
        out = self.mix_experts(tokens, chosen, weights)  # [T, h]
        if self.shared_experts is not None:
            out = out + self.shared_experts(tokens)
        return paddle.reshape(out, paddle.shape(x))

    def mix_experts(self, tokens, chosen, weights):
        """sum_j weights[t, j] * experts[chosen[t, j]](tokens[t]) for every token t: each expert runs
        once, on the tokens routed to it."""
        k = self.top_k
        flat = paddle.reshape(chosen, [-1])  # [T*k]: the expert of each (token, slot)
        order = paddle.argsort(flat)  # slots grouped by expert
        token_of = order // k  # [T*k]: the token of each sorted slot
        counts = paddle.bincount(flat, minlength=len(self.experts)).tolist()
        inputs = paddle.gather(tokens, token_of)  # [T*k, h]
        slot_weights = paddle.gather(paddle.reshape(weights, [-1]), order)  # [T*k]
        if self.keep_dispatch:  # before the experts run: hooks on their Linears read it
            bounds = [sum(counts[:e]) for e in range(len(counts) + 1)]
            self.dispatch = Dispatch(tokens.shape[0], [token_of[a:b] for a, b in zip(bounds, bounds[1:])],
                                     [slot_weights[a:b] for a, b in zip(bounds, bounds[1:])])
        outputs, start, unused = [], 0, 0.0
        for expert, n in zip(self.experts, counts):
            if n:
                outputs.append(expert(inputs[start:start + n]))  # [n, h]
            elif self.training:  # no tokens: a zero term still gives its weights (zero) gradients
                unused = unused + 0.0 * paddle.sum(expert(tokens[:1]))
            start += n
        mixed = paddle.concat(outputs) * paddle.unsqueeze(slot_weights, -1) + unused  # [T*k, h]
        return paddle.index_add(paddle.zeros_like(tokens), token_of, 0, mixed)  # [T, h]


class Ernie45MoeDecoderLayer(Ernie45DecoderLayer):
    """The dense layer's attention, norms and residuals (its forward) with the MoE MLP where the
    config says so."""

    def __init__(self, config: Ernie45MoeConfig, index: int):
        nn.Layer.__init__(self)
        self.self_attn = Ernie45Attention(config)
        self.mlp = Ernie45MoeBlock(config) if config.is_moe_layer(index) else Ernie45MLP(config)
        self.input_layernorm = RMSNorm(config.hidden_size, config.rms_norm_eps)
        self.post_attention_layernorm = RMSNorm(config.hidden_size, config.rms_norm_eps)
        self.dropout = nn.Dropout(config.hidden_dropout_prob)


def build_layer(config: Ernie45MoeConfig, index: int):
    """Decoder layer ``index`` on its own (MoE or dense as the config says), for layer-by-layer
    calibration; run it as ``layer(x, *layer_inputs(config, input_ids))``."""
    return Ernie45MoeDecoderLayer(config, index)


class Ernie45MoeModel(Ernie45Model):
    """``Ernie45Model`` (embedding, layers, final norm; its forward and cached forward) over MoE layers."""

    def __init__(self, config: Ernie45MoeConfig):
        nn.Layer.__init__(self)
        self.config = config
        init = nn.initializer.Normal(0.0, config.initializer_range)
        self.embed_tokens = nn.Embedding(config.vocab_size, config.hidden_size,
                                         weight_attr=paddle.ParamAttr(initializer=init))
        self.layers = nn.LayerList([Ernie45MoeDecoderLayer(config, i) for i in range(config.num_hidden_layers)])
        self.norm = RMSNorm(config.hidden_size, config.rms_norm_eps)


class Ernie45MoeForCausalLM(Ernie45ForCausalLM):
    """Next-token logits [b, s, vocab] (the dense causal LM's forward, logits and cached forward),
    and the router's load-balancing loss of the last training forward."""

    def __init__(self, config: Ernie45MoeConfig):
        nn.Layer.__init__(self)
        self.config = config
        self.ernie = Ernie45MoeModel(config)
        if not config.tie_word_embeddings:
            self.lm_head = _linear(config, config.hidden_size, config.vocab_size, bias=False)
        self._real_tokens = None  # [b*s] float: 1 for non-pad tokens of the last training forward

    def forward(self, input_ids, token_type_ids=None, head_mask=None, record: dict | None = None):
        self._real_tokens = (paddle.cast(paddle.reshape(input_ids != self.config.pad_token_id, [-1]), "float32")
                             if self.training else None)  # [b*s]: only the auxiliary loss reads it
        return super().forward(input_ids, token_type_ids, head_mask, record)

    def moe_blocks(self) -> list[Ernie45MoeBlock]:
        return [layer.mlp for layer in self.ernie.layers if isinstance(layer.mlp, Ernie45MoeBlock)]

    def auxiliary_loss(self):
        """``router_aux_loss_coef`` x the load-balancing loss summed over the MoE layers, from the last
        forward in training mode; None outside training, without MoE layers or with a zero coefficient."""
        coef = self.config.router_aux_loss_coef
        routings = [block.routing for block in self.moe_blocks() if block.routing is not None]
        if not self.training or not coef or not routings or self._real_tokens is None:
            return None
        return coef * paddle.add_n([load_balancing_loss(probs, chosen, self._real_tokens)
                                    for probs, chosen in routings])


ARCHITECTURES: dict[str, Any] = {"Ernie4_5_MoeForCausalLM": Ernie45MoeForCausalLM}
