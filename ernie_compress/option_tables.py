"""The option tables of docs/options.md, generated from the stage configs (``options.py``).

One table per stage: the recipe key (= the CLI flag in snake_case), the flag, the default and the
help text; options only the command line has (``--out``, ``--overwrite``, ...) are marked, and
the run-level ones (task, data, seed, threads) are listed once, for the top of a recipe.
``benchmarks/readme_tables.py`` writes this into ``benchmarks/results/options.md`` and docs/options.md.
"""

from __future__ import annotations

from .options import Option, command_options
from .recipe import run_level_options
from .runtime.bench import BenchConfig
from .stages import STAGES, stage_options


def _default(opt: Option) -> str:
    if opt.required:
        return "required"
    if opt.spec.cli_default is not None:
        return f"`{opt.spec.cli_default}`"
    return "" if opt.default is None else f"`{opt.default}`"


def _cell(text: str) -> str:
    return text.replace("|", "\\|")


def _row(opt: Option, where: str) -> str:
    flag = opt.cli_name() if opt.spec.argument else (opt.spec.flag or opt.flag).replace("/", " / ")
    if opt.spec.source:  # a recipe stage reads the previous stage's output unless this key names one
        key, where = f"{opt.spec.source}", "both (recipe: default the previous stage)"
    else:
        key = opt.name
    return f"| `{key}` | `{flag}` | {where} | {_default(opt)} | {_cell(opt.spec.help)} |"


HEADER = "| key | flag | where | default | meaning |\n|---|---|---|---|---|"


def markdown() -> str:
    """Every stage's options as Markdown tables."""
    parts = ["Top of a recipe (every stage shares them, a stage may set its own; on the command line, options "
             "of each command):", "",
             HEADER, *(_row(o, "run") for o in run_level_options().values()), ""]
    for kind, stage in STAGES.items():
        rows = [_row(o, "CLI only" if o.spec.scope == "cli" else "both")
                for o in stage_options(kind).values() if o.spec.scope != "run"]
        parts += [f"`{kind}`: {stage.summary}", "", HEADER, *rows, ""]
    bench = command_options(BenchConfig).values()
    parts += ["`bench` (command line only): serving-like load on an export.", "", HEADER,
              *(_row(o, "CLI") for o in bench), ""]
    return "\n".join(parts)


if __name__ == "__main__":  # pragma: no cover
    print(markdown())
