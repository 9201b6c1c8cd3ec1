"""A checkpoint's tokenizer as GGUF ``tokenizer.ggml.*`` metadata, as llama.cpp's converter writes it.

ERNIE 4.5's release tokenizer (``tokenizer.model``, sentencepiece) is written as llama.cpp's
``convert_hf_to_gguf.py`` writes it for ``Ernie4_5ForCausalLM`` (``_set_vocab_sentencepiece``):
model ``llama`` (SPM), pre-tokenizer ``default``, every piece with its score and type (normal,
unknown, control, unused, byte), and the rows of the embedding beyond the tokenizer's pieces as
unused ``[PAD{i}]`` tokens (score -10000), so the vocabulary is as long as the embedding.

A WordPiece ``vocab.txt`` (what our own small ERNIE 4.5 models are trained with) is written as the
converter writes BERT's (model ``bert``, llama.cpp's WPM tokenizer): continuation pieces lose their
``##``, the others get the phantom space ``▁`` in front, the bracketed special tokens are control
tokens, and the normalizer's lowercasing is recorded.
"""

from __future__ import annotations

from typing import Any

SPACE = "\u2581"  # sentencepiece's (and WPM's phantom) word-start marker
PAD_SCORE = -10000.0
NORMAL, UNKNOWN, CONTROL, USER_DEFINED, UNUSED, BYTE = 1, 2, 3, 4, 5, 6  # gguf.TokenType
WORDPIECE_SPECIALS = ("[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]")
LOWERCASE_KEY = "tokenizer.ggml.normalizer.lowercase"  # llama.cpp reads it; gguf 0.19's writer has no method for it


def sentencepiece_vocab(model_proto: bytes) -> tuple[list[bytes], list[float], list[int]]:
    """(pieces, scores, types) of a serialized sentencepiece model, in id order."""
    import sentencepiece as spm

    sp = spm.SentencePieceProcessor()
    sp.LoadFromSerializedProto(model_proto)
    pieces, scores, types = [], [], []
    for i in range(sp.get_piece_size()):
        pieces.append(sp.id_to_piece(i).encode("utf-8"))
        scores.append(float(sp.get_score(i)))
        types.append(UNKNOWN if sp.is_unknown(i) else CONTROL if sp.is_control(i) else
                     UNUSED if sp.is_unused(i) else BYTE if sp.is_byte(i) else NORMAL)
    return pieces, scores, types


def wordpiece_vocab(vocab: list[str]) -> tuple[list[bytes], list[int]]:
    """(tokens with the phantom space, types) of a WordPiece vocabulary (convert_hf_to_gguf's BertModel)."""
    tokens, types = [], []
    for token in vocab:
        special = token in WORDPIECE_SPECIALS
        text = token if special else token[2:] if token.startswith("##") else SPACE + token
        tokens.append(text.encode("utf-8"))
        types.append(CONTROL if special else NORMAL)
    return tokens, types


def _pad(tokens: list[bytes], scores: list[float] | None, types: list[int], size: int) -> None:
    """Unused ``[PAD{i}]`` entries up to the embedding's ``size`` rows (in place)."""
    for i in range(len(tokens), size):
        tokens.append(f"[PAD{i}]".encode("utf-8"))
        types.append(UNUSED)
        if scores is not None:
            scores.append(PAD_SCORE)


def tokenizer_metadata(tokenizer, vocab_size: int) -> dict[str, Any]:
    """The ``tokenizer.ggml.*`` keys (gguf writer method name -> value; a dotted name: a bool key
    written as it is) of ``tokenizer``, its vocabulary padded to the model's ``vocab_size`` rows."""
    proto = getattr(tokenizer, "model_proto", None)
    if proto is not None:
        tokens, scores, types = sentencepiece_vocab(proto)
        keys: dict[str, Any] = {"add_tokenizer_model": "llama", "add_tokenizer_pre": "default"}
    else:
        tokens, types = wordpiece_vocab(list(tokenizer.vocab))
        scores = None
        keys = {"add_tokenizer_model": "bert", "add_tokenizer_pre": "default",
                LOWERCASE_KEY: bool(tokenizer.lowercase)}
    _pad(tokens, scores, types, vocab_size)
    keys.update(add_token_list=tokens, add_token_types=types)
    if scores is not None:
        keys["add_token_scores"] = scores
    keys.update(add_bos_token_id=tokenizer.cls_id, add_eos_token_id=tokenizer.sep_id,
                add_unk_token_id=tokenizer.unk_id, add_pad_token_id=tokenizer.pad_id,
                add_add_bos_token=True, add_add_eos_token=False)
    if proto is None:
        keys["add_sep_token_id"] = tokenizer.sep_id
        if tokenizer.mask_id is not None:
            keys["add_mask_token_id"] = tokenizer.mask_id
    return keys
