"""report.py's table: the active-parameter column appears when a variant is a mixture of experts, and
only then."""

from __future__ import annotations

from ernie_compress.report import markdown_table


def _row(variant: str, **extra) -> dict:
    return {"variant": variant, "parameters": 1000, "non_embedding_parameters": 600, "size_mb": 1.0, "score": 50.0,
            "metric": "perplexity", "loss_points": 0.0, "p50_b1_ms": 1.0, "speedup_b1": 1.0, "qps_large_batch": 10.0,
            "runtime": "onnxruntime/cpu/fp32", **extra}


def test_active_parameters_are_a_column_only_for_mixtures_of_experts():
    dense = markdown_table({"rows": [_row("teacher"), _row("student")]})
    assert "active params" not in dense and dense.splitlines()[1].count("---") == 10
    moe = markdown_table({"rows": [_row("moe", active_parameters=400), _row("dense student")]})
    header, rule, first, second = moe.splitlines()[:4]
    assert "active params" in header and rule.count("---") == 11
    assert "| 400 |" in first and second.count("|") == first.count("|")  # the dense row's cell left blank
