"""ERNIE 4.5's tokenizer: the release's sentencepiece ``tokenizer.model``, through ``sentencepiece``.

A text is encoded as ``<s> pieces </s>`` (a pair: ``<s> a </s> b </s>``), right-padded with the
pad token. The release's embedding matrix is larger than its piece count (103424 rows), so the
model's ``vocab_size`` may exceed the tokenizer's. The same interface as
:class:`~.tokenizer.ErnieTokenizer` for what decoders need (``encode_batch``); tagging and span
tasks use the character tokenizer of ERNIE 3.0 encoders.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from ..errors import UserError
from .tokenizer import Encoded, ErnieTokenizer, VOCAB_FILE

MODEL_FILE = "tokenizer.model"
CONFIG_FILE = "tokenizer_config.json"
PAD_PIECES = ("<pad>", "<|PAD|>", "[PAD]")


class SentencePieceTokenizer:
    def __init__(self, model_proto: bytes):
        import sentencepiece as spm

        self._proto = model_proto
        self._sp = spm.SentencePieceProcessor()
        try:
            self._sp.LoadFromSerializedProto(model_proto)
        except Exception as exc:  # sentencepiece raises RuntimeError/OSError variants
            raise UserError(f"{MODEL_FILE} is not a sentencepiece model ({exc})") from None
        self.vocab = [self._sp.id_to_piece(i) for i in range(self._sp.get_piece_size())]
        self.unk_id = self._sp.unk_id()
        self.cls_id = self._sp.bos_id() if self._sp.bos_id() >= 0 else self.unk_id  # <s> opens a text
        self.sep_id = self._sp.eos_id() if self._sp.eos_id() >= 0 else self.unk_id  # </s> closes it
        pad = self._sp.pad_id()
        if pad < 0:
            pad = next((self._sp.piece_to_id(p) for p in PAD_PIECES if self._sp.piece_to_id(p) != self.unk_id),
                       self.unk_id)
        self.pad_id = pad
        self.mask_id = None

    @property
    def vocab_size(self) -> int:
        return len(self.vocab)

    @property
    def model_proto(self) -> bytes:
        """The serialized sentencepiece model (``tokenizer.model``'s bytes)."""
        return self._proto

    @classmethod
    def from_dir(cls, directory: Path) -> "SentencePieceTokenizer":
        path = Path(directory) / MODEL_FILE
        try:
            return cls(path.read_bytes())
        except OSError as exc:
            raise UserError(f"{path}: cannot read ({exc.strerror})") from None

    def save(self, directory: Path) -> None:
        directory = Path(directory)
        (directory / MODEL_FILE).write_bytes(self._proto)
        config = {"tokenizer_class": "Ernie4_5Tokenizer", "bos_token": self.vocab[self.cls_id],
                  "eos_token": self.vocab[self.sep_id], "unk_token": self.vocab[self.unk_id],
                  "pad_token": self.vocab[self.pad_id]}
        (directory / CONFIG_FILE).write_text(json.dumps(config, indent=2, ensure_ascii=False) + "\n")

    def tokenize(self, text: str) -> list[str]:
        return self._sp.encode(text, out_type=str)

    def decode(self, ids: Sequence[int]) -> str:
        """Token ids as text (sentencepiece's own detokenization). An id past the tokenizer's pieces (a model
        whose embedding has more rows than its tokenizer has pieces, as padded vocabularies do, can pick one)
        reads as the unknown piece, instead of sentencepiece's out-of-range error."""
        pieces = len(self.vocab)
        return self._sp.decode([i if 0 <= i < pieces else self.unk_id for i in map(int, ids)])

    def encode_batch(self, texts: Sequence[str], pairs: Sequence[str] | None = None,
                     max_length: int = 128, pad_to: int | None = None) -> Encoded:
        """``<s> text </s>`` (or ``<s> a </s> b </s>``) truncated to ``max_length``, padded."""
        rows = []
        firsts = self._sp.encode(list(texts))
        seconds = self._sp.encode(list(pairs)) if pairs is not None else [None] * len(firsts)
        for a, b in zip(firsts, seconds):
            if b is None:
                rows.append([self.cls_id, *a[:max(0, max_length - 2)], self.sep_id])
                continue
            budget = max(0, max_length - 3)
            while len(a) + len(b) > budget:  # longest first, as the WordPiece tokenizer does
                if len(a) >= len(b):
                    a = a[:-1]
                else:
                    b = b[:-1]
            rows.append([self.cls_id, *a, self.sep_id, *b, self.sep_id])
        seq = pad_to or max(len(r) for r in rows)
        input_ids = np.full((len(rows), seq), self.pad_id, dtype=np.int64)  # [batch, seq]
        for i, row in enumerate(rows):
            input_ids[i, :min(len(row), seq)] = row[:seq]
        return Encoded(input_ids, np.zeros_like(input_ids))

    def encode_characters(self, sentences, max_length: int = 128):
        raise UserError("tagging (NER) needs the character tokenizer of ERNIE 3.0 encoders, not sentencepiece")

    def encode_with_offsets(self, texts):
        raise UserError("extractive QA needs the character tokenizer of ERNIE 3.0 encoders, not sentencepiece")


def load_tokenizer(directory: Path):
    """The tokenizer a checkpoint or export directory holds: ``vocab.txt`` (WordPiece) or ERNIE
    4.5's sentencepiece ``tokenizer.model``."""
    directory = Path(directory)
    if not (directory / VOCAB_FILE).is_file() and (directory / MODEL_FILE).is_file():
        return SentencePieceTokenizer.from_dir(directory)
    return ErnieTokenizer.from_dir(directory)
