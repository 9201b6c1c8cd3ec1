"""NER data: People's Daily to BIO (adjacent nr merged), MSRA BIO files, entity metrics."""

from __future__ import annotations

import pytest

from ernie_compress.data.ner import read_bio_file, tokens_to_bio
from ernie_compress.data.peoples_daily import parse_line
from ernie_compress.errors import UserError
from ernie_compress.metrics import entity_f1, entity_spans


def test_peoples_daily_line_to_bio_merges_person_names():
    tokens = parse_line("中共中央/nt  总书记/n  、/w  国家/n  主席/n  江/nr  泽民/nr  访问/v  北京/ns")
    chars, tags = tokens_to_bio(tokens)
    assert "".join(chars) == "中共中央总书记、国家主席江泽民访问北京"
    assert tags[:4] == ["B-ORG", "I-ORG", "I-ORG", "I-ORG"]
    assert tags[12:15] == ["B-PER", "I-PER", "I-PER"]  # 江 + 泽民 = one person
    assert tags[-2:] == ["B-LOC", "I-LOC"]
    assert entity_spans(tags) == {("ORG", 0, 4), ("PER", 12, 15), ("LOC", 17, 19)}


def test_two_separate_places_stay_separate():
    _, tags = tokens_to_bio([("北京", "ns"), ("上海", "ns")])
    assert entity_spans(tags) == {("LOC", 0, 2), ("LOC", 2, 4)}


def test_entity_spans_conlleval_rules():
    assert entity_spans(["O", "I-PER", "I-PER", "O"]) == {("PER", 1, 3)}
    assert entity_spans(["B-PER", "I-LOC"]) == {("PER", 0, 1), ("LOC", 1, 2)}
    assert entity_spans(["B-ORG", "B-ORG", "I-ORG"]) == {("ORG", 0, 1), ("ORG", 1, 3)}


def test_entity_f1_hand_computed():
    gold = [["B-PER", "I-PER", "O", "B-LOC"], ["B-ORG", "I-ORG", "O"]]
    pred = [["B-PER", "I-PER", "O", "O"], ["B-ORG", "O", "O"]]
    # gold: 3 entities; predicted: PER (correct) and ORG(0,1) (wrong span) -> tp 1
    m = entity_f1(pred, gold)
    assert m["precision"] == pytest.approx(1 / 2) and m["recall"] == pytest.approx(1 / 3)
    assert m["f1"] == pytest.approx(2 * (1 / 2) * (1 / 3) / (1 / 2 + 1 / 3))
    assert entity_f1(gold, gold)["f1"] == 1.0


def test_msra_bio_reader(tmp_path):
    path = tmp_path / "train.txt"
    path.write_text("中 B-LOC\n国 I-LOC\n人 O\n\n江\tB-PER\n", encoding="utf-8")
    assert read_bio_file(path) == [(["中", "国", "人"], ["B-LOC", "I-LOC", "O"]), (["江"], ["B-PER"])]


@pytest.mark.parametrize("text, message", [
    ("中 B-LOC extra\n", ":1: expected"),
    ("中 B-LOC\n国 X-LOC\n", ":2: tag 'X-LOC'"),
    ("\n\n", "no sentences"),
])
def test_msra_bio_reader_errors_name_the_line(tmp_path, text, message):
    path = tmp_path / "bad.txt"
    path.write_text(text, encoding="utf-8")
    with pytest.raises(UserError, match=message):
        read_bio_file(path)


def test_paragraphs_are_cut_into_sentences_outside_entities():
    from ernie_compress.data.corpora import split_sentences

    text = "李鹏说。好！新华社？"
    tags = ("B-PER", "I-PER", "O", "O", "O", "O", "B-ORG", "I-ORG", "I-ORG", "O")
    assert split_sentences(text, tags) == [("李鹏说。", tags[:4]), ("好！", tags[4:6]), ("新华社？", tags[6:])]
    inside = ("B-ORG", "I-ORG", "I-ORG", "O")  # a 。 inside an entity does not end the sentence
    assert split_sentences("甲。乙丙", inside) == [("甲。乙丙", inside)]


def test_bio_viterbi_never_emits_an_inside_tag_without_its_begin():
    import numpy as np

    from ernie_compress.data.ner import NER_LABELS, bio_viterbi

    labels = list(NER_LABELS)  # O, B-PER, I-PER, B-LOC, I-LOC, B-ORG, I-ORG
    idx = {l: i for i, l in enumerate(labels)}
    probs = np.full((3, len(labels)), 0.01)
    probs[0, idx["O"]], probs[0, idx["B-PER"]] = 0.6, 0.3  # argmax says O I-PER I-PER
    probs[1, idx["I-PER"]] = probs[2, idx["I-PER"]] = 0.9
    path = [labels[i] for i in bio_viterbi(np.log(probs), labels)]
    assert path == ["B-PER", "I-PER", "I-PER"]  # the best valid sequence, not O + fragments
    clear = np.log(np.eye(len(labels))[[idx["B-LOC"], idx["I-LOC"], idx["O"]]] * 0.9 + 0.01)
    assert [labels[i] for i in bio_viterbi(clear, labels)] == ["B-LOC", "I-LOC", "O"]
