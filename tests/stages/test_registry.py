"""The stage registry: one config class per stage (or method), the CLI and recipes derived from it,
and the contract every declared stage meets (module, configs, result type, renderer)."""

from __future__ import annotations

import dataclasses
import importlib
import json
import pkgutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

import ernie_compress.stages
from ernie_compress import render
from ernie_compress.cli import _cli_values, app, built_command
from ernie_compress.options import OptionError, config_options, option
from ernie_compress.errors import UserError
from ernie_compress.recipe import Recipe, StageSpec, parse_recipe, stage_config
from ernie_compress.results import Result
from ernie_compress.stages import STAGES, StageDef, config_for, register, registry, run_stage, stage_options
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
    ctx = built_command(kind).make_context(kind, list(args))
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


# --- the contract of a stage: what adding one needs, checked for every declared stage -------------
def contract_problems(kind: str) -> list[str]:
    """What declared stage ``kind`` lacks: a module that registers its config(s), a result type
    (its runners' return annotation, a ``results.Result``), a renderer (``render.py``)."""
    stage = STAGES[kind]
    try:
        stage.configs
    except (ImportError, LookupError) as exc:
        return [str(exc)]
    problems = []
    types_ = stage.result_types
    if not types_ or not all(isinstance(t, type) and issubclass(t, Result) for t in types_):
        problems.append(f"the runners of '{kind}' return {types_}, not a results.Result")
    if kind not in render.RENDERERS:
        problems.append(f"no renderer for '{kind}'")
    return problems


@pytest.mark.parametrize("kind", list(STAGES))
def test_every_declared_stage_has_configs_a_result_type_and_a_renderer(kind):
    assert contract_problems(kind) == []


def test_every_stage_module_registers_a_declared_stage():
    """Importing every module of the package: a module registering an undeclared kind fails."""
    for info in pkgutil.iter_modules(ernie_compress.stages.__path__):
        importlib.import_module(f"ernie_compress.stages.{info.name}")
    assert set(registry._CONFIGS) == set(STAGES)


def test_an_undeclared_stage_cannot_register():
    with pytest.raises(LookupError, match="stage 'shrink' is not declared: add a StageDef"):
        register("shrink", ShrinkConfig)


def test_the_lists_of_stages_are_the_declaration_order():
    order = [stage.kind for stage in registry.DECLARED]
    assert list(STAGES) == order
    listed = CliRunner().invoke(app, ["--help"], terminal_width=200).output
    assert [listed.index(f" {kind} ") for kind in order] == sorted(listed.index(f" {kind} ") for kind in order)


@dataclass
class ShrinkConfig:
    """A toy stage's config."""

    checkpoint: Path = option(argument=True, scope="cli", source="from", help="The checkpoint to shrink.")
    out: Path = option(flag="--out", short="-o", scope="cli", help="Output directory.")
    factor: float = option(2.0, above=0, help="How much smaller.")
    threads: int | None = option(None, scope="run", help="CPU threads.")


@dataclass(kw_only=True)
class ShrinkResult(Result):
    out: str
    factor: float
    stage: str = "shrink"


def shrink(cfg: ShrinkConfig) -> ShrinkResult:
    Path(cfg.out).mkdir(parents=True)
    return ShrinkResult(out=str(cfg.out), factor=cfg.factor)


def untyped_shrink(cfg: ShrinkConfig) -> dict[str, Any]:
    return {"out": str(cfg.out)}


def render_shrink(result: dict[str, Any]) -> None:
    print(f"shrunk by {result['factor']} into {result['out']}")


@pytest.fixture
def toy_stage(monkeypatch):
    """Declare a stage the way a new one is (a StageDef), leaving the real registry as it was."""
    monkeypatch.setitem(STAGES, "shrink", StageDef("shrink", "Shrink a checkpoint (a toy stage).", needs_fp32=False))
    monkeypatch.setattr(registry, "_CONFIGS", dict(registry._CONFIGS))
    monkeypatch.setattr(registry, "_RUNNERS", dict(registry._RUNNERS))
    monkeypatch.setattr(render, "RENDERERS", dict(render.RENDERERS))


def test_the_contract_names_what_a_new_stage_lacks(toy_stage):
    assert contract_problems("shrink") == ["stage 'shrink' is declared but has no module: write "
                                           "ernie_compress.stages.shrink"]
    register("shrink", ShrinkConfig)(untyped_shrink)
    assert contract_problems("shrink") == [
        "the runners of 'shrink' return (dict[str, typing.Any],), not a results.Result", "no renderer for 'shrink'"]
    register("shrink", ShrinkConfig)(shrink)
    assert contract_problems("shrink") == ["no renderer for 'shrink'"]
    render.renders("shrink")(render_shrink)
    assert contract_problems("shrink") == []


def test_a_declared_registered_rendered_stage_is_a_command_and_a_recipe_stage(toy_stage, tmp_path):
    """Nothing else to edit: the command line, its --help and recipes pick the stage up."""
    register("shrink", ShrinkConfig)(shrink)
    render.renders("shrink")(render_shrink)
    cli = CliRunner()
    assert "Shrink a checkpoint (a toy stage)." in cli.invoke(app, ["--help"], terminal_width=200).output
    assert "How much smaller" in cli.invoke(app, ["shrink", "--help"], terminal_width=200).output
    shown = cli.invoke(app, ["shrink", "ckpt", "--out", str(tmp_path / "a"), "--factor", "3"])
    assert shown.exit_code == 0 and f"shrunk by 3.0 into {tmp_path / 'a'}" in shown.output
    as_json = cli.invoke(app, ["--json", "shrink", "ckpt", "--out", str(tmp_path / "b")])
    assert json.loads(as_json.stdout) == {"out": str(tmp_path / "b"), "factor": 2.0, "stage": "shrink"}
    text = ("task: demo:sentiment\nstages:\n  - train: {preset: tiny}\n  - quantize: {qat: int8}\n"
            "  - shrink: {factor: 4}\n")
    recipe = parse_recipe(text, "r.yaml")
    assert (recipe.stages[-1].source, recipe.stages[-1].options) == ("quantize", {"factor": 4})
    STAGES["shrink"] = dataclasses.replace(STAGES["shrink"], needs_fp32=True)  # the recipe rule is the declaration's
    with pytest.raises(UserError, match="r.yaml:5: 'shrink' after quantization \\('quantize'\\) is not possible"):
        parse_recipe(text, "r.yaml")
    with pytest.raises(UserError, match="r.yaml:3: 'factor' of stage 'shrink' must be float"):
        parse_recipe("task: demo:sentiment\nstages:\n  - shrink: {factor: big}\n", "r.yaml")
