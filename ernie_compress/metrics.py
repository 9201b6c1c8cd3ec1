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


PRIMARY_METRIC = {"classification": "accuracy", "pair_classification": "accuracy",
                  "token_classification": "f1", "question_answering": "f1", "causal_lm": "perplexity"}
LOWER_IS_BETTER = {"perplexity"}


def is_better(metric: str, new: float, old: float) -> bool:
    return new < old if metric in LOWER_IS_BETTER else new > old


def metric_delta(metric: str, new: float, old: float) -> float:
    """The change from ``old`` to ``new``: points (fractions x 100), or the raw perplexity change."""
    return new - old if metric in LOWER_IS_BETTER else (new - old) * 100


def percent_of(metric: str, student: float, teacher: float) -> float:
    """How much of the teacher's quality the student keeps (perplexity: teacher/student)."""
    if metric in LOWER_IS_BETTER:
        return 100 * teacher / max(student, 1e-12)
    return 100 * student / max(teacher, 1e-12)


def perplexity_metrics(nll_sum: float, tokens: int) -> dict[str, float]:
    """exp of the mean next-token negative log-likelihood over all predicted tokens."""
    mean = nll_sum / max(tokens, 1)
    return {"perplexity": float(np.exp(mean)), "nll": float(mean), "tokens": int(tokens)}


def score_split(run, split, batch_size: int = 64) -> dict[str, float]:
    """The task metrics of ``run(input_ids, token_type_ids) -> logits`` (numpy) on a labeled
    :class:`~ernie_compress.data.batching.EncodedSplit` — the same code for dygraph and runtimes."""
    return scored_split(run, split, batch_size)[0]


def scored_split(run, split, batch_size: int = 64) -> tuple[dict[str, float], np.ndarray]:
    """:func:`score_split`'s metrics and, per example, the statistics its primary metric is made of
    ([examples, k], see :func:`metric_from_stats`), for paired bootstrap intervals."""
    if getattr(split, "causal_lm", False):  # next-token log-likelihood of every real token
        stats = np.zeros((len(split), 2))  # [text, (nll, tokens)]
        for batch in split.eval_batches(batch_size):
            logits = run(batch.input_ids, batch.token_type_ids).astype(np.float64)  # [b, s, vocab]
            mask = batch.labels >= 0
            log_z = np.log(np.exp(logits - logits.max(-1, keepdims=True)).sum(-1)) + logits.max(-1)  # [b, s]
            picked = np.take_along_axis(logits, np.where(mask, batch.labels, 0)[..., None], -1)[..., 0]
            stats[batch.index, 0] = ((log_z - picked) * mask).sum(-1)
            stats[batch.index, 1] = mask.sum(-1)
        return perplexity_metrics(float(stats[:, 0].sum()), int(stats[:, 1].sum())), stats
    if hasattr(split, "answers_from_logits"):  # extractive QA: windows -> one answer per question
        logits_by_row = [None] * len(split)
        for batch in split.eval_batches(batch_size):
            logits = run(batch.input_ids, batch.token_type_ids)  # [b, s, 2]
            for row, i in enumerate(batch.index):
                logits_by_row[i] = logits[row]
        scores = span_scores(split.answers_from_logits(logits_by_row), split.gold_answers)  # [question, (em, f1)]
        return span_metrics_from_scores(scores), scores
    if split.token_level:
        predicted: list = [None] * len(split)
        for batch in split.eval_batches(batch_size):
            logits = run(batch.input_ids, batch.token_type_ids)  # [b, s, labels]
            for row, i in enumerate(batch.index):
                predicted[i] = split.tags_from_logits(int(i), logits[row])
        counts = entity_counts(predicted, split.gold_tags)  # [sentence, (tp, predicted, gold)]
        return {**entity_f1_from_counts(counts), "examples": len(split)}, counts
    out = None
    for batch in split.eval_batches(batch_size):
        logits = run(batch.input_ids, batch.token_type_ids)  # [b, labels]
        if out is None:
            out = np.zeros((len(split), logits.shape[-1]), dtype=np.float32)
        out[batch.index] = logits
    predictions = out.argmax(-1)
    return classification_metrics(predictions, split.labels), (predictions == np.asarray(split.labels))[:, None]


def metric_from_stats(metric: str, stats: np.ndarray) -> float:
    """The primary metric from per-example statistics (rows of :func:`scored_split`)."""
    if metric == "perplexity":
        return float(np.exp(stats[:, 0].sum() / max(1.0, stats[:, 1].sum())))
    if stats.shape[1] == 3:  # entity F1: 2 tp / (predicted + gold)
        total = stats[:, 1].sum() + stats[:, 2].sum()
        return float(2 * stats[:, 0].sum() / total) if total else 0.0
    return float(stats[:, -1].mean())  # accuracy, or QA F1 (the last column)


def bootstrap_delta(metric: str, stats: np.ndarray, reference: np.ndarray, resamples: int = 1000,
                    seed: int = 0) -> tuple[float, float, float]:
    """``metric_delta`` of ``stats`` against ``reference`` (the same examples, paired) and its 95%
    percentile interval from resampling the examples (Efron & Tibshirani 1993, ch. 13)."""
    if len(stats) != len(reference):
        raise ValueError("paired bootstrap needs the same examples on both sides")
    rng = np.random.default_rng(seed)
    point = metric_delta(metric, metric_from_stats(metric, stats), metric_from_stats(metric, reference))
    draws = []
    for _ in range(resamples):
        pick = rng.integers(0, len(stats), size=len(stats))
        draws.append(metric_delta(metric, metric_from_stats(metric, stats[pick]),
                                  metric_from_stats(metric, reference[pick])))
    low, high = np.percentile(draws, [2.5, 97.5])
    return point, float(low), float(high)


def entity_spans(tags: list[str]) -> set[tuple[str, int, int]]:
    """BIO tags -> {(type, start, end_exclusive)}, conlleval style: an ``I-X`` that does not
    continue an ``X`` entity starts a new one."""
    spans = set()
    start = kind = None
    for i, tag in enumerate(list(tags) + ["O"]):
        prefix, _, label = tag.partition("-")
        continues = prefix == "I" and kind == label
        if kind is not None and not continues:
            spans.add((kind, start, i))
            start = kind = None
        if prefix in ("B", "I") and not continues:
            start, kind = i, label
    return spans


def entity_counts(predicted: list[list[str]], gold: list[list[str]]) -> np.ndarray:
    """Per sentence: (entities right, entities predicted, gold entities) by exact span and type
    [sentences, 3]. Tag sequences of unequal length are an error."""
    if len(predicted) != len(gold):
        raise ValueError("predicted and gold must have the same number of sentences")
    rows = []
    for i, (p, g) in enumerate(zip(predicted, gold)):
        if len(p) != len(g):
            raise ValueError(f"sentence {i}: {len(p)} predicted tags for {len(g)} gold tags")
        ps, gs = entity_spans(p), entity_spans(g)
        rows.append((len(ps & gs), len(ps), len(gs)))
    return np.array(rows, dtype=np.int64).reshape(-1, 3)


def entity_f1_from_counts(counts: np.ndarray) -> dict[str, float]:
    """Micro precision, recall and F1 over the sentences' :func:`entity_counts`."""
    tp, n_pred, n_gold = (int(x) for x in counts.sum(axis=0))
    precision = tp / n_pred if n_pred else 0.0
    recall = tp / n_gold if n_gold else 0.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return {"precision": precision, "recall": recall, "f1": f1, "entities": n_gold}


def entity_f1(predicted: list[list[str]], gold: list[list[str]]) -> dict[str, float]:
    """Entity-level precision, recall and F1 by exact span and type match (micro over sentences);
    equal to seqeval's default (conlleval) mode. Tag sequences of unequal length are an error."""
    return entity_f1_from_counts(entity_counts(predicted, gold))


# --- extractive QA: CMRC2018's EM and F1 ------------------------------------------------------
# The official scorer is ``cmrc2018_evaluate.py`` (github.com/ymcui/cmrc2018, squad-style-data,
# "v5 - special"); these functions compute what it computes:
# - its punctuation is exactly its list (``……`` is one two-character entry there, so a lone ``…``
#   is never removed; other Unicode punctuation such as ``.`` or ``,`` stays too);
# - segmentation lowercases and strips, makes each character in U+4E00..U+9FA5 a token, and cuts
#   the other runs with nltk's word tokenizer; a removed punctuation character does not end a run
#   (``abc-def`` is one token ``abcdef``);
# - EM compares the strings with the punctuation removed and the rest, inner spaces included, kept.
# One difference is forced: nltk's ``word_tokenize`` first splits sentences with its Punkt model,
# which is data that cannot be downloaded here, so runs are tokenized as one line
# (``preserve_line=True``). A run changes only if it holds a sentence end that Punkt would split
# (``abc. Def`` inside one answer); single-line answer spans practically never do.
CMRC_PUNCTUATION = frozenset(["-", ":", "_", "*", "^", "/", "\\", "~", "`", "+", "=",
                              "，", "。", "：", "？", "！", "“", "”", "；", "’", "《", "》", "……", "·", "、",
                              "「", "」", "（", "）", "－", "～", "『", "』"])


def _is_cjk(ch: str) -> bool:
    return "\u4e00" <= ch <= "\u9fa5"


def _word_tokenize(run: str) -> list[str]:
    from nltk.tokenize import word_tokenize

    return word_tokenize(run, preserve_line=True)


def cmrc_segments(text: str) -> list[str]:
    """CMRC2018's mixed segmentation with punctuation removed: each Chinese character is a token,
    the runs of other characters between them are cut by nltk's word tokenizer."""
    tokens: list[str] = []
    run = ""
    for ch in text.lower().strip():
        if ch in CMRC_PUNCTUATION:
            continue  # dropped without ending the run
        if _is_cjk(ch):
            if run:
                tokens += _word_tokenize(run)
                run = ""
            tokens.append(ch)
        else:
            run += ch
    return tokens + (_word_tokenize(run) if run else [])


def _longest_common_substring(a: list[str], b: list[str]) -> int:
    best = 0
    row = [0] * (len(b) + 1)
    for x in a:
        prev_diag = 0
        for j, y in enumerate(b, start=1):
            cur = row[j]
            row[j] = prev_diag + 1 if x == y else 0
            best = max(best, row[j])
            prev_diag = cur
    return best


def _without_punctuation(text: str) -> str:
    return "".join(ch for ch in text.lower().strip() if ch not in CMRC_PUNCTUATION)


def cmrc_exact_match(prediction: str, answers: list[str]) -> float:
    """1.0 when the prediction equals an answer once both are lowercased, stripped and rid of
    CMRC2018's punctuation (inner spaces count)."""
    return float(any(_without_punctuation(prediction) == _without_punctuation(a) for a in answers))


def cmrc_f1(prediction: str, answers: list[str]) -> float:
    """CMRC2018's F1: precision and recall of the longest common token substring between the
    prediction and an answer (mixed segmentation), the best over the answers."""
    pred = cmrc_segments(prediction)
    best = 0.0
    for answer in answers:
        gold = cmrc_segments(answer)
        common = _longest_common_substring(gold, pred)
        if common:
            p, r = common / len(pred), common / len(gold)
            best = max(best, 2 * p * r / (p + r))
    return best


def span_scores(predictions: list[str], answers: list[list[str]]) -> np.ndarray:
    """Per question: (EM, F1) [questions, 2]."""
    if len(predictions) != len(answers) or not answers:
        raise ValueError("predictions and answers must be non-empty and of the same length")
    return np.array([[cmrc_exact_match(p, a), cmrc_f1(p, a)] for p, a in zip(predictions, answers)])


def span_metrics_from_scores(scores: np.ndarray) -> dict[str, float]:
    """Mean EM and F1 over questions (fractions; CMRC2018 reports them x100)."""
    return {"exact_match": float(scores[:, 0].mean()), "f1": float(scores[:, 1].mean()), "questions": len(scores)}


def span_metrics(predictions: list[str], answers: list[list[str]]) -> dict[str, float]:
    """Mean EM and F1 over questions (fractions; CMRC2018 reports them x100)."""
    return span_metrics_from_scores(span_scores(predictions, answers))