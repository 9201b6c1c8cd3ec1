"""results.py: each command's typed result; to_dict() is what --json prints (sections lifted, optional
fields left out while empty), and every stage's runner returns its declared type."""

from __future__ import annotations

import dataclasses
import inspect
import typing

import pytest

from ernie_compress.results import DistillResult, ExportEvaluation, Result
from ernie_compress.stages import STAGES

RUNNERS = {config: runner for stage in STAGES.values() for config, runner in stage.runners.items()}


def _distill(**changes) -> DistillResult:
    base = dict(out="o", task="t", metric="accuracy", steps=3, steps_run=3, train_seconds=1.0, samples_per_s=2.0,
                seconds=1.5, details={"teacher": "T", "percent_of_teacher": 98.0})
    return DistillResult(**{**base, **changes})


def test_to_dict_lifts_the_details_and_leaves_out_empty_optional_sections():
    result = _distill()
    data = result.to_dict()
    assert data["teacher"] == "T" and "details" not in data and data["stage"] == "distill"
    assert "latency" not in data and "speedup" not in data  # --latency not asked for
    timed = dataclasses.replace(result, latency={"a": []}, speedup={"b1": 2.0})
    assert timed.to_dict()["speedup"] == {"b1": 2.0}
    assert result["percent_of_teacher"] == 98.0 and "teacher" in result and result.get("missing", 1) == 1


def test_example_stats_appear_only_when_kept():
    kept = {f.name: None for f in dataclasses.fields(ExportEvaluation)}
    assert "example_stats" not in ExportEvaluation(**kept).to_dict()
    assert ExportEvaluation(**{**kept, "example_stats": [1]}).to_dict()["example_stats"] == [1]


@pytest.mark.parametrize("config, runner", sorted(RUNNERS.items(), key=lambda kv: kv[0].__name__),
                         ids=lambda x: getattr(x, "__name__", str(x)))
def test_every_stage_runner_declares_a_typed_result(config, runner):
    hints = typing.get_type_hints(runner)
    returned = hints["return"]
    types = typing.get_args(returned) or (returned,)
    assert all(inspect.isclass(t) and issubclass(t, Result) for t in types), (runner.__name__, returned)
