"""A line-by-line Python 3 port of CMRC2018's official scorer, the test oracle for our metric.

Source: ``squad-style-data/cmrc2018_evaluate.py`` of github.com/ymcui/cmrc2018 ("v5 - special",
Python 2). Ported as literally as Python 3 allows: ``str(x).decode('utf-8')`` becomes ``str(x)``,
``ur'[\u4e00-\u9fa5]'`` becomes ``r'[\u4e00-\u9fa5]'``; the punctuation list, the per-character
loop (a removed character does not flush the pending run), ``find_lcs`` and both scores are kept
as written, including the list entry ``'……'`` that no single character can equal. The one change:
``nltk.word_tokenize(s)`` runs Punkt sentence splitting first, whose model is downloaded data that
this machine cannot fetch, so the port calls it with ``preserve_line=True`` (see
``ernie_compress/metrics.py``). Kept apart from the package on purpose: it is the yardstick, not
the implementation.
"""

from __future__ import annotations

import re

import nltk

SP_CHAR = ['-', ':', '_', '*', '^', '/', '\\', '~', '`', '+', '=',
           '，', '。', '：', '？', '！', '“', '”', '；', '’', '《', '》', '……', '·', '、',
           '「', '」', '（', '）', '－', '～', '『', '』']


def _word_tokenize(text):
    return nltk.word_tokenize(text, preserve_line=True)


def mixed_segmentation(in_str, rm_punc=False):
    in_str = str(in_str).lower().strip()
    segs_out = []
    temp_str = ""
    for char in in_str:
        if rm_punc and char in SP_CHAR:
            continue
        if re.search(r'[\u4e00-\u9fa5]', char) or char in SP_CHAR:
            if temp_str != "":
                ss = _word_tokenize(temp_str)
                segs_out.extend(ss)
                temp_str = ""
            segs_out.append(char)
        else:
            temp_str += char
    if temp_str != "":
        ss = _word_tokenize(temp_str)
        segs_out.extend(ss)
    return segs_out


def remove_punctuation(in_str):
    in_str = str(in_str).lower().strip()
    out_segs = []
    for char in in_str:
        if char in SP_CHAR:
            continue
        else:
            out_segs.append(char)
    return ''.join(out_segs)


def find_lcs(s1, s2):
    m = [[0 for i in range(len(s2) + 1)] for j in range(len(s1) + 1)]
    mmax = 0
    p = 0
    for i in range(len(s1)):
        for j in range(len(s2)):
            if s1[i] == s2[j]:
                m[i + 1][j + 1] = m[i][j] + 1
                if m[i + 1][j + 1] > mmax:
                    mmax = m[i + 1][j + 1]
                    p = i + 1
    return s1[p - mmax:p], mmax


def calc_f1_score(answers, prediction):
    f1_scores = []
    for ans in answers:
        ans_segs = mixed_segmentation(ans, rm_punc=True)
        prediction_segs = mixed_segmentation(prediction, rm_punc=True)
        lcs, lcs_len = find_lcs(ans_segs, prediction_segs)
        if lcs_len == 0:
            f1_scores.append(0)
            continue
        precision = 1.0 * lcs_len / len(prediction_segs)
        recall = 1.0 * lcs_len / len(ans_segs)
        f1 = (2 * precision * recall) / (precision + recall)
        f1_scores.append(f1)
    return max(f1_scores)


def calc_em_score(answers, prediction):
    em = 0
    for ans in answers:
        ans_ = remove_punctuation(ans)
        prediction_ = remove_punctuation(prediction)
        if ans_ == prediction_:
            em = 1
            break
    return em
