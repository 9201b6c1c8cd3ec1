"""Non-neural references on demo:sentiment: how much accuracy the data allows without a transformer.

The foundation issue asks the demo teacher for 0.85 held-out accuracy; these numbers say where the
data puts that bar. On the same split as ``ernie-compress train --task demo:sentiment``:

* majority class;
* multinomial naive Bayes on character 1-3-grams (add-0.5 smoothing; Manning et al.,
  *Introduction to Information Retrieval*, ch. 13);
* logistic regression on TF-IDF character 1-3-grams (L2-normalised rows, L2 penalty chosen on
  dev, L-BFGS through scipy when it is installed; Wang & Manning 2012, "Baselines and Bigrams");
* how close test texts come to training texts (character-trigram Jaccard of the nearest training
  text, and 1-nearest-neighbour accuracy), which tells whether an n-gram model wins by memorising
  near-duplicates.

    python benchmarks/sentiment_baselines.py [--json-out FILE] [--markdown FILE]
"""

from __future__ import annotations

import argparse
import importlib.util
import math
import sys
import time
from collections import Counter
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _tables import emit  # noqa: E402

from ernie_compress.baselines import NaiveBayes, char_ngrams  # noqa: E402



def naive_bayes_accuracy(train, evaluated: dict[str, list]) -> dict[str, float]:
    """``ernie_compress.baselines.NaiveBayes`` fitted once on ``train``; its accuracy per split."""
    bayes = NaiveBayes(train)
    return {name: sum(bayes.predict(text) == gold for text, gold in rows) / len(rows) for name, rows in evaluated.items()}


def tfidf_matrices(splits: dict[str, list[tuple[str, str]]]):
    """Rows L2-normalised TF-IDF over binary n-gram presence; n-grams seen in >= 2 training texts."""
    import scipy.sparse as sp

    df: Counter = Counter()
    for text, _ in splits["train"]:
        df.update(char_ngrams(text))
    column = {g: i for i, g in enumerate(g for g, c in df.items() if c >= 2)}
    idf = np.ones(len(column))
    n_train = len(splits["train"])
    for g, i in column.items():
        idf[i] = math.log((1 + n_train) / (1 + df[g])) + 1
    out = {}
    for name, rows in splits.items():
        r, c = [], []
        for row, (text, _) in enumerate(rows):
            cols = [column[g] for g in char_ngrams(text) if g in column]
            r += [row] * len(cols)
            c += cols
        x = sp.csr_matrix((idf[c], (r, c)), shape=(len(rows), len(column)))
        norms = np.sqrt(np.asarray(x.multiply(x).sum(1)).ravel()) + 1e-12
        out[name] = sp.diags(1 / norms) @ x
    return out


def logistic_regression(x, y: np.ndarray, l2: float) -> tuple[np.ndarray, float]:
    """Binary logistic regression, mean log-loss + l2/2 |w|^2, fitted with scipy's L-BFGS."""
    from scipy.optimize import minimize

    n, d = x.shape

    def loss_and_grad(wb):
        w, b = wb[:-1], wb[-1]
        z = x @ w + b  # [n]
        p = 1 / (1 + np.exp(-z))
        loss = np.mean(np.logaddexp(0, z) - y * z) + 0.5 * l2 * w @ w
        return loss, np.append(x.T @ (p - y) / n + l2 * w, (p - y).mean())

    fit = minimize(loss_and_grad, np.zeros(d + 1), jac=True, method="L-BFGS-B", options={"maxiter": 2000})
    return fit.x[:-1], float(fit.x[-1])


def nearest_neighbours(train, evaluated: dict[str, list]) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """For each text of each split of ``evaluated``: the trigram Jaccard similarity of its nearest
    training text, and that text's row."""
    import scipy.sparse as sp

    column: dict[str, int] = {}

    def matrix(rows):  # [texts, trigrams] presence
        r, c = [], []
        for row, (text, _) in enumerate(rows):
            grams = char_ngrams(text, (3,)) or {text}
            r += [row] * len(grams)
            c += [column.setdefault(g, len(column)) for g in grams]
        return r, c

    every = {"train": train, **evaluated}
    coordinates = {name: matrix(rows) for name, rows in every.items()}  # all built: the columns are final
    m = {name: sp.csr_matrix((np.ones(len(r)), (r, c)), shape=(len(every[name]), len(column)))
         for name, (r, c) in coordinates.items()}
    train_sizes = np.asarray(m["train"].sum(1)).T  # [1, train]
    out = {}
    for name in evaluated:
        shared = (m[name] @ m["train"].T).toarray()  # [texts, train]
        jaccard = shared / (np.asarray(m[name].sum(1)) + train_sizes - shared)
        out[name] = (jaccard.max(1), jaccard.argmax(1))
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json-out", type=Path, default=None)
    parser.add_argument("--markdown", type=Path, default=None, help="also write the Markdown table here")
    args = parser.parse_args()
    from ernie_compress.data import TaskSpec, load_task

    task = load_task(TaskSpec("demo:sentiment"))
    splits = {name: [(e.text_a, e.label) for e in task.split(name)] for name in ("train", "dev", "test")}
    labels = {name: np.array([label for _, label in rows]) for name, rows in splits.items()}
    rows, result = [], {"task": "demo:sentiment", "sizes": {k: len(v) for k, v in splits.items()}}

    majority = Counter(labels["train"]).most_common(1)[0][0]
    rows.append({"model": "majority class", "dev": float((labels["dev"] == majority).mean()),
                 "test": float((labels["test"] == majority).mean()), "seconds": 0.0})

    start = time.perf_counter()
    held_out = {name: splits[name] for name in ("dev", "test")}
    rows.append({"model": "naive Bayes, char 1-3-grams", **naive_bayes_accuracy(splits["train"], held_out),
                 "seconds": time.perf_counter() - start})

    if importlib.util.find_spec("scipy") is None:
        print("scipy is not installed: logistic regression and the neighbour check are skipped")
    else:
        start = time.perf_counter()
        x = tfidf_matrices(splits)
        y = {name: (labels[name] == task.labels[1]).astype(np.float64) for name in splits}
        best = None
        for l2 in (1e-4, 3e-5, 1e-5):
            w, b = logistic_regression(x["train"], y["train"], l2)
            accuracy = {name: float((((x[name] @ w + b) > 0) == (y[name] > 0.5)).mean()) for name in ("dev", "test")}
            if best is None or accuracy["dev"] > best[1]["dev"]:
                best = (l2, accuracy)
        rows.append({"model": f"logistic regression, TF-IDF char 1-3-grams (L2 {best[0]:g})",
                     "dev": best[1]["dev"], "test": best[1]["test"], "seconds": time.perf_counter() - start})

        start = time.perf_counter()
        neighbours = nearest_neighbours(splits["train"], held_out)
        one_nn = {name: float((labels["train"][nearest] == labels[name]).mean())
                  for name, (_, nearest) in neighbours.items()}
        similarity = neighbours["test"][0]
        result["neighbours"] = {"test_share_with_jaccard_ge_0.5": float((similarity >= 0.5).mean()),
                                "median_nearest_jaccard": float(np.median(similarity))}
        rows.append({"model": "1-nearest training text (trigram Jaccard)", **one_nn,
                     "seconds": time.perf_counter() - start})

    result["models"] = rows
    title = "demo:sentiment without a transformer (accuracy)"
    if "neighbours" in result:
        n = result["neighbours"]
        title += (f"; {n['test_share_with_jaccard_ge_0.5']:.1%} of test texts have a training text with trigram "
                  f"Jaccard >= 0.5, the median test text's nearest training text {n['median_nearest_jaccard']:.2f}")
    emit(title, rows, ["model", "dev", "test", "seconds"], result, args.json_out, digits=4,
         markdown_path=args.markdown)


if __name__ == "__main__":
    main()
