"""The report's non-ERNIE context rows: majority class and naive Bayes on character n-grams."""

from __future__ import annotations

import math

import pytest

from ernie_compress.baselines import NaiveBayes, char_ngrams, classification_baselines
from ernie_compress.data.tasks import Example


def test_char_ngrams():
    assert char_ngrams("好用") == {"好", "用", "好用"}
    assert char_ngrams("abcd", (3,)) == {"abc", "bcd"}


def test_naive_bayes_scores_by_hand():
    bayes = NaiveBayes([("好", "pos"), ("好", "pos"), ("差", "neg")])
    # vocab {好, 差}; P(好|pos) = (2 + .5) / (2 + 1), P(好|neg) = (0 + .5) / (1 + 1); the prior is
    # the label's count (dividing by the total would shift every label alike)
    assert bayes._log_score("pos", {"好"}) == pytest.approx(math.log(2) + math.log(2.5 / 3))
    assert bayes._log_score("neg", {"好"}) == pytest.approx(math.log(1) + math.log(0.5 / 2))
    assert bayes.predict("好吗") == "pos" and bayes.predict("差吗") == "neg"


def test_classification_baselines_on_held_out_examples():
    train = [Example("很好", None, "pos"), Example("好用", None, "pos"), Example("很差", None, "neg")]
    held_out = [Example("好", None, "pos"), Example("差", None, "neg"), Example("差", None, "neg")]
    rows = {r["model"]: r["accuracy"] for r in classification_baselines(train, held_out)}
    assert rows == {"majority class": pytest.approx(1 / 3), "naive Bayes, char 1-3-grams": 1.0}
