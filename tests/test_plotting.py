"""plotting.py through the run report's plot: every variant named in the legend (no label on the axes
that could overlap another), the y axis fitted to the variants so a far context level (majority class)
cannot crowd them into a corner and is named at the edge instead, latency on a log axis over a decade."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from ernie_compress.report import plot_pareto  # noqa: E402

ROWS = [("teacher (FP32)", 1.68, 0.8031), ("student", 0.45, 0.8210), ("pruned", 0.40, 0.8215), ("int8", 0.27, 0.8158)]
CONTEXT = [("majority class", 0.5204), ("naive Bayes", 0.8227)]


def _drawn(tmp_path: Path, rows, monkeypatch):
    kept = []
    monkeypatch.setattr(plt, "close", kept.append)
    report = {"rows": [{"variant": v, "p50_b1_ms": ms, "score": s, "metric": "accuracy"} for v, ms, s in rows],
              "context_rows": [{"variant": v, "score": s} for v, s in CONTEXT]}
    plot_pareto(report, tmp_path / "report.png")
    assert (tmp_path / "report.png").stat().st_size > 0
    return kept[0].axes[0]


def test_variants_are_named_in_the_legend_and_the_axes_fit_them(tmp_path, monkeypatch):
    ax = _drawn(tmp_path, ROWS, monkeypatch)
    names = [t.get_text() for t in ax.get_legend().get_texts()]
    assert [n.split(":")[0] for n in names] == [v for v, _, _ in ROWS]
    low, high = ax.get_ylim()
    scores = [s for _, _, s in ROWS]
    assert low < min(scores) and max(scores) < high and (high - low) < 2 * (max(scores) - min(scores))
    texts = [t.get_text() for t in ax.texts]
    assert any("majority class" in t and "below the axis" in t for t in texts)  # off the axis, named at its edge
    assert any(t.startswith("naive Bayes") and "axis" not in t for t in texts)  # inside: a line and its name
    assert ax.get_xscale() == "linear"


def test_latency_spanning_decades_is_drawn_on_a_log_axis(tmp_path, monkeypatch):
    ax = _drawn(tmp_path, [("teacher", 40.0, 0.80), ("int8", 0.3, 0.79)], monkeypatch)
    assert ax.get_xscale() == "log"
