"""Every checkpoint layout we write reads back as the model it was (default suite: no reference venv).

The interop tests prove each layout against the real PaddleNLP / PaddleFormers; these run everywhere.
A symmetric bug (the writer and the reader wrong the same way) cancels in a round trip, so each case
also checks names and shapes the layout's owner documents, which our reader plays no part in:
PaddleNLP keeps Paddle's ``[in, out]`` Linear weights under ``ernie.*``; the Hugging Face layout
(PaddleFormers' default save, transformers' ``Ernie4_5ForCausalLM``) renames ``ernie.`` to
``model.``, splits the fused q/k/v and gate/up projections and stores Linear weights ``[out, in]``.
"""

from __future__ import annotations

import numpy as np
import pytest
from safetensors.numpy import load_file

from ernie_compress.checkpoint import WEIGHTS_FILE, load_checkpoint, save_checkpoint
from ernie_compress.data.tokenizer import ErnieTokenizer
from ernie_compress.models import build_model, model_from_state, model_state
from ernie_compress.models.families import config_from_dict
from ernie_compress.models.presets import resolve_preset
from ernie_compress.paddle_env import import_paddle

VOCAB = ["[PAD]", "[CLS]", "[SEP]", "[MASK]", "[UNK]"] + [chr(0x4e00 + i) for i in range(45)]
IDS = np.array([[1, 9, 12, 30, 7, 2], [1, 5, 44, 2, 0, 0]], dtype="int64")


def _encoder():
    return config_from_dict(dict(resolve_preset("tiny"), vocab_size=len(VOCAB), id2label={0: "neg", 1: "pos"},
                                 hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0))


def _decoder(tied: bool):
    return config_from_dict(dict(resolve_preset("ernie45-tiny"), vocab_size=len(VOCAB), tie_word_embeddings=tied,
                                 hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0))


def _logits(model, encoder: bool):
    paddle = import_paddle()
    ids = paddle.to_tensor(IDS)
    model.eval()
    with paddle.no_grad():
        return (model(ids, paddle.zeros_like(ids)) if encoder else model(ids)).numpy()


def _documented_names(layout: str, config) -> dict[str, tuple[int, ...]]:
    """A few tensors the layout's owner names, with their shapes (not derived from our code)."""
    hidden = config.hidden_size
    if layout == "paddlenlp":
        return {"ernie.embeddings.word_embeddings.weight": (len(VOCAB), hidden),
                "ernie.encoder.layers.0.self_attn.q_proj.weight": (hidden, hidden),
                "ernie.encoder.layers.1.linear1.weight": (hidden, config.intermediate_size),
                "classifier.weight": (hidden, 2)}
    q = config.num_attention_heads * config.head_dim
    kv = config.num_key_value_heads * config.head_dim
    names = {"model.embed_tokens.weight": (len(VOCAB), hidden),
             "model.layers.0.self_attn.q_proj.weight": (q, hidden),
             "model.layers.1.self_attn.k_proj.weight": (kv, hidden),
             "model.layers.1.self_attn.o_proj.weight": (hidden, q),
             "model.layers.0.mlp.gate_proj.weight": (config.intermediate_size, hidden),
             "model.layers.0.mlp.down_proj.weight": (hidden, config.intermediate_size),
             "model.norm.weight": (hidden,)}
    if not config.tie_word_embeddings:
        names["lm_head.weight"] = (len(VOCAB), hidden)
    return names


CASES = [("encoder", "ours"), ("encoder", "paddlenlp"),
         ("decoder-tied", "ours"), ("decoder-tied", "paddleformers"), ("decoder-tied", "hf"),
         ("decoder-untied", "hf")]


@pytest.mark.parametrize("kind, layout", CASES)
def test_a_written_layout_reads_back_as_the_same_model(tmp_path, kind, layout):
    config = _encoder() if kind == "encoder" else _decoder(tied=kind == "decoder-tied")
    model = build_model(config)
    state = model_state(model)
    out = save_checkpoint(tmp_path / layout, config, state, ErnieTokenizer(VOCAB), {"name": "test"}, layout=layout)

    if layout != "ours":
        written = load_file(str(out / WEIGHTS_FILE))
        for name, shape in _documented_names(layout, config).items():
            assert name in written, f"{layout}: {name} missing (has {sorted(written)[:6]}…)"
            assert written[name].shape == shape, f"{layout}: {name} is {written[name].shape}, not {shape}"

    back = load_checkpoint(out)
    assert sorted(back.state) == sorted(state)
    for name, value in state.items():
        np.testing.assert_array_equal(back.state[name], value, err_msg=name)
    encoder = kind == "encoder"
    np.testing.assert_allclose(_logits(model_from_state(back.config, back.state, str(out)), encoder),
                               _logits(model, encoder), rtol=1e-5, atol=1e-5)
