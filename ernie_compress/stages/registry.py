"""The stage registry: which function runs a config, keyed by the config's type.

As torchao's ``register_quantize_module_handler``: a stage module declares its config class(es)
and registers the function that runs them; :func:`run_stage` dispatches on ``type(config)``. A
stage with several methods (``quantize``: QAT, PTQ, FP16) registers one config class per method;
its command and recipe key offer the union of their options, and the option the user gives
(``--qat``, ``--ptq``, ``--fp16``) picks the class (:func:`config_for`).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from ..distributed import init as init_distributed
from ..distributed import run_nodes, run_workers
from ..options import Option, OptionError, help_order, options
from ..paddle_env import training_device
from ..results import Result
from .common import AcceleratorOptions


@dataclass(frozen=True)
class StageDef:
    kind: str  # the CLI command and the recipe key
    configs: tuple[type, ...]  # one config class, or one per method
    summary: str  # the command's one-line help
    writes_checkpoint: bool = True  # False: export, evaluate


_RUNNERS: dict[type, Callable[[Any], dict[str, Any]]] = {}
STAGES: dict[str, StageDef] = {}


def register(kind: str, *configs: type, summary: str, writes_checkpoint: bool = True):
    """Decorator: ``fn`` runs every config in ``configs``, the methods of stage ``kind``."""

    def wrap(fn: Callable[[Any], dict[str, Any]]):
        for cls in configs:
            _RUNNERS[cls] = fn
        STAGES[kind] = StageDef(kind, STAGES[kind].configs + configs if kind in STAGES else configs,
                                summary, writes_checkpoint)
        return fn

    return wrap


def run_stage(config: Any) -> Result:
    """Run the stage whose config this is; returns its result. A training stage first takes its
    device, and with ``nproc`` > 1 (outside a launcher's processes) runs on that many ranks."""
    try:
        runner = _RUNNERS[type(config)]
    except KeyError:
        raise TypeError(f"no stage runs {type(config).__name__}") from None
    if isinstance(config, AcceleratorOptions):
        device = training_device(config.device)
        config.check_amp(device)
        here = init_distributed()  # a launcher's process joins its group first
        if here.size > 1 and config.nproc not in (1, here.size):
            raise OptionError(f"{{nproc}} {config.nproc} under a launcher that started {here.size} processes: "
                              f"leave {{nproc}} out", "nproc")
        if config.nnodes > 1 and here.size == 1:
            return run_nodes(run_stage, config, config.nproc, config.nnodes, config.master, config.node_rank,
                             threads=config.threads)
        if config.nproc > 1 and here.size == 1:
            return run_workers(run_stage, config, config.nproc, device, threads=config.threads)
    return runner(config)


def stage_options(kind: str) -> dict[str, Option]:
    """The options of stage ``kind`` in the order ``--help`` shows them (``options.help_order``).
    For a stage with several methods,
    the union of theirs, where a method selector (``qat``) defaults to None / False since the user
    picks one."""
    merged: dict[str, Option] = {}
    for cls in STAGES[kind].configs:
        for opt in options(cls):
            if opt.spec.selects:
                opt = dataclasses.replace(opt, default=False if opt.is_bool else None)
            seen = merged.get(opt.name)
            if seen is not None and (seen.default, seen.spec) != (opt.default, opt.spec):
                raise AssertionError(f"{kind}: option '{opt.name}' is declared differently by its methods")
            merged[opt.name] = opt
    ordered = help_order(list(merged.values()), STAGES[kind].configs[0].__module__)
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

