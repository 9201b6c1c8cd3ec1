"""Our metrics equal their official definitions: CMRC2018 EM/F1 against a port of the official
scorer on generated cases, entity F1 against seqeval, accuracy and macro-F1 against scikit-learn."""

from __future__ import annotations

import random
import warnings

import numpy as np
import pytest

from ernie_compress.metrics import classification_metrics, cmrc_exact_match, cmrc_f1, entity_f1
from tests import cmrc2018_official as official


@pytest.mark.parametrize("prediction, answers", [
    ("北京.", ["北京"]),            # '.' is not in the official list: EM 0 (we once said 1)
    ("…", [""]),                    # a lone '…' is not removed ...
    ("……", ["……"]),               # ... nor is '……' (the list entry is two characters long)
    ("abc", ["abc-def"]),           # '-' is dropped inside the run: one token 'abcdef'
    ("3.5亿", ["3.5亿元"]),           # a decimal number stays one token
    ("$5", ["$5美元"]),               # '$5' -> '$', '5'
    ("new york", ["newyork"]),      # EM keeps inner spaces
    ("《北京》", ["北京"]),
    ("2008年 beijing奥运会！", ["2008年北京奥运会"]),
    ("don't", ["do not"]),
    ("", ["北京"]),
    ("北京", ["——", "北京市"]),
    ("iPhone", ["IPHONE"]),         # EM and F1 lowercase both sides
    (" U.S. ", ["u.s."]),
])
def test_cmrc_named_cases_equal_the_official_scorer(prediction, answers):
    assert cmrc_exact_match(prediction, answers) == official.calc_em_score(answers, prediction)
    assert cmrc_f1(prediction, answers) == official.calc_f1_score(answers, prediction)


# What CMRC2018 answers are made of: Chinese characters, numbers (decimals, thousands, money,
# percentages, years), Latin words, spaces, punctuation from the official list and outside it.
_PIECES = (list("北京上海的年月日中国人民大学第一二三四五六七八九十百千万亿元") +
           ["2008", "3.14", "1,000", "$5", "5%", "12:30", "a.m.", "U.S.", "iPhone", "New York",
            "don't", "e-mail", "C++", "x86_64", "A/B", "1.5-2.0"] +
           list("-:_*^/\\~`+=，。：？！“”；’《》·、「」（）－～『』") +
           ["……", "…", ".", ",", "!", "?", "'", '"', "(", ")", "%", "&", "@", "#", "「", "—", "–", "．", "，"] +
           [" ", " ", "  ", "\t"])


def _generated_cases(count: int, seed: int = 0):
    """(prediction, answers) pairs like a reader's: shifted, cut and widened spans of a context
    around the gold answers, plus unrelated spans and punctuation-only strings."""
    rng = random.Random(seed)
    for _ in range(count):
        context = "".join(rng.choice(_PIECES) for _ in range(rng.randint(8, 30)))
        start = rng.randrange(len(context))
        end = min(len(context), start + rng.randint(1, 12))
        answers = [context[start:end]]
        for _ in range(rng.randint(0, 2)):  # CMRC2018 dev questions have up to three answers
            a = max(0, start + rng.randint(-2, 2))
            answers.append(context[a:max(a + 1, end + rng.randint(-2, 2))])
        kind = rng.random()
        if kind < 0.7:  # a shifted span
            a = min(len(context) - 1, max(0, start + rng.randint(-4, 4)))
            b = max(a, min(len(context), end + rng.randint(-4, 4)))
            prediction = context[a:b]
        elif kind < 0.85:  # the answer with its neighbourhood's punctuation or spacing
            cased = rng.choice([str, str.upper, str.swapcase])(answers[0])  # a reader may not keep the case
            before, after = rng.choice(["", " ", "《", "“", "."]), rng.choice(["", "。", "…", ".", " ", "）"])
            prediction = before + cased + after
        else:  # anything from the context
            a = rng.randrange(len(context))
            prediction = context[a:a + rng.randint(0, 10)]
        yield prediction, answers


def test_cmrc_scores_equal_the_official_scorer_on_generated_cases():
    differ_from_naive = 0
    for prediction, answers in _generated_cases(20000):
        em, f1 = official.calc_em_score(answers, prediction), official.calc_f1_score(answers, prediction)
        assert cmrc_exact_match(prediction, answers) == em, (prediction, answers)
        assert cmrc_f1(prediction, answers) == f1, (prediction, answers)
        naive = [p.lower().replace(" ", "") for p in [prediction] + answers]  # EM ignoring spaces
        differ_from_naive += (naive[0] in naive[1:]) != bool(em)
    assert differ_from_naive > 100  # the generator reaches the cases where details matter


def _random_bio(rng: np.random.Generator, length: int) -> list[str]:
    tags = ["O", "B-PER", "I-PER", "B-LOC", "I-LOC", "B-ORG", "I-ORG"]
    return [tags[i] for i in rng.choice(len(tags), size=length, p=[0.5, 0.1, 0.1, 0.1, 0.1, 0.05, 0.05])]


def test_entity_f1_equals_seqeval_default_mode():
    from seqeval.metrics import f1_score, precision_score, recall_score

    rng = np.random.default_rng(0)
    for _ in range(300):  # random sequences hold ill-formed ones too (I-X after O or after B-Y)
        lengths = rng.integers(1, 20, size=rng.integers(1, 6))
        gold = [_random_bio(rng, n) for n in lengths]
        pred = [[t if rng.random() < 0.7 else _random_bio(rng, 1)[0] for t in g] for g in gold]
        ours = entity_f1(pred, gold)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # seqeval warns when a score is 0/0
            assert ours["precision"] == pytest.approx(precision_score(gold, pred), abs=1e-12)
            assert ours["recall"] == pytest.approx(recall_score(gold, pred), abs=1e-12)
            assert ours["f1"] == pytest.approx(f1_score(gold, pred), abs=1e-12)


def test_a_tag_sequence_of_another_length_is_an_error_not_a_score():
    with pytest.raises(ValueError, match="sentence 1: 2 predicted tags for 3 gold tags"):
        entity_f1([["O"], ["B-PER", "O"]], [["O"], ["B-PER", "I-PER", "O"]])


def test_accuracy_and_macro_f1_equal_scikit_learn():
    from sklearn.metrics import accuracy_score, f1_score

    rng = np.random.default_rng(0)
    for _ in range(200):
        n, classes = int(rng.integers(1, 60)), int(rng.integers(2, 7))
        labels = rng.integers(0, classes, size=n)
        predictions = np.where(rng.random(n) < 0.6, labels, rng.integers(0, classes, size=n))
        ours = classification_metrics(predictions, labels)
        assert ours["accuracy"] == pytest.approx(accuracy_score(labels, predictions), abs=1e-12)
        assert ours["macro_f1"] == pytest.approx(f1_score(labels, predictions, average="macro", zero_division=0),
                                                 abs=1e-12)


def test_per_example_statistics_give_back_each_metric():
    """metric_from_stats over scored_split's rows equals the metric itself, for every kind."""
    from ernie_compress.metrics import (entity_spans, metric_from_stats, perplexity_metrics)

    rng = np.random.default_rng(1)
    labels, predictions = rng.integers(0, 3, 50), rng.integers(0, 3, 50)
    assert metric_from_stats("accuracy", (labels == predictions)[:, None]) == \
        classification_metrics(predictions, labels)["accuracy"]
    gold = [_random_bio(rng, int(n)) for n in rng.integers(1, 15, 40)]
    pred = [_random_bio(rng, len(g)) for g in gold]
    stats = np.array([[len(entity_spans(p) & entity_spans(g)), len(entity_spans(p)), len(entity_spans(g))]
                      for p, g in zip(pred, gold)])
    assert metric_from_stats("f1", stats) == pytest.approx(entity_f1(pred, gold)["f1"], abs=1e-12)
    qa = np.array([[1.0, 1.0], [0.0, 0.5], [0.0, 0.0]])
    assert metric_from_stats("f1", qa) == pytest.approx(0.5)
    lm = np.array([[2.0, 3], [4.0, 5]])
    assert metric_from_stats("perplexity", lm) == pytest.approx(perplexity_metrics(6.0, 8)["perplexity"])


def test_paired_bootstrap_interval():
    from ernie_compress.metrics import bootstrap_delta

    rng = np.random.default_rng(0)
    reference = rng.random((400, 1)) < 0.7
    better = reference.copy()
    better[:40] = True  # flips up to 40 examples to correct
    point, low, high = bootstrap_delta("accuracy", better, reference)
    assert point == pytest.approx((better.mean() - reference.mean()) * 100)
    assert 0 <= low <= point <= high  # only improvements: the interval cannot go below 0
    assert bootstrap_delta("accuracy", reference, reference) == (0.0, 0.0, 0.0)
    with pytest.raises(ValueError, match="same examples"):
        bootstrap_delta("accuracy", reference[:10], reference)


def test_paired_bootstrap_interval_is_the_95_percent_one():
    """The interval's level, not only its order: on continuous per-example scores (QA F1) whose
    paired differences have standard error se, the 95% percentile interval is about point +- 1.96 se
    (a 90% one would be +- 1.64 se). And it is paired: a constant gain on every example has no spread."""
    from ernie_compress.metrics import bootstrap_delta

    rng = np.random.default_rng(4)
    reference = np.stack([np.zeros(600), rng.random(600)], axis=1)  # [questions, (EM, F1)]
    stats = reference.copy()
    stats[:, 1] = np.clip(stats[:, 1] + rng.normal(0.02, 0.2, size=600), 0, 1)
    diff = (stats[:, 1] - reference[:, 1]) * 100  # points
    se = diff.std() / np.sqrt(len(diff))
    point, low, high = bootstrap_delta("f1", stats, reference, resamples=4000)
    assert point == pytest.approx(diff.mean())
    assert (point - low) / se == pytest.approx(1.96, rel=0.06) and (high - point) / se == pytest.approx(1.96, rel=0.06)
    shifted = reference.copy()
    shifted[:, 1] += 0.01
    assert bootstrap_delta("f1", shifted, reference) == pytest.approx((1.0, 1.0, 1.0))
