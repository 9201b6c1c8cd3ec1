"""WordPiece tokenizer: vocabulary building, encoding, pairs, truncation, files."""

from __future__ import annotations

import pytest

from ernie_compress.data.tokenizer import SPECIAL_TOKENS, ErnieTokenizer, build_vocab
from ernie_compress.errors import UserError


def test_build_vocab_is_character_level_with_specials_first():
    vocab = build_vocab(["好书好书", "abc 好"], min_frequency=1)
    assert vocab[:5] == list(SPECIAL_TOKENS)
    assert vocab[5] == "好"  # most frequent first
    assert {"书", "a", "##b", "##c"} <= set(vocab)


def test_min_frequency_drops_rare_characters():
    vocab = build_vocab(["好好坏"], min_frequency=2)
    assert "好" in vocab and "坏" not in vocab


def test_encode_single_and_pair_with_padding_and_truncation():
    tok = ErnieTokenizer(build_vocab(["很好的书", "不好"], min_frequency=1))
    enc = tok.encode_batch(["很好", "不好的书很好"], max_length=6)
    ids = enc.input_ids
    assert ids.shape == (2, 6)
    assert ids[0, 0] == tok.cls_id and ids[0, 3] == tok.sep_id and ids[0, 4] == tok.pad_id
    assert ids[1, -1] == tok.sep_id  # truncated, still closed by [SEP]
    pair = tok.encode_batch(["很好"], ["不好"], max_length=16)
    assert pair.token_type_ids.tolist() == [[0, 0, 0, 0, 1, 1, 1]]
    assert tok.tokenize("很好X") == ["很", "好", "[UNK]"]


def test_save_and_load_round_trip(tmp_path):
    tok = ErnieTokenizer(build_vocab(["很好的书"], min_frequency=1))
    tok.save(tmp_path)
    again = ErnieTokenizer.from_dir(tmp_path)
    assert again.vocab == tok.vocab
    assert again.encode_batch(["很好"]).input_ids.tolist() == tok.encode_batch(["很好"]).input_ids.tolist()


def test_lowercase_and_latin_pieces():
    tok = ErnieTokenizer(build_vocab(["good 好"], min_frequency=1))
    assert tok.tokenize("GOOD好") == ["g", "##o", "##o", "##d", "好"]


@pytest.mark.parametrize("vocab, message", [
    (["[PAD]", "[CLS]", "[SEP]"], "lacks the special token"),
    (["[PAD]", "[CLS]", "[SEP]", "[UNK]", "a", "a"], "duplicate"),
])
def test_bad_vocab_is_refused(vocab, message):
    with pytest.raises(UserError, match=message):
        ErnieTokenizer(vocab)


def test_missing_vocab_file(tmp_path):
    with pytest.raises(UserError, match="no vocab.txt"):
        ErnieTokenizer.from_dir(tmp_path)
