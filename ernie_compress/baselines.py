"""Non-neural reference points for classification tasks, shown as context rows in a run's report
so a reader sees where the teacher stands (they are not ERNIE models and are never deployed).

* majority class of the training split;
* multinomial naive Bayes over the set of character 1-3-grams of each text (binarised counts,
  add-0.5 smoothing; Manning et al., *Introduction to Information Retrieval*, ch. 13). A text pair
  is one text joined by a tab, so its n-grams come from both sides.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Sequence

NGRAMS = (1, 2, 3)


def char_ngrams(text: str, sizes: Sequence[int] = NGRAMS) -> set[str]:
    return {text[i:i + k] for k in sizes for i in range(len(text) - k + 1)}


class NaiveBayes:
    """Fitted on (text, label) pairs; :meth:`predict` gives the most probable label."""

    def __init__(self, train: Sequence[tuple[str, str]]):
        self.prior: Counter = Counter()
        self.counts: dict[str, Counter] = {}
        for text, label in train:
            self.prior[label] += 1
            self.counts.setdefault(label, Counter()).update(char_ngrams(text))
        self.vocab = set().union(*self.counts.values())
        self.totals = {label: sum(c.values()) for label, c in self.counts.items()}

    def _log_score(self, label: str, grams: set[str]) -> float:
        denominator = self.totals[label] + 0.5 * len(self.vocab)
        return math.log(self.prior[label]) + sum(math.log((self.counts[label][g] + 0.5) / denominator)
                                                 for g in grams if g in self.vocab)

    def predict(self, text: str) -> str:
        grams = char_ngrams(text)
        return max(sorted(self.counts), key=lambda label: self._log_score(label, grams))


def _text(example) -> str:
    return example.text_a if example.text_b is None else f"{example.text_a}\t{example.text_b}"


def classification_baselines(train, held_out) -> list[dict[str, float | str]]:
    """Accuracy of the majority class and of naive Bayes on ``held_out`` (lists of Examples)."""
    majority = Counter(e.label for e in train).most_common(1)[0][0]
    bayes = NaiveBayes([(_text(e), e.label) for e in train])
    n = len(held_out)
    return [{"model": "majority class", "accuracy": sum(e.label == majority for e in held_out) / n},
            {"model": "naive Bayes, char 1-3-grams",
             "accuracy": sum(bayes.predict(_text(e)) == e.label for e in held_out) / n}]
