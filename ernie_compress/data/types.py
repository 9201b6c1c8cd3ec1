"""What a task is made of: examples, the task's name and data, its loaded splits, and the file
layout of ``--data DIR``. The format readers (``clue.py``, ``ner.py``, ``qa.py``, ``corpora.py``)
build these; ``tasks.py`` picks the reader for a task name."""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import UserError


@dataclass(frozen=True)
class Example:
    text_a: str
    text_b: str | None
    label: str | None


@dataclass(frozen=True)
class TaskSpec:
    """Which task and where its data lives (``data`` is None for built-in corpora)."""

    name: str
    data: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "data": self.data}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "TaskSpec":
        return cls(name=d["name"], data=d.get("data"))


@dataclass
class TaskData:
    """Loaded examples of one task, split into ``train``, ``dev`` and ``test``."""

    spec: TaskSpec
    kind: str  # "classification" (single sentence), "pair_classification", "token_classification",
    # "question_answering", "causal_lm"
    labels: list[str]
    splits: dict[str, list[Example]] = field(default_factory=dict)
    held_out: str = "test"  # the split metrics are reported on
    notes: list[str] = field(default_factory=list)

    def split(self, name: str) -> list[Example]:
        examples = self.splits.get(name)
        if not examples:
            raise UserError(f"task '{self.spec.name}' has no {name} examples")
        return examples

    def check_labels(self, model_labels: Sequence[str]) -> None:
        """Refuse to pair a model with a task whose labels it does not know."""
        unknown = sorted(set(self.labels) - set(model_labels))
        if unknown:
            raise UserError(
                f"task '{self.spec.name}' has labels the model does not know: {unknown[:5]} "
                f"(model labels: {list(model_labels)[:10]}); train a model on this task first")


def seeded_split(items: list, fractions: Sequence[float], seed: int) -> list[list]:
    """Shuffle ``items`` with ``seed`` and cut them into consecutive parts of the given sizes."""
    order = list(items)
    random.Random(seed).shuffle(order)
    parts, start = [], 0
    for i, frac in enumerate(fractions):
        end = len(order) if i == len(fractions) - 1 else start + round(frac * len(order))
        parts.append(order[start:end])
        start = end
    return parts


def split_files(spec: TaskSpec, extensions: Sequence[str]) -> dict[str, Path]:
    """The ``train``, ``dev`` and (optional) ``test`` files of ``--data DIR``, one per split with
    one of ``extensions``; a missing train/dev file or two candidates for a split are errors."""
    directory = Path(spec.data).expanduser()
    if not directory.exists():
        raise UserError(f"data directory {directory} does not exist")
    if not directory.is_dir():
        raise UserError(f"--data {directory} must be a directory with train/dev[/test] files")
    files = {}
    for split in ("train", "dev", "test"):
        found = [directory / f"{split}{ext}" for ext in extensions if (directory / f"{split}{ext}").is_file()]
        if len(found) > 1:
            raise UserError(f"{directory}: more than one {split} file ({', '.join(p.name for p in found)})")
        if found:
            files[split] = found[0]
        elif split != "test":
            raise UserError(f"{directory}: no {split} file (expected "
                            + " or ".join(f"{split}{ext}" for ext in extensions) + ")")
    return files
