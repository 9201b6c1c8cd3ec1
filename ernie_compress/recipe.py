"""Recipes: a strict YAML description of a compression run, validated before any work starts.

    name: demo
    task: demo:sentiment          # or tnews/afqmc/text/text-pair with `data: DIR`
    seed: 42
    stages:
      - train:    {preset: demo-teacher, epochs: 2}
      - distill:  {student: demo-mini, epochs: 2}          # teacher: the previous checkpoint
      - prune:    {params: 0.15, recover_epochs: 1}
      - quantize: {qat: int8, epochs: 1}
      - export:   {format: onnx}
      - evaluate: {batch_sizes: [1, 32]}

Each stage is a one-key mapping ``{kind: options}``; the options are the stage's CLI options
(``ernie-compress KIND --help``) in snake_case. A stage reads the checkpoint written by the stage
before it unless it names another with ``from`` (distill: ``teacher``); ``name`` sets its output
folder (default: its kind, numbered if repeated). Unknown keys, wrong types and impossible orders
(pruning or distilling a quantized model, exporting before any checkpoint) are refused with the
key and line, in the manner of nanoGPT's configurator.
"""

from __future__ import annotations

import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .errors import UserError
from .options import Option, OptionError, coerce_values
from .stages import STAGES, StageDef, config_for, stage_options
from .training_loop import has_train_state


def run_level_options() -> dict[str, Option]:
    """The options a recipe sets once at the top for every stage (``scope="run"``; a stage may
    set its own value)."""
    return {o.name: o for kind in STAGES for o in stage_options(kind).values() if o.spec.scope == "run"}


def recipe_options(kind: str) -> dict[str, Option]:
    """The keys a recipe stage of this kind accepts (besides ``name`` and its input)."""
    return {n: o for n, o in stage_options(kind).items() if o.spec.scope in ("stage", "run")}


TOP_LEVEL = {"name": str, "stages": list, "description": str}


@dataclass
class StageSpec:
    kind: str
    name: str
    options: dict[str, Any]
    line: int
    source: str | None = None  # the stage whose output it reads


@dataclass
class Recipe:
    name: str
    task: str | None
    data: str | None
    seed: int
    threads: int | None
    stages: list[StageSpec] = field(default_factory=list)
    text: str = ""
    settings: dict[str, Any] = field(default_factory=dict)  # every top-level run key given (device, ...)


def _type_ok(value: Any, annotation: Any) -> bool:
    if annotation is Any:
        return True
    origin = typing.get_origin(annotation)
    if origin in (typing.Union, types.UnionType):
        return any(_type_ok(value, a) for a in typing.get_args(annotation))
    if annotation is type(None):
        return value is None
    if origin in (list, tuple):
        inner = typing.get_args(annotation)
        return isinstance(value, list) and all(_type_ok(v, inner[0]) for v in value) if inner else isinstance(value, list)
    if annotation is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if annotation is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if annotation is Path:
        return isinstance(value, str)
    return isinstance(value, annotation)


def _type_name(annotation: Any) -> str:
    return getattr(annotation, "__name__", None) or str(annotation).replace("typing.", "")


def _load_yaml_with_lines(text: str, where: str):
    import yaml

    try:
        node = yaml.compose(text)
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        line = f" line {mark.line + 1}" if mark else ""
        raise UserError(f"{where}:{line} invalid YAML ({getattr(exc, 'problem', exc)})") from None
    return node, data


def _is_mapping(node) -> bool:
    import yaml

    return isinstance(node, yaml.MappingNode)


def _key_lines(mapping_node) -> dict[str, int]:
    if not _is_mapping(mapping_node):
        return {}
    return {k.value: k.start_mark.line + 1 for k, _ in mapping_node.value}


def parse_recipe(text: str, where: str = "recipe") -> Recipe:
    """Parse and validate a recipe (raises :class:`UserError` naming the key and line)."""
    node, data = _load_yaml_with_lines(text, where)
    if not isinstance(data, dict):
        raise UserError(f"{where}: a recipe is a YAML mapping with 'task' and 'stages'")
    run_level = run_level_options()
    _check_top_level(data, _key_lines(node), run_level, where)
    stages_raw = data.get("stages")
    if not stages_raw:
        raise UserError(f"{where}: 'stages' must list at least one stage")
    stage_nodes = next(v for k, v in node.value if k.value == "stages").value
    recipe = Recipe(name=str(data.get("name") or Path(where).stem), task=data.get("task"),
                    data=data.get("data"), seed=int(data.get("seed", run_level["seed"].default)),
                    threads=data.get("threads"), text=text,
                    settings={k: v for k, v in data.items() if k in run_level and v is not None})
    produced = _Produced()
    for raw, snode in zip(stages_raw, stage_nodes):
        spec, option_lines = _parse_stage(raw, snode, produced, where)
        _check_stage(recipe, spec, option_lines, where)
        produced.add(spec)
        recipe.stages.append(spec)
    return recipe


def _check_top_level(data: dict[str, Any], lines: dict[str, int], run_level: dict[str, Option], where: str) -> None:
    """The recipe's top-level keys: its own (name, stages, description) and the run-level options."""
    for key, value in data.items():
        if key not in TOP_LEVEL and key not in run_level:
            raise UserError(f"{where}:{lines.get(key, '?')}: unknown key '{key}' "
                            f"(known: {', '.join([*TOP_LEVEL, *run_level])})")
        if key in TOP_LEVEL and value is not None and not isinstance(value, TOP_LEVEL[key]):
            raise UserError(f"{where}:{lines.get(key, '?')}: '{key}' must be a {TOP_LEVEL[key].__name__}, "
                            f"got {type(value).__name__}")
        if key in run_level and value is not None and not _type_ok(value, run_level[key].type):
            raise UserError(f"{where}:{lines.get(key, '?')}: '{key}' must be "
                            f"{_type_name(run_level[key].type)}, got {value!r}")


def _parse_stage(raw: Any, snode, produced: _Produced, where: str) -> tuple[StageSpec, dict[str, int]]:
    """One entry of ``stages``: its kind and checked options, its folder name and the checkpoint it
    reads; also the line of each option key."""
    line = snode.start_mark.line + 1
    if not isinstance(raw, dict) or len(raw) != 1:
        raise UserError(f"{where}:{line}: a stage is a one-key mapping like '- train: {{...}}'")
    kind, options = next(iter(raw.items()))
    if kind not in STAGES:
        raise UserError(f"{where}:{line}: unknown stage '{kind}' (known: {', '.join(STAGES)})")
    if not isinstance(options or {}, dict):
        raise UserError(f"{where}:{line}: the options of '{kind}' must be a mapping")
    options = dict(options or {})
    option_lines = _key_lines(snode.value[0][1]) if _is_mapping(snode) else {}
    name = options.pop("name", None)
    source_key = next((o.spec.source for o in stage_options(kind).values() if o.spec.source), None)
    source = options.pop(source_key, None) if source_key else None
    _check_stage_keys(kind, options, option_lines, line, source_key, where)
    name = produced.unique_name(name or kind, line, where)
    reads = produced.source_of(STAGES[kind], name, options, source, line, where)
    return StageSpec(kind=kind, name=name, options=options, line=line, source=reads), option_lines


def _check_stage_keys(kind: str, options: dict[str, Any], option_lines: dict[str, int], line: int,
                      source_key: str | None, where: str) -> None:
    """Every option key of a stage is one of its recipe options, with a value of the option's type."""
    schema = recipe_options(kind)
    known = sorted(schema) + ["name"] + ([source_key] if source_key else [])
    for key, value in options.items():
        key_line = option_lines.get(key, line)
        if key not in schema:
            raise UserError(f"{where}:{key_line}: unknown option '{key}' for stage '{kind}' "
                            f"(known: {', '.join(known)})")
        if not _type_ok(value, schema[key].type):
            raise UserError(f"{where}:{key_line}: '{key}' of stage '{kind}' must be "
                            f"{_type_name(schema[key].type)}, got {value!r}")


@dataclass
class _Produced:
    """What the stages parsed so far produced: folder names, checkpoints, which are quantized."""

    names: set[str] = field(default_factory=set)
    checkpoints: dict[str, StageSpec] = field(default_factory=dict)
    last: StageSpec | None = None  # the checkpoint a stage reads unless it names another
    quantized: set[str] = field(default_factory=set)

    def unique_name(self, base: Any, line: int, where: str) -> str:
        """The stage's folder: its ``name`` or kind, numbered if taken (``prune-2``)."""
        name, n = base, 2
        while name in self.names:
            name, n = f"{base}-{n}", n + 1
        if not isinstance(name, str) or "/" in name:
            raise UserError(f"{where}:{line}: stage name must be a plain folder name")
        self.names.add(name)
        return name

    def source_of(self, stage: StageDef, name: str, options: dict[str, Any], source: str | None, line: int,
                  where: str) -> str | None:
        """What the stage reads: None when it builds a fresh model, else an earlier checkpoint's name
        (the last one unless ``source`` names one) or, where the stage allows it, a path or model
        name outside the run."""
        fresh_option = stage.fresh_with is not None and bool(options.get(stage.fresh_with))
        if not stage.reads_checkpoint or fresh_option:
            return None
        if source is None:
            reads = self.last
        elif source in self.checkpoints:
            reads = self.checkpoints[source]
        elif stage.external_source:
            return source
        else:
            raise UserError(f"{where}:{line}: stage '{name}' reads from '{source}', which no earlier "
                            f"checkpoint stage produces")
        if reads is None:
            raise UserError(f"{where}:{line}: stage '{name}' ({stage.kind}) needs a checkpoint before it")
        if reads.name in self.quantized and stage.needs_fp32:
            raise UserError(f"{where}:{line}: '{stage.kind}' after quantization ('{reads.name}') is not possible: "
                            f"prune, distill and train FP32 models, then quantize")
        return reads.name

    def add(self, spec: StageSpec) -> None:
        stage = STAGES[spec.kind]
        if stage.writes_checkpoint:
            self.last = spec
            self.checkpoints[spec.name] = spec
            if stage.writes_quantized:
                self.quantized.add(spec.name)


def stage_values(recipe: Recipe, stage: StageSpec, source: Path | None, out: Path) -> dict[str, Any]:
    """The option values of one recipe stage: the recipe's run-level keys (task, data, seed,
    threads, device, ...), the stage's own keys over them, and the paths the run decides (its
    input, ``out``)."""
    opts = stage_options(stage.kind)
    values: dict[str, Any] = {}
    for name, value in recipe.settings.items():
        if name in opts and value is not None:
            values[name] = value
    values.update(stage.options)
    for opt in opts.values():
        if opt.spec.source and source is not None:
            values[opt.name] = str(source) if opt.type is str else source
    if "out" in opts:
        values["out"] = out
    if "path" in opts:  # evaluate: the run directory
        values["path"] = out.parent
    if "resume" in opts:  # a stage interrupted in an earlier attempt continues from its saved state
        values["resume"] = has_train_state(out)
    return coerce_values(opts, values)


def stage_config(recipe: Recipe, stage: StageSpec, source: Path | None, out: Path):
    """The config a recipe stage runs with (raises :class:`OptionError` naming recipe keys)."""
    return config_for(stage.kind, stage_values(recipe, stage, source, out), given=set(stage.options))


def _check_stage(recipe: Recipe, spec: StageSpec, option_lines: dict[str, int], where: str) -> None:
    """Build the stage's config now (with stand-in paths), so a bad value or combination is refused
    before any stage runs, naming the recipe key and its line."""
    stand_in = Path("<run>") / spec.name
    try:
        stage_config(recipe, spec, Path("<input>") if spec.source else None, stand_in)
    except OptionError as exc:
        named = [n for n in exc.names if n in spec.options]
        line = option_lines.get(named[0], spec.line) if named else spec.line
        message = exc.render(lambda n: f"'{n}'")
        raise UserError(f"{where}:{line}: stage '{spec.name}' ({spec.kind}): {message}") from None


def load_recipe(path: str | Path) -> Recipe:
    path = Path(path).expanduser()
    if not path.is_file():
        raise UserError(f"recipe {path} does not exist")
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise UserError(f"{path}: not UTF-8 text") from None
    return parse_recipe(text, str(path))


def checkpoint_stages(recipe: Recipe) -> list[StageSpec]:
    """The checkpoints a report compares: those of stages declared ``compared`` (not pre-training),
    and not a training round that only another round of its kind continues (the teacher is the
    last round)."""
    readers: dict[str, set[str]] = {}
    for s in recipe.stages:
        if s.source:
            readers.setdefault(s.source, set()).add(s.kind)
    return [s for s in recipe.stages if STAGES[s.kind].writes_checkpoint and STAGES[s.kind].compared
            and not (STAGES[s.kind].rounds and readers.get(s.name) == {s.kind})]
