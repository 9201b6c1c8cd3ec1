"""The stage registry: one config class per stage (or method), the CLI and recipes derived from it."""

from __future__ import annotations

from pathlib import Path

import pytest
import typer.main

from ernie_compress.cli import _cli_values, app
from ernie_compress.options import OptionError, config_options
from ernie_compress.errors import UserError
from ernie_compress.recipe import Recipe, StageSpec, parse_recipe, stage_config
from ernie_compress.stages import STAGES, config_for, run_stage, stage_options
from ernie_compress.stages.quantize import FP16Config, PTQConfig, QATConfig

# the least each stage needs, on the command line and in a recipe
MINIMAL = {
    "pretrain": (["--out", "o", "--corpus", "demo:sentiment"], {"corpus": ["demo:sentiment"]}),
    "train": (["--out", "o", "--preset", "tiny"], {"preset": "tiny"}),
    "distill": (["--out", "o", "--teacher", "t", "--student", "tiny"], {"student": "tiny"}),
    "prune": (["ckpt", "--out", "o", "--heads", "0.1"], {"heads": 0.1}),
    "quantize": (["ckpt", "--out", "o", "--qat", "int8"], {"qat": "int8"}),
    "quantize-ptq": (["ckpt", "--out", "o", "--ptq", "int8"], {"ptq": "int8"}),
    "quantize-fp16": (["ckpt", "--out", "o", "--fp16"], {"fp16": True}),
    "quantize-weight": (["ckpt", "--out", "o", "--weight-only", "int4"], {"weight_only": "int4"}),
    "export": (["ckpt", "--out", "o"], {}),
    "evaluate": (["path"], {}),
}


def cli_config(kind: str, args: list[str]):
    """The config the command line builds from ``args`` (parsed by Click, not run)."""
    command = typer.main.get_command(app).commands[kind]
    ctx = command.make_context(kind, list(args))
    return config_for(kind, _cli_values(stage_options(kind), ctx.params))


def recipe_config(kind: str, options: dict):
    recipe = Recipe(name="r", task=None, data=None, seed=42, threads=None)
    fresh = kind in ("pretrain", "train")  # these two start from a preset here
    spec = StageSpec(kind=kind, name=kind, options=dict(options), line=1, source=None if fresh else "t")
    return stage_config(recipe, spec, None if fresh else Path("t"), Path("o"))


@pytest.mark.parametrize("case", sorted(MINIMAL))
def test_every_cli_default_equals_the_recipe_default(case):
    kind = case.split("-")[0]
    args, options = MINIMAL[case]
    cli, recipe = cli_config(kind, args), recipe_config(kind, options)
    assert type(cli) is type(recipe)
    paths = {"out", "checkpoint", "teacher", "path", "init_from", "resume"}  # the run decides these
    ours = {k: v for k, v in config_options(cli).items() if k not in paths}
    theirs = {k: v for k, v in config_options(recipe).items() if k not in paths}
    assert ours == theirs


def test_every_stage_declares_its_options_once_and_consistently():
    for kind, stage in STAGES.items():
        opts = stage_options(kind)  # raises when two methods declare one option differently
        assert opts and all(o.spec.help for o in opts.values()), kind
        assert all(o.name == "out" or not o.spec.short or o.spec.short != "-o" for o in opts.values())
    assert set(STAGES) == {"pretrain", "train", "distill", "prune", "quantize", "export", "evaluate"}


def test_the_quantize_option_given_picks_the_method():
    assert type(cli_config("quantize", MINIMAL["quantize"][0])) is QATConfig
    assert type(cli_config("quantize", MINIMAL["quantize-ptq"][0])) is PTQConfig
    assert type(cli_config("quantize", MINIMAL["quantize-fp16"][0])) is FP16Config
    with pytest.raises(OptionError, match="pass exactly one of --qat, --ptq, --fp16"):
        cli_config("quantize", ["ckpt", "--out", "o"])
    with pytest.raises(OptionError, match="--calib-samples does not apply to --qat"):
        cli_config("quantize", ["ckpt", "--out", "o", "--qat", "int8", "--calib-samples", "8"])
    recipe = "task: demo:sentiment\nstages:\n  - train: {preset: tiny}\n  - quantize: {qat: int8, calib_samples: 8}\n"
    with pytest.raises(UserError, match="r.yaml:4: stage 'quantize' \\(quantize\\): 'calib_samples' does not apply to 'qat'"):
        parse_recipe(recipe, "r.yaml")  # a recipe spells options as its keys, with the line


def test_run_stage_dispatches_on_the_config_type():
    with pytest.raises(TypeError, match="no stage runs"):
        run_stage(object())
