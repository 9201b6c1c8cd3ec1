"""Task metrics computed from predictions on held-out data.

Classification: accuracy and macro-F1 (the mean of per-class F1, each class's F1 being the
harmonic mean of its precision and recall; a class never predicted nor present is skipped).
"""

from __future__ import annotations

import numpy as np


def classification_metrics(predictions: np.ndarray, labels: np.ndarray) -> dict[str, float]:
    """``predictions``/``labels``: int [n] -> {"accuracy", "macro_f1", "examples"}."""
    predictions = np.asarray(predictions)
    labels = np.asarray(labels)
    if predictions.shape != labels.shape or labels.size == 0:
        raise ValueError("predictions and labels must be non-empty and of the same shape")
    f1s = []
    for c in np.union1d(predictions, labels):
        tp = np.sum((predictions == c) & (labels == c))
        fp = np.sum((predictions == c) & (labels != c))
        fn = np.sum((predictions != c) & (labels == c))
        f1s.append(0.0 if tp == 0 else 2 * tp / (2 * tp + fp + fn))
    return {"accuracy": float(np.mean(predictions == labels)), "macro_f1": float(np.mean(f1s)),
            "examples": int(labels.size)}


PRIMARY_METRIC = {"classification": "accuracy", "pair_classification": "accuracy"}
