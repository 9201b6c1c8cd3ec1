"""Tasks: what a model is trained and judged on, and where its data comes from.

A task is named by ``--task``: a built-in corpus (``demo:sentiment``) or a file format for the
user's own data (``tnews``, ``afqmc``, ``text``, ``text-pair``) read from ``--data DIR``, which
holds ``train``, ``dev`` and optionally ``test`` files (``.json``/``.jsonl``/``.tsv``/``.txt``).
The held-out split is ``test`` when it carries labels, otherwise ``dev`` (CLUE's public test sets
are unlabeled). The spec is stored in each checkpoint so later stages can default to it.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ..errors import UserError
from ..progress import warn
from . import clue, corpora
from .ner import load_bio_dir
from .qa import load_qa_dir
from .types import Example, TaskData, TaskSpec, split_files


def held_out_overlap(task: TaskData) -> dict[str, int]:
    """How many dev/test examples have a text (or text pair) that also occurs in train."""
    train = {(e.text_a, e.text_b) for e in task.splits.get("train", [])}
    return {name: sum((e.text_a, e.text_b) in train for e in task.splits[name])
            for name in ("dev", "test") if task.splits.get(name)}


_warned_overlap: set[TaskSpec] = set()


def warn_held_out_overlap(task: TaskData) -> None:
    """Warn (once per task and process) when the user's dev/test texts also occur in train: the
    held-out metrics then measure memory, not generalisation."""
    overlap = held_out_overlap(task)
    if any(overlap.values()) and task.spec not in _warned_overlap:
        _warned_overlap.add(task.spec)
        counts = ", ".join(f"{n:,} of {len(task.splits[name]):,} {name}" for name, n in overlap.items() if n)
        warn(f"{task.spec.data}: {counts} texts also occur in the train file, so held-out metrics "
             f"overstate what the model does on new text; deduplicate the splits")


def load_task(spec: TaskSpec) -> TaskData:
    """Load the examples of ``spec`` (raises :class:`UserError` naming the problem). Built-in
    splits are disjoint by construction; the user's are checked (:func:`warn_held_out_overlap`)."""
    if spec.name in corpora.BUILTIN:
        if spec.data:
            raise UserError(f"task '{spec.name}' is built in; do not pass --data")
        return corpora.BUILTIN[spec.name](spec)
    task = _load_user_task(spec)
    warn_held_out_overlap(task)
    return task


def _load_user_task(spec: TaskSpec) -> TaskData:
    if spec.name == "lm":
        if not spec.data:
            raise UserError("task 'lm' reads your files: pass --data DIR (train.txt, dev.txt[, test.txt])")
        return load_text_lm_dir(spec)
    if spec.name == "cmrc2018":
        if not spec.data:
            raise UserError("task 'cmrc2018' reads your files: pass --data DIR (train.json, dev.json)")
        return load_qa_dir(spec)
    if spec.name == "msra-ner":
        if not spec.data:
            raise UserError("task 'msra-ner' reads your files: pass --data DIR")
        return load_bio_dir(spec)
    if spec.name in clue.FORMATS:
        if not spec.data:
            raise UserError(f"task '{spec.name}' reads your files: pass --data DIR "
                            f"(a folder with train/dev[/test] files)")
        return clue.load_dir(spec)
    known = ", ".join(sorted(corpora.BUILTIN) + sorted(clue.FORMATS) + ["cmrc2018", "lm", "msra-ner"])
    raise UserError(f"unknown task '{spec.name}' (known: {known})")


def resolve_task(name: str | None, data: str | None, recorded: dict[str, Any] | None) -> TaskSpec:
    """The task named by the options, else the one the checkpoint recorded."""
    if name:
        return TaskSpec(name=name, data=str(Path(data).expanduser().resolve()) if data else None)
    if data:
        raise UserError("--data needs --task to say the file format")
    if recorded:
        return TaskSpec.from_dict(recorded)
    raise UserError("pass --task (the checkpoint does not record one)")


def load_task_for_model(spec: TaskSpec | None, recorded: dict[str, Any] | None,
                        model_labels: Sequence[str]) -> TaskData:
    """The task to run a model on: ``spec`` if given, else the one its checkpoint recorded;
    refused if its labels are not the model's."""
    if spec is None and not recorded:
        raise UserError("pass --task (the checkpoint does not record one)")
    task = load_task(spec or TaskSpec.from_dict(recorded))
    task.check_labels(model_labels)
    return task


def load_text_lm_dir(spec: TaskSpec) -> TaskData:
    """``--task lm --data DIR``: one text per line in train.txt, dev.txt and optionally test.txt."""
    splits = {}
    for name, path in split_files(spec, (".txt",)).items():
        try:
            lines = [line.strip() for line in path.read_text(encoding="utf-8").splitlines()]
        except UnicodeDecodeError:
            raise UserError(f"{path}: not UTF-8 text") from None
        splits[name] = [Example(line, None, None) for line in lines if line]
        if not splits[name]:
            raise UserError(f"{path}: no texts")
    return TaskData(spec=spec, kind="causal_lm", labels=[], splits=splits,
                    held_out="test" if "test" in splits else "dev")


TASK_NAMES_HELP = ("demo:sentiment, demo:ner, demo:lm (built in), or your data with --data: tnews, afqmc, "
                   "text (text,label), text-pair (text_a,text_b,label), msra-ner (BIO files), "
                   "cmrc2018 (CMRC2018/SQuAD JSON, extractive QA), lm (text lines, causal LM: ERNIE 4.5)")
