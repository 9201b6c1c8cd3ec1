"""Question + context windows for extractive QA, and span decoding back to answer text.

A context longer than the model's window is cut into overlapping windows (BERT's document
striding, Devlin et al. 2019 §4.2): each row is ``[CLS] question [SEP] context-window [SEP]``
with token types 0 then 1, windows start every ``doc_stride`` context tokens. A row's label is
the answer's (start, end) token positions when the whole answer lies in its window, else (0, 0),
pointing at ``[CLS]``. At evaluation every window of a question proposes its best span (start <=
end, at most ``max_answer_tokens`` long, inside the context) scored ``start_logit + end_logit``;
the question's answer is the best over its windows, cut from the context by character offsets.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from ..errors import UserError
from .batching import EncodedSplit
from .types import Example
from .tokenizer import ErnieTokenizer


class EncodedSpanSplit(EncodedSplit):
    """Rows are windows; ``example_of_row`` [rows] maps each to its question; ``offsets``
    [rows, seq, 2] gives each context token's character span in the context (-1 elsewhere);
    ``labels`` [rows, 2] are start/end token positions."""

    def __init__(self, examples: Sequence[Example], tokenizer: ErnieTokenizer, max_length: int,
                 doc_stride: int = 128, max_query_tokens: int = 64, max_answer_tokens: int = 30,
                 top_k: int = 20):
        if not examples:
            raise UserError("no examples to encode")
        self.label_names: list[str] = []
        self.token_level = False
        self.pad_id = tokenizer.pad_id
        self.max_answer_tokens = max_answer_tokens
        self.top_k = top_k
        self.contexts = [e.text_b or "" for e in examples]
        self.gold_answers = [[text for _, text in e.label.spans] if e.label else [] for e in examples]
        max_query_tokens = min(max_query_tokens, max_length // 2)
        questions = tokenizer.encode_with_offsets([e.text_a for e in examples])
        contexts = tokenizer.encode_with_offsets(self.contexts)
        rows: list[tuple[list[int], list[int], list[tuple[int, int]], tuple[int, int], int]] = []
        for n, (example, (q_ids, _), (c_ids, c_offsets)) in enumerate(zip(examples, questions, contexts)):
            q_ids = q_ids[:max_query_tokens]
            window = max_length - len(q_ids) - 3
            answer = _answer_tokens(example, c_offsets)
            first = len(q_ids) + 2  # row position of the window's first context token
            start = 0
            while True:
                ctx = c_ids[start:start + window]
                ids = [tokenizer.cls_id, *q_ids, tokenizer.sep_id, *ctx, tokenizer.sep_id]
                types = [0] * first + [1] * (len(ctx) + 1)
                label = (0, 0)
                if answer and start <= answer[0] and answer[1] < start + window:
                    label = (first + answer[0] - start, first + answer[1] - start)
                offsets = [(-1, -1)] * first + list(c_offsets[start:start + window]) + [(-1, -1)]
                rows.append((ids, types, offsets, label, n))
                if start + window >= len(c_ids):
                    break
                start += min(doc_stride, window)
        seq = max(len(r[0]) for r in rows)
        self.input_ids = np.full((len(rows), seq), tokenizer.pad_id, dtype=np.int64)  # [rows, seq]
        self.token_type_ids = np.zeros((len(rows), seq), dtype=np.int64)
        self.offsets = np.full((len(rows), seq, 2), -1, dtype=np.int32)
        self.labels = np.array([r[3] for r in rows], dtype=np.int64)  # [rows, 2]
        self.example_of_row = np.array([r[4] for r in rows], dtype=np.int64)
        for i, (ids, types, offsets, _, _) in enumerate(rows):
            self.input_ids[i, :len(ids)] = ids
            self.token_type_ids[i, :len(types)] = types
            self.offsets[i, :len(offsets)] = offsets
        self.lengths = (self.input_ids != tokenizer.pad_id).sum(axis=1)

    def best_span(self, row: int, logits: np.ndarray) -> tuple[float, str]:
        """The best answer in one window from its logits [seq, 2]: (score, text)."""
        offsets = self.offsets[row, :len(logits)]
        candidates = np.flatnonzero(offsets[:, 0] >= 0)
        if not candidates.size:
            return -np.inf, ""
        starts = candidates[np.argsort(-logits[candidates, 0])[:self.top_k]]
        ends = candidates[np.argsort(-logits[candidates, 1])[:self.top_k]]
        best = (-np.inf, "")
        context = self.contexts[self.example_of_row[row]]
        for i in starts:
            for j in ends:
                if i <= j < i + self.max_answer_tokens:
                    score = float(logits[i, 0] + logits[j, 1])
                    if score > best[0]:
                        best = (score, context[offsets[i, 0]:offsets[j, 1]])
        return best

    def answers_from_logits(self, logits_by_row: Sequence[np.ndarray]) -> list[str]:
        """One predicted answer per question, the best span over its windows."""
        best: list[tuple[float, str]] = [(-np.inf, "")] * len(self.contexts)
        for row, logits in enumerate(logits_by_row):
            n = self.example_of_row[row]
            candidate = self.best_span(row, logits)
            if candidate[0] > best[n][0]:
                best[n] = candidate
        return [text for _, text in best]


def _answer_tokens(example: Example, offsets: Sequence[tuple[int, int]]) -> tuple[int, int] | None:
    """Context token positions (first, last) covering the first gold answer's characters."""
    if not example.label or not example.label.spans:
        return None
    char_start, text = example.label.spans[0]
    char_end = char_start + len(text)
    covering = [t for t, (a, b) in enumerate(offsets) if a < char_end and b > char_start]
    return (covering[0], covering[-1]) if covering else None
