"""The runtimes an export can run on, each registered with what it can run.

A runtime is data (:class:`Runtime`): its name; per model kind (``session.KINDS``) the manifest
``files`` entry it reads and how it opens a session on them (:class:`KindSupport`); the devices and
export precisions it runs; the devices where it is the default; whether it profiles operators.
:func:`open_session` is a lookup in that table, and callers ask it (:meth:`Runtime.runs`,
:func:`choose_runtime`) instead of comparing backend names, so a new runtime is one module that
calls :func:`register_runtime` (the handler-per-config registry of torchao's ``quant_api``, applied
to runtimes). The built-in ones are the ``RUNTIME`` of each module in ``BUILTIN_MODULES``, registered
in that order when the table is first read.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..errors import UserError
from .session import ENCODER, KINDS, Session

if TYPE_CHECKING:
    from .backends import RuntimeConfig

BUILTIN_MODULES = ("paddle_backend", "onnxruntime_backend")  # modules of this package; the order is --backend's


@dataclass(frozen=True)
class SessionRequest:
    """Everything an opener gets: the export's files for the kind asked, and how to run them."""

    export_dir: Path
    files: dict[str, Any]  # the manifest's ``files`` entry this runtime reads for ``kind``
    config: RuntimeConfig
    kind: str = ENCODER
    profile_dir: Path | None = None  # config.profile: where the runtime may write its trace
    pad_id: int = 0  # decoders: the id left padding uses
    host_cache: bool = False  # decoders: keep the KV cache in host memory (numpy) even on an accelerator


@dataclass(frozen=True)
class KindSupport:
    """How a runtime runs one model kind: what it reads from the export, and how it opens it."""

    entry: str  # the manifest ``files`` key: "onnx", "paddle", "decoder"
    what: str  # how a message names those files: "ONNX model"
    export_format: str  # the ``export --format`` that writes them
    open: Callable[[SessionRequest], Session]


@dataclass(frozen=True)
class Runtime:
    """A registered runtime and its capabilities."""

    name: str  # what --backend takes
    kinds: Mapping[str, KindSupport]  # model kind -> how it runs it; the kinds it runs
    devices: tuple[str, ...]  # where it runs
    precisions: tuple[str, ...]  # manifest precisions it runs ("fp32", "fp16", "int8")
    preferred_on: tuple[str, ...] = ()  # devices where it is the default when the export has its files
    profiles: bool = False  # its sessions are session.OperatorProfiler (evaluate --profile)
    probe: Callable[[str], str | None] | None = None  # why a device is not usable here (what to install), or None

    def __post_init__(self) -> None:
        unknown = [k for k in self.kinds if k not in KINDS]
        if not self.name or not self.kinds or not self.devices or not self.precisions or unknown:
            raise ValueError(f"runtime {self.name!r}: needs a name, kinds among {KINDS}, devices and precisions "
                             f"(unknown kinds: {unknown})")

    def runs(self, kind: str, device: str | None = None) -> bool:
        """Whether it runs a ``kind`` model (on ``device``, when given)."""
        return kind in self.kinds and (device is None or device in self.devices)

    def unavailable_on(self, device: str) -> str | None:
        """Why this runtime cannot run on ``device`` on this machine (one line), or None where it can."""
        if device not in self.devices:
            return f"the {self.name} runtime does not run on {device}"
        return self.probe(device) if self.probe is not None else None


_RUNTIMES: dict[str, Runtime] = {}
_builtins_loaded = False


def _load_builtins() -> None:
    global _builtins_loaded
    if _builtins_loaded:
        return
    builtins = [importlib.import_module(f"{__package__}.{module}").RUNTIME for module in BUILTIN_MODULES]
    _RUNTIMES.update((r.name, r) for r in builtins)  # the table is empty until now: register_runtime loads first
    _builtins_loaded = True


def register_runtime(runtime: Runtime) -> Runtime:
    """Add ``runtime`` to the table (after the built-in ones); a second one of the same name is refused."""
    _load_builtins()
    if runtime.name in _RUNTIMES:
        raise ValueError(f"a runtime named {runtime.name!r} is already registered")
    _RUNTIMES[runtime.name] = runtime
    return runtime


def unregister_runtime(name: str) -> None:
    """Remove a runtime (tests register toy ones)."""
    _RUNTIMES.pop(name, None)


def runtimes() -> tuple[Runtime, ...]:
    """Every registered runtime, in registration order."""
    _load_builtins()
    return tuple(_RUNTIMES.values())


def runtime_names() -> tuple[str, ...]:
    return tuple(r.name for r in runtimes())


def get_runtime(name: str) -> Runtime:
    """The runtime called ``name``, or the one-line error that lists the registered ones."""
    _load_builtins()
    if name not in _RUNTIMES:
        raise UserError(f"unknown backend '{name}' (use one of {', '.join(_RUNTIMES)})")
    return _RUNTIMES[name]


def choose_runtime(files: Mapping[str, Any], kind: str, device: str) -> Runtime:
    """The default runtime for a ``kind`` model on ``device``: the runtimes preferred there first,
    then the others in registration order; the first whose files the export has, else the first
    (opening it then says which files are missing)."""
    able = sorted((r for r in runtimes() if r.runs(kind, device)), key=lambda r: device not in r.preferred_on)
    if not able:
        raise UserError(f"no registered runtime runs a {kind} on {device} (registered: {', '.join(runtime_names())})")
    return next((r for r in able if r.kinds[kind].entry in files), able[0])


def _alternatives(skip: str, kind: str, device: str, files: Mapping[str, Any], precision: str | None) -> str:
    """`` --backend a or b``: the other runtimes that could run this export's ``kind`` here, or ''."""
    names = [r.name for r in runtimes() if r.name != skip and r.runs(kind, device) and r.kinds[kind].entry in files
             and (precision is None or precision in r.precisions)]
    return f"--backend {' or '.join(names)}" if names else ""


def _refusal(runtime: Runtime, kind: str, config: RuntimeConfig, files: Mapping[str, Any],
             precision: str | None) -> str | None:
    """Why ``runtime`` cannot run this export's ``kind`` as ``config`` asks (one line), or None."""
    other = _alternatives(runtime.name, kind, config.device, files, precision)
    instead = f"; use {other}" if other else ""
    if kind not in runtime.kinds:
        return f"the {runtime.name} runtime cannot run a {kind} (it runs: {', '.join(runtime.kinds)}){instead}"
    if config.device not in runtime.devices:
        return f"the {runtime.name} runtime does not run on {config.device} (it runs on: " \
               f"{', '.join(runtime.devices)}){instead}"
    support = runtime.kinds[kind]
    if support.entry not in files:
        return f"this export has no {support.what}; re-export with --format {support.export_format}" + \
               (f" (or use {other})" if other else "")
    if precision is not None and precision not in runtime.precisions:
        return f"the {runtime.name} runtime cannot run {precision} exports (it runs: " \
               f"{', '.join(runtime.precisions)}){instead}"
    if config.profile and not runtime.profiles:
        return f"the {runtime.name} runtime has no per-operator profile; leave out --profile"
    return None


def open_session(export_dir: Path, manifest: dict[str, Any], config: RuntimeConfig,
                 profile_dir: Path | None = None, *, kind: str = ENCODER, pad_id: int = 0,
                 host_cache: bool = False) -> Session:
    """A ``kind`` session for the export in ``export_dir`` on ``config.device``: through
    ``config.backend``, else the runtime :func:`choose_runtime` picks from the export's files."""
    files = manifest.get("files", {})
    runtime = get_runtime(config.backend) if config.backend else choose_runtime(files, kind, config.device)
    refusal = _refusal(runtime, kind, config, files, manifest.get("precision"))
    if refusal:
        raise UserError(f"{export_dir}: {refusal}")
    support = runtime.kinds[kind]
    return support.open(SessionRequest(Path(export_dir), files[support.entry], config, kind, profile_dir,
                                       pad_id, host_cache))
