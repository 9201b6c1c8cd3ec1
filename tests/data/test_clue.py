"""Readers for CLUE-format files: TNEWS, AFQMC, plain text (TSV/JSONL); errors name the line."""

from __future__ import annotations

import pytest

from ernie_compress.data.tasks import TaskSpec, load_task
from ernie_compress.errors import UserError
from tests.helpers import write_jsonl


def _dir(tmp_path, files: dict[str, str]):
    d = tmp_path / "data"
    d.mkdir(parents=True)
    for name, text in files.items():
        (d / name).write_text(text, encoding="utf-8")
    return d


def test_tnews_json_lines(tmp_path):
    d = tmp_path / "tnews"
    d.mkdir()
    rows = [{"label": "102", "label_desc": "news_entertainment", "sentence": "明星演唱会", "keywords": ""},
            {"label": "103", "label_desc": "news_sports", "sentence": "足球比赛", "keywords": ""}]
    write_jsonl(d / "train.json", rows * 2)
    write_jsonl(d / "dev.json", rows)
    write_jsonl(d / "test.json", [{"id": 0, "sentence": "新闻", "keywords": ""}])  # CLUE: unlabeled
    task = load_task(TaskSpec("tnews", str(d)))
    assert task.kind == "classification" and task.labels == ["102", "103"]
    assert task.held_out == "dev" and "test" not in task.splits
    assert task.split("train")[0].text_a == "明星演唱会"


def test_afqmc_pairs(tmp_path):
    d = tmp_path / "afqmc"
    d.mkdir()
    rows = [{"sentence1": "花呗怎么还款", "sentence2": "花呗如何还钱", "label": "1"},
            {"sentence1": "借呗额度", "sentence2": "花呗分期", "label": "0"}]
    for split in ("train", "dev", "test"):
        write_jsonl(d / f"{split}.json", rows)
    task = load_task(TaskSpec("afqmc", str(d)))
    assert task.kind == "pair_classification" and task.held_out == "test"
    assert task.split("test")[0].text_b == "花呗如何还钱"


def test_plain_tsv_and_jsonl(tmp_path):
    d = _dir(tmp_path, {"train.tsv": "好\tpos\n差\tneg\n", "dev.jsonl": '{"text": "好", "label": "pos"}\n'})
    task = load_task(TaskSpec("text", str(d)))
    assert [e.label for e in task.split("train")] == ["pos", "neg"]
    pair = _dir(tmp_path / "p", {"train.tsv": "a\tb\t1\nc\td\t0\n", "dev.tsv": "a\tb\t1\n"})
    assert load_task(TaskSpec("text-pair", str(pair))).split("dev")[0].text_b == "b"


@pytest.mark.parametrize("files, message", [
    ({"train.jsonl": '{"text": "好", "label": "pos"}\n{"text": \n', "dev.jsonl": ""}, r"train.jsonl:2: invalid JSON"),
    ({"train.tsv": "好\tpos\n差\tneg\textra\n", "dev.tsv": "好\tpos\n"}, r"train.tsv:2: expected 2 tab-separated"),
    ({"train.tsv": "好\tpos\n差\tneg\n", "dev.tsv": "好\tmaybe\n"}, "label 'maybe'"),
    ({"train.tsv": "", "dev.tsv": "好\tpos\n"}, "no examples"),
    ({"train.tsv": "好\tpos\n好\tpos\n", "dev.tsv": "好\tpos\n"}, "at least 2"),
    ({"train.tsv": "好\tpos\n差\tneg\n"}, "no dev file"),
    ({"train.jsonl": '{"content": "x", "label": "a"}\n', "dev.jsonl": ""}, "no text field"),
    ({"train.jsonl": '[1, 2]\n', "dev.jsonl": ""}, "JSON object"),
    ({"train.tsv": "  \tpos\n差\tneg\n", "dev.tsv": "好\tpos\n"}, "empty text"),
])
def test_bad_files_name_the_problem(tmp_path, files, message):
    d = _dir(tmp_path, files)
    with pytest.raises(UserError, match=message):
        load_task(TaskSpec("text", str(d)))


def test_missing_dir_and_unknown_task(tmp_path):
    with pytest.raises(UserError, match="does not exist"):
        load_task(TaskSpec("text", str(tmp_path / "nope")))
    with pytest.raises(UserError, match="unknown task 'cmrc'"):
        load_task(TaskSpec("cmrc", str(tmp_path)))
    with pytest.raises(UserError, match="pass --data"):
        load_task(TaskSpec("tnews"))
