"""Recipe validation: strict keys and types with line numbers, stage order, shipped recipes."""

from __future__ import annotations

from pathlib import Path

import pytest

from ernie_compress.errors import UserError
from ernie_compress.recipe import load_recipe, parse_recipe

RECIPES = Path(__file__).resolve().parents[1] / "ernie_compress" / "recipes"


@pytest.mark.parametrize("path", sorted(RECIPES.glob("*.yaml")), ids=lambda p: p.name)
def test_shipped_recipes_are_valid(path):
    recipe = load_recipe(path)
    assert recipe.stages and recipe.task


GOOD = """\
task: demo:sentiment
stages:
  - train: {preset: tiny, epochs: 1}
  - prune: {params: 0.15}
  - quantize: {qat: int8}
  - export: {format: onnx}
  - evaluate: {batch_sizes: [1, 2]}
"""


def test_sources_default_to_the_previous_checkpoint():
    recipe = parse_recipe(GOOD)
    assert [(s.kind, s.source) for s in recipe.stages] == [
        ("train", None), ("prune", "train"), ("quantize", "prune"), ("export", "quantize"),
        ("evaluate", "quantize")]


def test_the_report_compares_the_last_training_round_not_the_ones_it_continues():
    from ernie_compress.recipe import checkpoint_stages

    recipe = parse_recipe("task: demo:sentiment\nstages:\n  - train: {name: round1, preset: tiny}\n"
                          "  - train: {name: teacher, epochs: 1}\n  - prune: {params: 0.15}\n"
                          "  - train: {name: recovered, epochs: 1}\n")
    assert [s.name for s in checkpoint_stages(recipe)] == ["teacher", "prune", "recovered"]


@pytest.mark.parametrize("text, message", [
    ("task: demo:sentiment\nstages:\n  - train: {preset: tiny, epochz: 1}\n", "3: unknown option 'epochz'"),
    ("task: demo:sentiment\nstages:\n  - train: {preset: tiny, epochs: many}\n", "'epochs' of stage 'train' must be int"),
    ("task: demo:sentiment\nstagez: []\n", "2: unknown key 'stagez'"),
    ("task: demo:sentiment\nstages:\n  - shrink: {}\n", "unknown stage 'shrink'"),
    ("task: demo:sentiment\nstages:\n  - train: {preset: tiny}\n  - quantize: {qat: int8}\n  - prune: {heads: 0.1}\n",
     "5: 'prune' after quantization"),
    ("task: demo:sentiment\nstages:\n  - export: {format: onnx}\n", "needs a checkpoint before it"),
    ("task: demo:sentiment\nstages:\n  - train: {preset: tiny}\n  - prune: {from: nowhere, heads: 0.1}\n",
     "which no earlier checkpoint stage produces"),
    ("task: demo:sentiment\nstages:\n  - train: [preset, tiny]\n", "3: the options of 'train' must be a mapping"),
    ("task: [1\n", "invalid YAML"),
    ("- just a list\n", "a recipe is a YAML mapping"),
    ("task: demo:sentiment\nseed: abc\nstages:\n  - train: {preset: tiny}\n", "2: 'seed' must be int"),
])
def test_bad_recipes_name_the_key_and_line(text, message):
    with pytest.raises(UserError, match=message):
        parse_recipe(text, "r.yaml")


def test_run_level_settings_apply_to_every_stage_and_a_stage_may_override_them():
    from ernie_compress.recipe import stage_config

    text = ("task: demo:sentiment\ndevice: cpu\nnproc: 2\nstages:\n  - train: {preset: tiny, nproc: 1}\n"
            "  - quantize: {qat: int8}\n")
    recipe = parse_recipe(text, "r.yaml")
    train, quantize = (stage_config(recipe, s, None if s.kind == "train" else Path("t"), Path("o"))
                       for s in recipe.stages)
    assert (train.device, train.nproc) == ("cpu", 1) and (quantize.device, quantize.nproc) == ("cpu", 2)
    with pytest.raises(UserError, match=r"r.yaml:6: stage 'quantize' \(quantize\): 'batch_size' 7 \(the global "
                                        r"batch\) must divide by 'nproc' x 'nnodes' x 'grad_accum'"):
        parse_recipe(text.replace("{qat: int8}", "{qat: int8, batch_size: 7}"), "r.yaml")
