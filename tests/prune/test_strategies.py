"""The prune stage gets its strategy from the family's head layout, not from a family test."""

from __future__ import annotations

import dataclasses

import pytest

from ernie_compress.errors import UserError
from ernie_compress.models.architecture import HeadLayout
from ernie_compress.models.families import FAMILIES
from ernie_compress.prune.strategies import ExpertPruning, GroupedQueryPruning, SeparateHeadPruning, pruning_strategy


class _Config:
    def __init__(self, model_type: str):
        self.model_type = model_type


@pytest.mark.parametrize("model_type, strategy", [("ernie", SeparateHeadPruning), ("ernie4_5", GroupedQueryPruning),
                                                  ("ernie4_5_moe", ExpertPruning)])
def test_each_family_gets_the_strategy_of_its_head_layout(model_type, strategy):
    assert isinstance(pruning_strategy(_Config(model_type)), strategy)


def test_a_layout_without_a_strategy_is_refused_by_name(monkeypatch):
    @dataclasses.dataclass(frozen=True)
    class MixtureOfExpertsHeads(HeadLayout):
        pass

    toy = dataclasses.replace(FAMILIES["ernie4_5"], model_type="toy", title="Toy", head_layout=MixtureOfExpertsHeads())
    monkeypatch.setitem(FAMILIES, "toy", toy)
    with pytest.raises(UserError, match="Toy models cannot be pruned here: no strategy for MixtureOfExpertsHeads"):
        pruning_strategy(_Config("toy"))
