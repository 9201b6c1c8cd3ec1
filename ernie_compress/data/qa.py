"""Extractive reading comprehension data in the CMRC2018 / SQuAD JSON format.

CMRC2018 (Cui et al. 2019, "A Span-Extraction Dataset for Chinese Machine Reading Comprehension")
uses SQuAD's layout (Rajpurkar et al. 2016)::

    {"data": [{"paragraphs": [{"context": "...",
                               "qas": [{"id": "...", "question": "...",
                                        "answers": [{"text": "...", "answer_start": 12}]}]}]}]}

``--task cmrc2018 --data DIR`` reads ``train.json``, ``dev.json`` and optionally ``test.json``.
Each question becomes one :class:`~.tasks.Example` (``text_a`` the question, ``text_b`` the
context) whose label is an :class:`Answers`. A problem is reported with the file, the line of the
JSON syntax error, or the question's place (``data[0].paragraphs[1].qas[2]``) and id.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from ..errors import UserError
from .types import Example, TaskData, TaskSpec, split_files


@dataclass(frozen=True)
class Answers:
    """The gold answers of one question: (character offset in the context, text) pairs."""

    qid: str
    spans: tuple[tuple[int, str], ...]


def _where(path: Path, place: str, qid: str | None = None) -> str:
    return f"{path}: {place}" + (f" (id {qid!r})" if qid else "")


def _answer(path: Path, place: str, qid: str, context: str, answer) -> tuple[int, str]:
    if not isinstance(answer, dict) or not isinstance(answer.get("text"), str):
        raise UserError(f"{_where(path, place, qid)}: an answer needs a 'text' string")
    text = answer["text"]
    start = answer.get("answer_start")
    if not isinstance(start, int) or isinstance(start, bool):
        raise UserError(f"{_where(path, place, qid)}: 'answer_start' must be an integer")
    if context[start:start + len(text)] != text:
        found = context.find(text)  # CMRC2018 has a few offsets off by some characters
        if found < 0:
            raise UserError(f"{_where(path, place, qid)}: answer {text!r} is not in the context")
        start = found
    return start, text


def read_squad_file(path: Path, need_answers: bool = True) -> list[Example]:
    """The questions of one CMRC2018/SQuAD-format file."""
    try:
        doc = json.loads(Path(path).read_text(encoding="utf-8-sig"))
    except json.JSONDecodeError as exc:
        raise UserError(f"{path}:{exc.lineno}: invalid JSON ({exc.msg})") from None
    except UnicodeDecodeError:
        raise UserError(f"{path}: not UTF-8 text") from None
    except OSError as exc:
        raise UserError(f"{path}: cannot read ({exc.strerror})") from None
    if not isinstance(doc, dict) or not isinstance(doc.get("data"), list):
        raise UserError(f"{path}: expected a JSON object with a 'data' list (CMRC2018/SQuAD format)")
    examples: list[Example] = []
    for a, article in enumerate(doc["data"]):
        paragraphs = article.get("paragraphs") if isinstance(article, dict) else None
        if not isinstance(paragraphs, list):
            raise UserError(f"{_where(path, f'data[{a}]')}: expected a 'paragraphs' list")
        for p, paragraph in enumerate(paragraphs):
            place = f"data[{a}].paragraphs[{p}]"
            context = paragraph.get("context") if isinstance(paragraph, dict) else None
            if not isinstance(context, str) or not context.strip():
                raise UserError(f"{_where(path, place)}: 'context' must be a non-empty string")
            qas = paragraph.get("qas")
            if not isinstance(qas, list):
                raise UserError(f"{_where(path, place)}: expected a 'qas' list")
            for q, qa in enumerate(qas):
                qplace = f"{place}.qas[{q}]"
                qid = str(qa.get("id", f"{a}-{p}-{q}")) if isinstance(qa, dict) else None
                question = qa.get("question") if isinstance(qa, dict) else None
                if not isinstance(question, str) or not question.strip():
                    raise UserError(f"{_where(path, qplace, qid)}: 'question' must be a non-empty string")
                answers = qa.get("answers", [])
                if not isinstance(answers, list):
                    raise UserError(f"{_where(path, qplace, qid)}: 'answers' must be a list")
                if need_answers and not answers:
                    raise UserError(f"{_where(path, qplace, qid)}: no answers (every question of a "
                                    f"train/dev file needs one)")
                spans = tuple(_answer(path, qplace, qid, context, ans) for ans in answers)
                examples.append(Example(question, context, Answers(qid, spans) if spans else None))
    if not examples:
        raise UserError(f"{path}: no questions")
    return examples


def load_qa_dir(spec: TaskSpec) -> TaskData:
    """``--task cmrc2018 --data DIR``: train.json, dev.json[, test.json]."""
    splits = {}
    for split, path in split_files(spec, (".json",)).items():
        examples = read_squad_file(path, need_answers=split != "test")
        if split == "test" and any(e.label is None for e in examples):
            continue  # an unlabeled test set (as CMRC2018 publishes it) cannot be scored
        splits[split] = examples
    held_out = "test" if "test" in splits else "dev"
    return TaskData(spec=spec, kind="question_answering", labels=[], splits=splits, held_out=held_out)
