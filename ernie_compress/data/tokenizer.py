"""BERT-style WordPiece tokenization through the ``tokenizers`` library.

ERNIE 3.0 uses BERT's tokenizer (Devlin et al. 2019): clean + lowercase, split Chinese characters
and punctuation apart, then greedy longest-match WordPiece against ``vocab.txt`` (one token per
line, id = line number). When a model is trained from scratch with no vocabulary, one is built
from the training texts: the special tokens, every character seen at least ``min_frequency``
times, and the ``##`` continuation form of the non-CJK characters so that Latin words and numbers
split into known pieces instead of ``[UNK]``.
"""

from __future__ import annotations

import json
import re
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..errors import UserError

CJK_GAP = re.compile(r"(?<=[\u3000-\u9fff\uff00-\uffef]) (?=[\u3000-\u9fff\uff00-\uffef])")

SPECIAL_TOKENS = ("[PAD]", "[CLS]", "[SEP]", "[MASK]", "[UNK]")
VOCAB_FILE = "vocab.txt"
TOKENIZER_CONFIG_FILE = "tokenizer_config.json"


def _normalizer_and_pretokenizer(lowercase: bool):
    from tokenizers import normalizers, pre_tokenizers

    normalizer = normalizers.BertNormalizer(clean_text=True, handle_chinese_chars=True,
                                            strip_accents=None, lowercase=lowercase)
    return normalizer, pre_tokenizers.BertPreTokenizer()


def build_vocab(texts: Iterable[str], min_frequency: int = 2, lowercase: bool = True) -> list[str]:
    """A character-level WordPiece vocabulary (specials first) from raw training texts."""
    normalizer, pretokenizer = _normalizer_and_pretokenizer(lowercase)
    counts: Counter[str] = Counter()
    for text in texts:
        for word, _ in pretokenizer.pre_tokenize_str(normalizer.normalize_str(text)):
            counts[word[0]] += 1
            counts.update("##" + ch for ch in word[1:])
    pieces = sorted((t for t, n in counts.items() if n >= min_frequency and t not in SPECIAL_TOKENS),
                    key=lambda t: (-counts[t], t))
    if not pieces:
        raise UserError("cannot build a vocabulary: the training texts are empty")
    return list(SPECIAL_TOKENS) + pieces


@dataclass
class Encoded:
    """A padded batch: ``input_ids`` and ``token_type_ids`` are int64 [batch, seq]."""

    input_ids: np.ndarray
    token_type_ids: np.ndarray


class ErnieTokenizer:
    """WordPiece tokenizer for ERNIE, loaded from (and saved as) ``vocab.txt``."""

    def __init__(self, vocab: Sequence[str], lowercase: bool = True):
        from tokenizers import Tokenizer, decoders, models, processors

        if len(set(vocab)) != len(vocab):
            raise UserError("vocab.txt has duplicate tokens")
        for token in ("[PAD]", "[CLS]", "[SEP]", "[UNK]"):
            if token not in vocab:
                raise UserError(f"vocab.txt lacks the special token {token}")
        self.vocab = list(vocab)
        self.lowercase = lowercase
        ids = {t: i for i, t in enumerate(self.vocab)}
        self.pad_id, self.cls_id, self.sep_id, self.unk_id = (
            ids["[PAD]"], ids["[CLS]"], ids["[SEP]"], ids["[UNK]"])
        self.mask_id = ids.get("[MASK]")
        tok = Tokenizer(models.WordPiece(ids, unk_token="[UNK]", max_input_chars_per_word=100))
        tok.normalizer, tok.pre_tokenizer = _normalizer_and_pretokenizer(lowercase)
        tok.post_processor = processors.TemplateProcessing(
            single="[CLS] $A [SEP]", pair="[CLS] $A [SEP] $B:1 [SEP]:1",
            special_tokens=[("[CLS]", self.cls_id), ("[SEP]", self.sep_id)])
        tok.decoder = decoders.WordPiece()
        self._tok = tok

    @property
    def vocab_size(self) -> int:
        return len(self.vocab)

    # --- files -------------------------------------------------------------------------------
    @classmethod
    def from_dir(cls, directory: Path) -> "ErnieTokenizer":
        vocab_path = Path(directory) / VOCAB_FILE
        if not vocab_path.is_file():
            raise UserError(f"{directory}: no {VOCAB_FILE} (a checkpoint needs its vocabulary)")
        try:
            lines = vocab_path.read_text(encoding="utf-8").split("\n")
        except UnicodeDecodeError:
            raise UserError(f"{vocab_path}: not UTF-8 text") from None
        vocab = [line.rstrip("\r") for line in lines]
        while vocab and vocab[-1] == "":
            vocab.pop()
        lowercase = True
        config_path = Path(directory) / TOKENIZER_CONFIG_FILE
        if config_path.is_file():
            try:
                lowercase = bool(json.loads(config_path.read_text()).get("do_lower_case", True))
            except json.JSONDecodeError as exc:
                raise UserError(f"{config_path}: invalid JSON ({exc})") from None
        return cls(vocab, lowercase=lowercase)

    def save(self, directory: Path) -> None:
        directory = Path(directory)
        (directory / VOCAB_FILE).write_text("\n".join(self.vocab) + "\n", encoding="utf-8")
        config = {"tokenizer_class": "ErnieTokenizer", "do_lower_case": self.lowercase,
                  "unk_token": "[UNK]", "pad_token": "[PAD]", "cls_token": "[CLS]",
                  "sep_token": "[SEP]", "mask_token": "[MASK]"}
        (directory / TOKENIZER_CONFIG_FILE).write_text(json.dumps(config, indent=2) + "\n")

    # --- encoding ----------------------------------------------------------------------------
    def decode(self, ids: Sequence[int]) -> str:
        """Token ids as text: WordPiece continuations (``##``) joined to their word, no space
        between two CJK characters (the vocabulary splits Chinese text into characters)."""
        text = " ".join(self.vocab[i] for i in ids).replace(" ##", "")
        return CJK_GAP.sub("", text)

    def tokenize(self, text: str) -> list[str]:
        return self._tok.encode(text, add_special_tokens=False).tokens

    def encode_batch(self, texts: Sequence[str], pairs: Sequence[str] | None = None,
                     max_length: int = 128, pad_to: int | None = None) -> Encoded:
        """Encode (pairs of) texts; truncate to ``max_length`` and pad to the longest (or ``pad_to``)."""
        inputs = list(texts) if pairs is None else list(zip(texts, pairs))
        self._tok.enable_truncation(max_length=max_length, strategy="longest_first")
        encodings = self._tok.encode_batch(inputs)
        seq = pad_to or max(len(e.ids) for e in encodings)
        input_ids = np.full((len(encodings), seq), self.pad_id, dtype=np.int64)
        token_type_ids = np.zeros((len(encodings), seq), dtype=np.int64)
        for row, enc in enumerate(encodings):
            n = min(len(enc.ids), seq)
            input_ids[row, :n] = enc.ids[:n]
            token_type_ids[row, :n] = enc.type_ids[:n]
        return Encoded(input_ids, token_type_ids)

    def encode_with_offsets(self, texts: Sequence[str]) -> list[tuple[list[int], list[tuple[int, int]]]]:
        """Token ids without specials and, per token, its (start, end) character span in the text."""
        self._tok.no_truncation()
        return [(e.ids, e.offsets) for e in self._tok.encode_batch(list(texts), add_special_tokens=False)]

    def encode_characters(self, sentences: Sequence[Sequence[str]],
                          max_length: int = 128) -> tuple[Encoded, list[list[int | None]]]:
        """Encode character lists (one pre-token per character, for tagging); also return, per
        row, which character each token came from (None for [CLS]/[SEP]/padding)."""
        self._tok.enable_truncation(max_length=max_length, strategy="longest_first")
        encodings = self._tok.encode_batch([list(s) for s in sentences], is_pretokenized=True)
        seq = max(len(e.ids) for e in encodings)
        input_ids = np.full((len(encodings), seq), self.pad_id, dtype=np.int64)
        token_type_ids = np.zeros((len(encodings), seq), dtype=np.int64)
        word_ids = []
        for row, enc in enumerate(encodings):
            input_ids[row, :len(enc.ids)] = enc.ids
            word_ids.append(list(enc.word_ids))
        return Encoded(input_ids, token_type_ids), word_ids
