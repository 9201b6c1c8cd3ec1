"""ERNIE 4.5's sentencepiece tokenizer: special ids, pair truncation, padding, save/load, errors."""

from __future__ import annotations

import pytest

from ernie_compress.data.sp_tokenizer import SentencePieceTokenizer, load_tokenizer
from ernie_compress.data.tokenizer import ErnieTokenizer
from ernie_compress.errors import UserError
from tests.helpers import NEGATIVE, POSITIVE
from tests.test_ernie45_path import _sentencepiece_model


@pytest.fixture(scope="module")
def sp():
    return SentencePieceTokenizer(_sentencepiece_model(POSITIVE + NEGATIVE))


def test_texts_are_framed_truncated_and_padded(sp):
    enc = sp.encode_batch(["质量不错，物流很快", "好"], max_length=6)
    ids = enc.input_ids
    assert ids.shape[1] == 6 and ids[0, 0] == sp.cls_id and ids[0, -1] == sp.sep_id
    assert ids[1, 0] == sp.cls_id and sp.sep_id in ids[1] and ids[1, -1] == sp.pad_id
    pair = sp.encode_batch(["质量不错"], ["物流很快，非常满意"], max_length=9).input_ids[0]
    assert len(pair) == 9 and list(pair).count(sp.sep_id) == 2  # both texts kept, longest cut first
    assert (enc.token_type_ids == 0).all()


def test_save_and_load_round_trip(sp, tmp_path):
    sp.save(tmp_path)
    again = load_tokenizer(tmp_path)
    assert isinstance(again, SentencePieceTokenizer) and again.vocab == sp.vocab
    (tmp_path / "wp").mkdir()
    ErnieTokenizer(["[PAD]", "[CLS]", "[SEP]", "[UNK]", "好"]).save(tmp_path / "wp")
    assert isinstance(load_tokenizer(tmp_path / "wp"), ErnieTokenizer)


def test_a_corrupt_model_and_unsupported_uses_are_clear_errors(sp):
    with pytest.raises(UserError, match="not a sentencepiece model"):
        SentencePieceTokenizer(b"garbage")
    with pytest.raises(UserError, match="NER"):
        sp.encode_characters([["好"]])


def test_ids_past_the_pieces_decode_as_the_unknown_piece(sp):
    """A model's embedding may have more rows than its tokenizer has pieces (a padded vocabulary); a random or
    barely trained one picks them: the text shows the unknown piece instead of sentencepiece's range error."""
    ids = sp.encode_batch(["质量不错"]).input_ids[0].tolist()
    past = len(sp.vocab) + 5
    assert sp.decode([*ids, past]) == sp.decode([*ids, sp.unk_id])
