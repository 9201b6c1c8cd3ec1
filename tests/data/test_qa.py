"""CMRC2018/SQuAD reader, question+context windows (striding), span decoding and CMRC2018 EM/F1."""

from __future__ import annotations

import json

import numpy as np
import pytest

from ernie_compress.data.qa import read_squad_file
from ernie_compress.data.spans import EncodedSpanSplit
from ernie_compress.data.tokenizer import ErnieTokenizer, build_vocab
from ernie_compress.errors import UserError
from ernie_compress.metrics import cmrc_exact_match, cmrc_f1, cmrc_segments, span_metrics
from tests.helpers import cmrc_document

CONTEXT = "张三住在北京。李四住在上海。王五住在广州。"


@pytest.fixture
def qa_file(tmp_path):
    doc = cmrc_document([(CONTEXT, [("q1", "李四住在哪里？", "上海"), ("q2", "谁住在广州？", "王五")])])
    path = tmp_path / "dev.json"
    path.write_text(json.dumps(doc, ensure_ascii=False), encoding="utf-8")
    return path


@pytest.fixture
def tokenizer():
    return ErnieTokenizer(build_vocab([CONTEXT, "谁哪里？"], min_frequency=1))


def test_reader_reads_questions_and_answers(qa_file):
    examples = read_squad_file(qa_file)
    assert [e.text_a for e in examples] == ["李四住在哪里？", "谁住在广州？"]
    assert examples[0].text_b == CONTEXT
    assert examples[0].label.qid == "q1" and examples[0].label.spans == ((11, "上海"),)


def test_reader_repairs_an_offset_that_is_off(tmp_path):
    doc = cmrc_document([(CONTEXT, [("q1", "李四住在哪里？", "上海")])])
    doc["data"][0]["paragraphs"][0]["qas"][0]["answers"][0]["answer_start"] = 3
    (tmp_path / "f.json").write_text(json.dumps(doc, ensure_ascii=False), encoding="utf-8")
    assert read_squad_file(tmp_path / "f.json")[0].label.spans == ((11, "上海"),)


@pytest.mark.parametrize("mutate, message", [
    (lambda d: d.pop("data"), "'data' list"),
    (lambda d: d["data"][0]["paragraphs"][0].pop("context"), "data[0].paragraphs[0]: 'context'"),
    (lambda d: d["data"][0]["paragraphs"][0]["qas"][0].pop("question"), "qas[0] (id 'q1'): 'question'"),
    (lambda d: d["data"][0]["paragraphs"][0]["qas"][0].update(answers=[]), "no answers"),
    (lambda d: d["data"][0]["paragraphs"][0]["qas"][0]["answers"][0].update(text="深圳"), "not in the context"),
    (lambda d: d["data"][0]["paragraphs"][0]["qas"][0]["answers"][0].update(answer_start="9"), "integer"),
])
def test_reader_names_the_malformed_question(tmp_path, mutate, message):
    doc = cmrc_document([(CONTEXT, [("q1", "李四住在哪里？", "上海")])])
    mutate(doc)
    path = tmp_path / "bad.json"
    path.write_text(json.dumps(doc, ensure_ascii=False), encoding="utf-8")
    with pytest.raises(UserError, match=message.replace("[", r"\[").replace("]", r"\]").replace("(", r"\(").replace(")", r"\)")):
        read_squad_file(path)


def test_reader_names_the_line_of_a_json_syntax_error(tmp_path):
    path = tmp_path / "bad.json"
    path.write_text('{"data": [\n  {"paragraphs": [}\n]}', encoding="utf-8")
    with pytest.raises(UserError, match=r"bad.json:2: invalid JSON"):
        read_squad_file(path)


def test_windows_label_the_answer_only_where_it_fits(qa_file, tokenizer):
    examples = read_squad_file(qa_file)
    # 7 question tokens + 3 specials leave a window of 6 context tokens, stride 4
    split = EncodedSpanSplit(examples[:1], tokenizer, max_length=16, doc_stride=4)
    n_ctx = len(CONTEXT)
    assert len(split) == 1 + -(-(n_ctx - 6) // 4)  # windows start at 0, 4, 8, ... until the end is covered
    assert (split.example_of_row == 0).all()
    for row in range(len(split)):
        ids = split.input_ids[row]
        assert ids[0] == tokenizer.cls_id and split.token_type_ids[row, 1 + 7 + 1] == 1
        start, end = split.labels[row]
        if (start, end) != (0, 0):  # the answer tokens really are 上海
            a, b = split.offsets[row, start, 0], split.offsets[row, end, 1]
            assert CONTEXT[a:b] == "上海"
    answered = [tuple(r) for r in split.labels if tuple(r) != (0, 0)]
    assert answered and len(answered) < len(split)  # some windows hold the answer, some do not


def test_span_decoding_picks_the_best_valid_span_across_windows(qa_file, tokenizer):
    examples = read_squad_file(qa_file)
    split = EncodedSpanSplit(examples[:1], tokenizer, max_length=16, doc_stride=4)
    logits = [np.zeros((split.input_ids.shape[1], 2), dtype=np.float32) for _ in range(len(split))]
    row = int(np.flatnonzero(split.labels[:, 0] > 0)[0])
    start, end = split.labels[row]
    logits[row][start, 0] = logits[row][end, 1] = 5.0
    logits[row][0] = 50.0  # [CLS] is never an answer
    logits[0][end, 0] = 9.0  # an end before the start in another window is not a span
    assert split.answers_from_logits(logits) == ["上海"]


def test_cmrc_segmentation_and_scores_match_hand_computed_values():
    assert cmrc_segments("在2008年 Beijing奥运会！") == ["在", "2008", "年", "beijing", "奥", "运", "会"]
    assert cmrc_exact_match("《北京》", ["北京"]) == 1.0
    assert cmrc_exact_match("北京市", ["北京"]) == 0.0
    # prediction 北京市 vs answer 北京: common 2 tokens, P = 2/3, R = 1 -> F1 = 0.8
    assert cmrc_f1("北京市", ["北京"]) == pytest.approx(0.8)
    # the best answer counts: 上海 vs [北京, 上海浦东] -> P = 1, R = 2/4 -> 2/3
    assert cmrc_f1("上海", ["北京", "上海浦东"]) == pytest.approx(2 / 3)
    assert cmrc_f1("", ["北京"]) == 0.0
    # longest common *substring*: 北x京 vs 北京 shares only 1 contiguous token -> P = 1/3, R = 1/2
    assert cmrc_f1("北x京", ["北京"]) == pytest.approx(2 * (1 / 3) * (1 / 2) / (1 / 3 + 1 / 2))
    scores = span_metrics(["北京", "北京市"], [["北京"], ["北京"]])
    assert scores == {"exact_match": 0.5, "f1": pytest.approx(0.9), "questions": 2}
