"""The stage registry: what each stage is, declared once here, and which function runs its configs.

A stage is declared by one :class:`StageDef` in :data:`DECLARED`, in the order a run uses the
stages (``--help``, recipes and the README list them so): its command and recipe key, its
one-line summary and the properties the recipe checker, the recipe runner and the command line
read (does it write a checkpoint, may it follow quantization, what its ``--latency`` flag times).
Everything that lists stages (:data:`STAGES`, the CLI's commands, the recipe schema, the option
tables) is derived from this table, and reading it imports nothing heavy: ``ernie-compress
--help`` lists the stages without importing their modules.

The stage's module, ``stages/<kind>.py``, declares its config class(es) and registers the
function that runs them with :func:`register`, as torchao's ``register_quantize_module_handler``
does; :func:`run_stage` dispatches on ``type(config)``. The runner's return annotation is the
stage's result type (``results.py``). A stage with several methods (``quantize``: QAT, PTQ,
FP16, weight-only) registers one config class per method; its command and recipe key offer the
union of their options, and the option the user gives (``--qat``, ``--ptq``, ...) picks the
class (:func:`config_for`). How a stage's result looks on a terminal is ``render.py``'s part
(``@renders(kind)``); the contract tests in ``tests/stages/test_registry.py`` check that every
declared stage has a module, configs, a result type and a renderer.
"""

from __future__ import annotations

import dataclasses
import importlib
import types
import typing
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from ..options import Option, OptionError, help_order, options

if TYPE_CHECKING:
    from ..results import Result

# (label, result key) of each of the two models a stage's ``--latency`` flag times
LatencyPair = tuple[tuple[str, str], tuple[str, str]]


@dataclass(frozen=True)
class StageDef:
    """What the command line, the recipe checker and the recipe runner know of a stage before its
    module is imported."""

    kind: str  # the CLI command, the recipe key and the module (stages/<kind>.py)
    summary: str  # the command's one-line help
    writes_checkpoint: bool = True  # False: export, evaluate (a later stage cannot read their output)
    reads_checkpoint: bool = True  # False: it always builds a fresh model (pretrain)
    fresh_with: str | None = None  # an option that, when given, builds a fresh model instead (train: preset)
    external_source: bool = False  # its recipe input may name a checkpoint outside the run (distill's teacher)
    needs_fp32: bool = True  # a recipe refuses it after a quantized checkpoint (it trains or re-quantizes)
    writes_quantized: bool = False  # its checkpoint is quantized: stages that need FP32 cannot follow
    compared: bool = True  # its checkpoint is a variant the run's report compares (not pretrain's)
    rounds: bool = False  # a run of it continued only by the same kind is one training: compare the last
    reports_run: bool = False  # in a recipe: measures every variant and writes the report; no folder, runs each time
    latency: LatencyPair | None = None  # the two models ``--latency`` times after the stage (a CLI flag)
    implementation: str | None = None  # its module where not stages/<kind>.py (a stage that drives recipes)

    @property
    def module(self) -> str:
        return self.implementation or f"{__package__}.{self.kind}"

    @property
    def configs(self) -> tuple[type, ...]:
        """The config class(es) its module registers (importing the module on first use)."""
        return _configs(self.kind)

    @property
    def runners(self) -> dict[type, Callable[[Any], Result]]:
        """Config class -> the function that runs it."""
        return {cls: _RUNNERS[cls] for cls in self.configs}

    @property
    def result_types(self) -> tuple[type, ...]:
        """The result class(es) its runners return: their return annotations (a union names several)."""
        found: dict[type, None] = {}
        for runner in self.runners.values():
            hint = typing.get_type_hints(runner).get("return")
            if typing.get_origin(hint) in (typing.Union, types.UnionType):
                found.update(dict.fromkeys(typing.get_args(hint)))
            elif hint is not None:
                found[hint] = None
        return tuple(found)


DECLARED: tuple[StageDef, ...] = (
    StageDef("pretrain", "Masked-LM pre-training of a fresh encoder on unlabeled text (then `train --from` it).",
             reads_checkpoint=False, compared=False),
    StageDef("train", "Train a model from a preset (or fine-tune a checkpoint) on a task; keep the best epoch.",
             fresh_with="preset", rounds=True),
    StageDef("distill", "Distill a large teacher into a small student (logits, hidden states, MiniLM relations).",
             external_source=True, latency=(("teacher", "teacher"), ("student", "out"))),
    StageDef("prune", "Remove the least important attention heads (and FFN neurons), then recover by fine-tuning.",
             latency=(("parent", "parent"), ("pruned", "out"))),
    StageDef("quantize", "INT8 quantization (QAT or PTQ), weight-only INT8/INT4, or FP16 weights; ends with the "
                         "held-out metric against the FP32 parent.", writes_quantized=True),
    StageDef("export", "Export a checkpoint to a Paddle static graph and/or ONNX, verified against dygraph.",
             writes_checkpoint=False, needs_fp32=False),
    StageDef("evaluate", "Measure the task metric on held-out data; for an export also latency p50/p95/p99 and QPS.",
             writes_checkpoint=False, needs_fp32=False, reports_run=True),
    StageDef("search", "Search distillation, pruning and precision for the best model inside a latency / size / "
                       "accuracy budget: a Pareto frontier with every point's recipe.",
             writes_checkpoint=False, implementation="ernie_compress.search.stage"),
)
STAGES: dict[str, StageDef] = {stage.kind: stage for stage in DECLARED}


_CONFIGS: dict[str, tuple[type, ...]] = {}  # kind -> the config classes its module registered
_RUNNERS: dict[type, Callable[[Any], Result]] = {}


def register(kind: str, *configs: type):
    """Decorator: ``fn`` runs every config in ``configs``, the methods of the declared stage ``kind``
    (a stage may register several runners, one per method, in one or more calls)."""
    if kind not in STAGES:
        raise LookupError(f"stage '{kind}' is not declared: add a StageDef for it to DECLARED in stages/registry.py")

    def wrap(fn: Callable[[Any], Result]):
        for cls in configs:
            _RUNNERS[cls] = fn
        _CONFIGS[kind] = _CONFIGS.get(kind, ()) + configs
        return fn

    return wrap


def _configs(kind: str) -> tuple[type, ...]:
    """The config classes of stage ``kind``, importing ``stages/<kind>.py`` on first use."""
    module = STAGES[kind].module
    if kind not in _CONFIGS:
        try:
            importlib.import_module(module)
        except ModuleNotFoundError as exc:
            if exc.name != module:
                raise
            raise LookupError(f"stage '{kind}' is declared but has no module: write {module}") from None
    if not _CONFIGS.get(kind):
        raise LookupError(f"{module} registers no runner: decorate its function with "
                          f"@register({kind!r}, ItsConfig)")
    return _CONFIGS[kind]


def run_stage(config: Any) -> Result:
    """Run the stage whose config this is; returns its result. A stage with process options (training,
    GPTQ calibration) first takes its device, and with ``nproc`` > 1 or ``nnodes`` > 1 (outside a
    launcher's processes) runs on that many ranks."""
    from ..distributed import init as init_distributed
    from ..distributed import run_nodes, run_workers
    from ..paddle_env import training_device
    from .common import AcceleratorOptions, ProcessOptions

    try:
        runner = _RUNNERS[type(config)]
    except KeyError:
        raise TypeError(f"no stage runs {type(config).__name__}") from None
    if isinstance(config, ProcessOptions):
        # a training stage takes its device; the others (calibration) the default, and import Paddle only
        # to start several processes (a streamed quantize of one process must not pay for it)
        device = training_device(config.device) if isinstance(config, AcceleratorOptions) else None
        if isinstance(config, AcceleratorOptions):
            config.check_amp(device)
        here = init_distributed()  # a launcher's process joins its group first
        if here.size > 1 and config.nproc not in (1, here.size):
            raise OptionError(f"{{nproc}} {config.nproc} under a launcher that started {here.size} processes: "
                              f"leave {{nproc}} out", "nproc")
        if config.nnodes > 1 and here.size == 1:
            return run_nodes(run_stage, config, config.nproc, config.nnodes, config.master, config.node_rank,
                             threads=config.threads)
        if config.nproc > 1 and here.size == 1:
            return run_workers(run_stage, config, config.nproc, device or training_device(None),
                               threads=config.threads)
    return runner(config)


def stage_options(kind: str) -> dict[str, Option]:
    """The options of stage ``kind`` in the order ``--help`` shows them (``options.help_order``).
    For a stage with several methods,
    the union of theirs, where a method selector (``qat``) defaults to None / False since the user
    picks one."""
    merged: dict[str, Option] = {}
    configs = STAGES[kind].configs
    for cls in configs:
        for opt in options(cls):
            if opt.spec.selects:
                opt = dataclasses.replace(opt, default=False if opt.is_bool else None)
            seen = merged.get(opt.name)
            if seen is not None and (seen.default, seen.spec) != (opt.default, opt.spec):
                raise AssertionError(f"{kind}: option '{opt.name}' is declared differently by its methods")
            merged[opt.name] = opt
    ordered = help_order(list(merged.values()), configs[0].__module__)
    return {o.name: o for o in ordered}


def selectors(kind: str) -> dict[str, type]:
    """Method selector option -> the config class it picks (empty for a one-method stage)."""
    return {o.name: cls for cls in STAGES[kind].configs for o in options(cls) if o.spec.selects}


def config_for(kind: str, values: dict[str, Any], given: set[str] | None = None) -> Any:
    """The config of stage ``kind`` from option values. With several methods, the one selector
    given picks the class; an option of another method is refused when ``given`` names it (or,
    without ``given``, when it differs from its default)."""
    configs = STAGES[kind].configs
    if len(configs) == 1:
        return configs[0](**values)
    picks = selectors(kind)
    chosen = [name for name in picks if values.get(name) not in (None, False)]
    if len(chosen) != 1:
        raise OptionError("pass exactly one of " + ", ".join("{%s}" % n for n in picks), *picks)
    cls = picks[chosen[0]]
    own = {o.name for o in options(cls)}
    union = stage_options(kind)
    for name, value in values.items():
        if name in own or name not in union:
            continue
        if (name in given) if given is not None else (value != union[name].default and name not in picks):
            raise OptionError(f"{{{name}}} does not apply to {{{chosen[0]}}}", name, chosen[0])
    kept = {k: v for k, v in values.items() if k in own or k not in union}
    return cls(**kept)
