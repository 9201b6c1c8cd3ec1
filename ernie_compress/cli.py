"""The ``ernie-compress`` command line: parse options, build a config, run one stage.

The stage commands (train, pretrain, distill, prune, quantize, export, evaluate) are generated
from the stage configs (``stages/``): each option's flag, type, default and help come from its
field (``options.py``), so the command line and recipes cannot disagree. ``--help`` lists them
from the stage declarations alone (``stages/registry.py``); a command's config, and with it NumPy,
the models and the stage's module, is imported when the command runs or shows its own help, and
Paddle and onnxruntime only inside the stage functions, so ``--help`` answers at once. Errors the
user can fix are one line on stderr with exit code 2 (``--debug`` shows the traceback); ``--json``
prints one JSON object with the result on stdout. Global options go before or after the command.
"""

from __future__ import annotations

import contextlib
import dataclasses
import inspect
import json
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any, Optional

import typer
from typer.core import TyperCommand, TyperGroup

from . import __version__
from .errors import UserError
from .options import Option, OptionError, OptionSpec, command_options
from .stages import STAGES, config_for, run_stage, stage_options

GLOBAL_FLAGS = ("--debug", "--json", "--quiet", "-q", "--trust-pickle", "--ignore-integrity")
GLOBAL_EPILOG = ("Global options (--json, --quiet, --debug, --trust-pickle, --ignore-integrity) go before or "
                 "after the command; see `ernie-compress --help`.")


class _LazyCommand(TyperCommand):
    """A command that ``ernie-compress --help`` lists by its name and summary alone. Its options
    come from a config whose module imports NumPy, the models and more, so the command is built
    (:attr:`build`) only when it runs or shows its own help."""

    def __init__(self, name: str, summary: str, build: Callable[[], TyperCommand]):
        super().__init__(name, help=summary)
        self.build = build


class _Commands(TyperGroup):
    """The command group: the commands built from configs (the stages, ``bench``, ``generate``;
    :func:`_lazy_commands`) first, built when used; the global flags accepted after the command
    too (``ernie-compress train ... --quiet``): they are moved in front of it before parsing
    (never past a ``--``)."""

    def __init__(self, *args: Any, commands: dict[str, TyperCommand] | None = None, **kwargs: Any):
        super().__init__(*args, commands={**_lazy_commands(), **(commands or {})}, **kwargs)

    def parse_args(self, ctx, args):
        end = args.index("--") if "--" in args else len(args)
        moved = [a for a in args[:end] if a in GLOBAL_FLAGS]
        kept = [a for a in args[:end] if a not in GLOBAL_FLAGS]
        return super().parse_args(ctx, moved + kept + args[end:])

    def resolve_command(self, ctx, args):
        name, command, rest = super().resolve_command(ctx, args)
        if isinstance(command, _LazyCommand):
            command = self.commands[name] = command.build()
        return name, command, rest


app = typer.Typer(
    name="ernie-compress", cls=_Commands,
    help="Make ERNIE models small and fast: train, distill, prune, quantize, export, evaluate.",
    no_args_is_help=True, add_completion=False, pretty_exceptions_enable=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)


class _Settings:
    debug = False
    json = False
    quiet = False


settings = _Settings()



def _version(value: bool) -> None:
    if value:
        typer.echo(f"ernie-compress {__version__}")
        raise typer.Exit()


@app.callback()
def main(
    debug: Annotated[bool, typer.Option("--debug", help="Show tracebacks on errors.")] = False,
    json_out: Annotated[bool, typer.Option("--json", help="Print the result as one JSON object on stdout.")] = False,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No progress bars or status lines.")] = False,
    trust_pickle: Annotated[bool, typer.Option(
        "--trust-pickle", help="Load model_state.pdparams with full pickle (can run code: only for files "
                               "you trust). By default only numpy arrays are unpickled.")] = False,
    ignore_integrity: Annotated[bool, typer.Option(
        "--ignore-integrity", help="Load weights whose sha256 differs from compression.json.")] = False,
    version: Annotated[bool, typer.Option("--version", callback=_version, is_eager=True,
                                          help="Show the version and exit.")] = False,
) -> None:
    """Every stage reads a checkpoint directory and writes a new one; `export` turns one into
    deployable files and `evaluate` checks them on a runtime. Global options may also follow the
    command."""
    settings.debug, settings.json, settings.quiet = debug, json_out, quiet
    from .checkpoint import load_policy

    load_policy.trust_pickle, load_policy.ignore_integrity = trust_pickle, ignore_integrity


def run_command(body: Callable[[], dict[str, Any]], render: Callable[[dict[str, Any]], None] | None = None,
                threads: int | None = None, name_of: Callable[[str], str] | None = None) -> None:
    """Run a command body: configure output, map errors to exit code 2, print the result.
    ``name_of`` spells an option as this command's flag in an :class:`OptionError`."""
    from . import progress
    from .distributed import world
    from .results import Result

    progress.set_enabled(not settings.quiet and world().main)  # ranks of a launcher: rank 0 speaks
    from .paddle_env import sigterm_as_interrupt

    sigterm_as_interrupt()  # SIGTERM unwinds like Ctrl-C: temporary outputs are removed
    if not settings.debug:
        import warnings

        warnings.filterwarnings("ignore")  # library chatter (paddle, setuptools) is not for users
    if threads is not None:
        if threads < 1:
            _fail("--threads must be >= 1")
        from .paddle_env import set_default_threads

        set_default_threads(threads)
    try:
        with _native_stdout_to_stderr(settings.json):
            result = body()
    except UserError as exc:
        if settings.debug:
            raise
        _fail(exc.render(name_of) if isinstance(exc, OptionError) and name_of else str(exc))
    except KeyboardInterrupt as exc:
        if settings.debug:
            raise
        hint = f" ({exc.args[0]})" if exc.args else ""
        typer.echo(f"error: interrupted; no output was written{hint}", err=True)
        raise typer.Exit(130) from None
    if not world().main or result is None:  # another rank, or a node other than node 0
        return
    if settings.json:
        typer.echo(json.dumps(result.to_dict() if isinstance(result, Result) else result, ensure_ascii=False,
                              default=str))
    elif render is not None:
        render(result)


@contextlib.contextmanager
def _native_stdout_to_stderr(active: bool):
    """With --json, stdout carries one JSON object: C++ libraries that print to file descriptor 1
    (Paddle Inference's oneDNN passes do) are sent to stderr while the command runs."""
    if not active:
        yield
        return
    sys.stdout.flush()
    try:
        saved = os.dup(1)
    except OSError:  # no real stdout (embedded use)
        yield
        return
    os.dup2(2, 1)
    try:
        yield
    finally:
        sys.stdout.flush()
        os.dup2(saved, 1)
        os.close(saved)


def _renderer(command: str) -> Callable[[dict[str, Any]], None]:
    """How ``command``'s result prints (``render.py``, imported when a command runs, not for ``--help``)."""
    from .render import renderer_for

    return renderer_for(command)


def _fail(message: str) -> None:
    typer.echo(f"error: {message}", err=True)
    raise typer.Exit(2)


# --- commands built from configs: the stages, bench, generate -------------------------------------
# The one option that belongs to the command line rather than to a stage: after a stage declared
# with ``latency`` pairs (distill, prune), time the input and the output checkpoint (a recipe's
# `evaluate` stage measures every variant).
LATENCY = Option("latency", bool, True, OptionSpec(
    flag="--latency/--no-latency", scope="cli",
    help="Afterwards, time the input and the output checkpoint on CPU (ONNX Runtime) and report the speed-up."))
BENCH_SUMMARY = "Serving-like load: dynamic batching vs one request per run (QPS, latency percentiles)."
GENERATE_SUMMARY = ("Generate text from an ERNIE 4.5 causal-LM checkpoint (KV cache; greedy or sampled), with time to "
                    "first token and tokens/s.")


def _lazy_commands() -> dict[str, _LazyCommand]:
    """Every command whose options come from a config, in the order ``--help`` lists them: the
    stages in the order a run uses them (``stages/registry.py``), then ``bench`` and ``generate``."""
    commands = {kind: _LazyCommand(kind, stage.summary, lambda kind=kind: _stage_command(kind))
                for kind, stage in STAGES.items()}
    commands["bench"] = _LazyCommand("bench", BENCH_SUMMARY, _bench_command)
    commands["generate"] = _LazyCommand("generate", GENERATE_SUMMARY, _generate_command)
    return commands


def built_command(name: str) -> TyperCommand:
    """Command ``name`` as running it builds it (e.g. to parse arguments in a test)."""
    group = typer.main.get_command(app)
    found = group.get_command(typer.Context(group), name)
    return found.build() if isinstance(found, _LazyCommand) else found


def _cli_type(opt: Option) -> Any:
    """The annotation Typer sees: comma lists and the like are text parsed by the option."""
    args = [a for a in getattr(opt.type, "__args__", ()) if a is not type(None)]
    optional = type(None) in getattr(opt.type, "__args__", ()) or opt.default is None
    base = args[0] if (optional and len(args) == 1) else opt.type
    if opt.spec.parse is not None:
        base = str
    elif getattr(base, "__origin__", None) is tuple:
        base = list[base.__args__[0]]
    return Optional[base] if optional else base


def _cli_default(opt: Option) -> Any:
    if opt.required:
        return inspect.Parameter.empty
    if opt.spec.parse is not None:
        return opt.spec.cli_default
    return list(opt.default) if isinstance(opt.default, tuple) else opt.default


def _cli_parameter(opt: Option) -> inspect.Parameter:
    spec = opt.spec
    if spec.argument:
        info = typer.Argument(help=spec.help, show_default=False, metavar=opt.name.upper())
    else:
        decls = [spec.flag or opt.flag] + ([spec.short] if spec.short else [])
        info = typer.Option(*decls, help=spec.help, show_default=not opt.required and opt.default is not None)
    return inspect.Parameter(opt.name, inspect.Parameter.KEYWORD_ONLY, default=_cli_default(opt),
                             annotation=Annotated[_cli_type(opt), info])


def _cli_values(opts: dict[str, Option], given: dict[str, Any]) -> dict[str, Any]:
    """Parsed command-line values as the config's fields take them."""
    values = {}
    for name, value in given.items():
        opt = opts.get(name)
        if opt is None:
            continue
        if opt.spec.parse is not None and isinstance(value, str):
            value = opt.spec.parse(value)
        values[name] = tuple(value) if isinstance(value, list) else value
    return values


def _config_command(name: str, opts: dict[str, Option], run: Callable[[dict[str, Any], dict[str, Any]], Any],
                    summary: str, extra: list[Option] = ()) -> TyperCommand:
    """A command whose options are ``opts`` (a config's fields) plus ``extra`` command-line ones;
    ``run`` gets the values of ``opts`` and ``given`` (everything, for ``extra``)."""
    shown = list(opts.values()) + list(extra)
    flags = {o.name: o.cli_name() for o in shown}
    render = _renderer(name)

    def command(**given: Any) -> None:
        run_command(lambda: run(_cli_values(opts, given), given), render, given.get("threads"),
                    lambda n: flags.get(n, f"--{n.replace('_', '-')}"))

    params = [_cli_parameter(o) for o in shown]
    command.__signature__ = inspect.Signature(params)
    command.__annotations__ = {p.name: p.annotation for p in params}
    command.__doc__ = summary
    command.__name__ = name
    alone = typer.Typer(add_completion=False)
    alone.command(name=name, epilog=GLOBAL_EPILOG)(command)
    return typer.main.get_command(alone)


def _stage_command(kind: str) -> TyperCommand:
    stage = STAGES[kind]
    return _config_command(kind, stage_options(kind), _run_stage_command(kind), stage.summary,
                           [LATENCY] if stage.latency else [])


def _run_stage_command(kind: str) -> Callable[[dict[str, Any], dict[str, Any]], Any]:
    def run(values: dict[str, Any], given: dict[str, Any]) -> Any:
        result = run_stage(config_for(kind, values))
        if given.get("latency"):
            result = dataclasses.replace(result, **_latency_comparison(kind, result))
        return result
    return run


def _latency_comparison(kind: str, result: Any) -> dict[str, Any]:
    from .compare import latency_comparison
    from .progress import note

    (a_name, a_key), (b_name, b_key) = STAGES[kind].latency
    note(f"measuring CPU latency of {a_name} and {b_name} (ONNX Runtime)")
    return latency_comparison((a_name, Path(result[a_key])), (b_name, Path(result[b_key])))


def _bench_command() -> TyperCommand:
    from .runtime.bench import BenchConfig, bench_export

    def run(values: dict[str, Any], given: dict[str, Any]) -> Any:
        return bench_export(BenchConfig(**values))

    return _config_command("bench", command_options(BenchConfig), run, BENCH_SUMMARY)


def _generate_command() -> TyperCommand:
    from .generate import GenerateConfig, generate

    def run(values: dict[str, Any], given: dict[str, Any]) -> Any:
        values["stream"] = values.get("stream", True) and not settings.json  # stdout carries the JSON then
        return generate(GenerateConfig(**values))

    return _config_command("generate", command_options(GenerateConfig), run, GENERATE_SUMMARY)


# --- run / demo / report ----------------------------------------------------------------------
@app.command(epilog=GLOBAL_EPILOG)
def run(
    recipe: Annotated[Path, typer.Argument(help="A recipe YAML (see recipes/).")],
    out: Annotated[Optional[Path], typer.Option("--out", "-o", help="Run directory (default: runs/NAME).")] = None,
    force: Annotated[bool, typer.Option(help="Run finished stages again instead of resuming.")] = False,
) -> None:
    """Run a recipe: each stage writes its checkpoint under the run directory; re-running resumes."""

    def body():
        from .pipeline import run_recipe

        return run_recipe(recipe, out, force)

    run_command(body, _renderer("run"))


@app.command(epilog=GLOBAL_EPILOG)
def demo(
    out: Annotated[Path, typer.Option("--out", "-o", help="Run directory.")] = Path("runs/demo"),
    force: Annotated[bool, typer.Option(help="Run finished stages again instead of resuming.")] = False,
) -> None:
    """The embedded demo: teacher -> Mini student -> pruned -> QAT int8 -> ONNX, on demo:sentiment."""

    def body():
        from .pipeline import run_recipe

        return run_recipe(Path(__file__).parent / "recipes" / "demo.yaml", out, force)

    run_command(body, _renderer("run"))


@app.command(epilog=GLOBAL_EPILOG)
def report(
    run_dir: Annotated[Path, typer.Argument(help="A run directory (from `run` or `demo`).")],
) -> None:
    """Show a run's report: params, size, accuracy and its loss, latency, QPS per variant."""

    def body():
        from .report import load_report, write_report

        result = load_report(run_dir)
        write_report(run_dir, result)  # regenerate report.md and report.png
        return result

    run_command(body, _renderer("report"))


# --- info ------------------------------------------------------------------------------------
@app.command(epilog=GLOBAL_EPILOG)
def info(
    path: Annotated[Path, typer.Argument(help=(
        "A checkpoint directory, a folder holding only a config.json, or a preset name "
        "(e.g. ernie45-21b-a3b: parameters and memory planning without weights)."))],
) -> None:
    """Architecture, parameters (total and, for MoE, active), heads and experts per layer, size on disk
    and lineage of a checkpoint."""

    def body():
        from .inspect_checkpoint import describe_checkpoint

        return describe_checkpoint(path)

    run_command(body, _renderer("info"))


if __name__ == "__main__":  # pragma: no cover
    sys.exit(app())
