"""Readers for the user's own classification data in CLUE formats.

- ``tnews``: TNEWS-style JSON lines, ``{"sentence": ..., "label": ...}`` (CLUE, Xu et al. 2020).
- ``afqmc``: AFQMC-style JSON lines, ``{"sentence1": ..., "sentence2": ..., "label": ...}``.
- ``text`` / ``text-pair``: a plain form, either TSV (``text<TAB>label`` or
  ``text_a<TAB>text_b<TAB>label``) or JSON lines with ``text``/``text_a``/``text_b``/``label``.

A directory holds ``train.*``, ``dev.*`` and optionally ``test.*``. Every problem is reported with
the file and line number.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from ..errors import UserError
from .types import Example, TaskData, TaskSpec, split_files

EXTENSIONS = (".json", ".jsonl", ".tsv", ".txt")


@dataclass(frozen=True)
class Format:
    pair: bool
    text_keys: tuple[str, ...]  # candidates for text_a
    pair_keys: tuple[str, ...] = ()  # candidates for text_b
    label_keys: tuple[str, ...] = ("label",)


FORMATS: dict[str, Format] = {
    "tnews": Format(pair=False, text_keys=("sentence",)),
    "afqmc": Format(pair=True, text_keys=("sentence1",), pair_keys=("sentence2",)),
    "text": Format(pair=False, text_keys=("text", "text_a", "sentence")),
    "text-pair": Format(pair=True, text_keys=("text_a", "sentence1"), pair_keys=("text_b", "sentence2")),
}


def _first_key(obj: dict, keys: tuple[str, ...], where: str, what: str, required: bool = True):
    for key in keys:
        if key in obj:
            value = obj[key]
            if value is None or isinstance(value, (dict, list)):
                raise UserError(f"{where}: '{key}' must be a string, got {type(value).__name__}")
            return str(value)
    if required:
        raise UserError(f"{where}: no {what} field (expected one of {', '.join(keys)})")
    return None


def read_file(path: Path, fmt: Format) -> list[Example]:
    """Read one file of ``fmt``; labels may be absent (``None``) only in a whole file."""
    try:
        text = path.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError:
        raise UserError(f"{path}: not UTF-8 text") from None
    except OSError as exc:
        raise UserError(f"{path}: cannot read ({exc.strerror})") from None
    examples: list[Example] = []
    tsv = path.suffix in (".tsv", ".txt")
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        where = f"{path}:{number}"
        if tsv:
            cols = line.rstrip("\r").split("\t")
            want = 3 if fmt.pair else 2
            if len(cols) == want - 1:  # unlabeled
                cols.append(None)
            if len(cols) != want:
                raise UserError(f"{where}: expected {want} tab-separated columns "
                                f"({'text_a, text_b, ' if fmt.pair else 'text, '}label), got {len(cols)}")
            a, b, label = (cols[0], cols[1], cols[2]) if fmt.pair else (cols[0], None, cols[1])
        else:
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as exc:
                raise UserError(f"{where}: invalid JSON ({exc.msg})") from None
            if not isinstance(obj, dict):
                raise UserError(f"{where}: expected a JSON object per line")
            a = _first_key(obj, fmt.text_keys, where, "text")
            b = _first_key(obj, fmt.pair_keys, where, "second text") if fmt.pair else None
            label = _first_key(obj, fmt.label_keys, where, "label", required=False)
        if label is not None:
            label = label.strip()
        if not a.strip():
            raise UserError(f"{where}: empty text")
        examples.append(Example(a, b, label))
    labeled = {e.label is not None for e in examples}
    if len(labeled) > 1:
        raise UserError(f"{path}: some lines have a label and some do not")
    return examples


def load_dir(spec: TaskSpec) -> TaskData:
    fmt = FORMATS[spec.name]
    directory = Path(spec.data).expanduser()
    splits: dict[str, list[Example]] = {}
    for split, path in split_files(spec, EXTENSIONS).items():
        examples = read_file(path, fmt)
        if not examples:
            raise UserError(f"{path}: no examples (the file is empty)")
        if split != "test" and examples[0].label is None:
            raise UserError(f"{path}: the {split} split needs labels")
        splits[split] = examples
    labels = sorted({e.label for e in splits["train"]})
    if len(labels) < 2:
        raise UserError(f"{directory}: the train split has {len(labels)} label(s); "
                        f"classification needs at least 2")
    known = set(labels)
    for split, examples in splits.items():
        for i, e in enumerate(examples, start=1):
            if e.label is not None and e.label not in known:
                raise UserError(f"{directory}/{split}: example {i} has label '{e.label}', "
                                f"which the train split never uses")
    held_out = "test"
    notes = []
    if "test" not in splits or splits["test"][0].label is None:
        splits.pop("test", None)
        held_out = "dev"
        notes.append("no labeled test file: held-out metrics are on dev")
    return TaskData(spec=spec, kind="pair_classification" if fmt.pair else "classification",
                    labels=labels, splits=splits, held_out=held_out, notes=notes)
