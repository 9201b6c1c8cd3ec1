"""Stage options, declared once: on the fields of the stage's config dataclass.

A field made by :func:`option` carries its type (the annotation), default, help text, CLI flag and
valid range; the command line (``cli.py``), the recipe schema and its validation
(``recipe.py``) and the README's option tables (``benchmarks/readme_tables.py``) are all derived
from it, so a default cannot differ between the CLI and a recipe. This follows mlx-lm's
``field(metadata={"help": ...})`` convention and torchao's one-config-class-per-method.

Where an option lives:

- ``scope="stage"`` (default): a CLI option of the command and a key of the recipe stage;
- ``scope="run"``: a CLI option, and in a recipe a top-level key every stage shares, which a
  stage may override (task, data, seed, threads, device, amp, nproc);
- ``scope="cli"``: only on the command line (``--out``, the checkpoint argument, ``--overwrite``,
  the latency comparison of the training commands); a recipe sets these itself.

A field without :func:`option` metadata is an internal setting, not a user option.
"""

from __future__ import annotations

import dataclasses
import typing
from collections.abc import Callable, Iterator
from dataclasses import MISSING, dataclass
from typing import Any

from .errors import UserError

SCOPES = ("stage", "run", "cli")


@dataclass(frozen=True)
class OptionSpec:
    """What :func:`option` records on a field (``field.metadata["option"]``)."""

    help: str
    flag: str | None = None  # "--lr", or "--latency/--no-latency" for a bool; default from the name
    short: str | None = None  # "-o"
    scope: str = "stage"
    argument: bool = False  # a positional CLI argument
    choices: tuple[Any, ...] | None = None
    at_least: float | None = None  # value >= at_least
    above: float | None = None  # value > above
    at_most: float | None = None  # value <= at_most
    below: float | None = None  # value < below
    parse: Callable[[str], Any] | None = None  # CLI text -> value, for types a flag cannot spell
    cli_default: str | None = None  # the text form of the default, with ``parse``
    source: str | None = None  # recipe: the key naming the checkpoint this field reads ("from")
    selects: bool = False  # names the mode of a stage with several configs (quantize --qat/--ptq/--fp16)


def option(default: Any = MISSING, *, help: str, factory: Callable[[], Any] | None = None, **spec: Any) -> Any:
    """A dataclass field that is a user option (see :class:`OptionSpec` for ``spec``)."""
    spec_obj = OptionSpec(help=help, **spec)
    if spec_obj.scope not in SCOPES:
        raise ValueError(f"scope must be one of {SCOPES}")
    metadata = {"option": spec_obj}
    if factory is not None:
        return dataclasses.field(default_factory=factory, metadata=metadata)
    return dataclasses.field(default=default, metadata=metadata)


@dataclass(frozen=True)
class Option:
    """One declared option of a config class, resolved (its type evaluated)."""

    name: str
    type: Any
    default: Any  # MISSING when required
    spec: OptionSpec
    owner: type | None = None  # the class that declares it (the most derived one, for an override)

    @property
    def required(self) -> bool:
        return self.default is MISSING

    @property
    def flag(self) -> str:
        """The primary CLI flag: ``--batch-size`` for ``batch_size``."""
        return (self.spec.flag or "--" + self.name.replace("_", "-")).split("/")[0]

    @property
    def is_bool(self) -> bool:
        return self.type is bool or self.type == (bool | None)

    def cli_name(self) -> str:
        return self.name.upper() if self.spec.argument else self.flag


def options(cls: type) -> list[Option]:
    """The user options of a config dataclass, in declaration order."""
    return list(_options(cls))


def help_order(opts: list[Option], own_module: str) -> list[Option]:
    """The order ``--help`` and the README show: arguments, ``out``, the options the command's own
    module declares, then the shared ones it inherits."""
    def rank(i_opt):
        i, o = i_opt
        shared = o.owner is not None and o.owner.__module__ != own_module
        return (not o.spec.argument, o.name != "out", shared, i)

    return [o for _, o in sorted(enumerate(opts), key=rank)]


def command_options(cls: type) -> dict[str, Option]:
    """A command's options from its config class, by name, in ``--help`` order."""
    return {o.name: o for o in help_order(options(cls), cls.__module__)}


def _options(cls: type) -> Iterator[Option]:
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        spec = f.metadata.get("option")
        if spec is None:
            continue
        default = f.default if f.default is not MISSING else (
            f.default_factory() if f.default_factory is not MISSING else MISSING)
        owner = next((c for c in cls.__mro__ if f.name in c.__dict__.get("__annotations__", {})), cls)
        yield Option(f.name, hints[f.name], default, spec, owner)


class OptionError(UserError):
    """A bad option value; the message names options as ``{name}`` placeholders so that the CLI
    can say ``--epochs`` and a recipe ``'epochs'`` (with its line)."""

    def __init__(self, template: str, *names: str, flags: dict[str, str] | None = None):
        self.template, self.names = template, names
        self.flags = flags or {}
        super().__init__(self.render(lambda n: self.flags.get(n, "--" + n.replace("_", "-"))))

    def render(self, name_of: Callable[[str], str]) -> str:
        return self.template.format(**{n: name_of(n) for n in self.names})


def check_options(config: Any) -> None:
    """Check every declared option of ``config`` against its choices and range."""
    opts = options(type(config))
    flags = {o.name: o.cli_name() for o in opts}
    for opt in opts:
        value = getattr(config, opt.name)
        if value is None or isinstance(value, bool):
            continue
        s = opt.spec
        if s.choices is not None and value not in s.choices:
            raise OptionError(f"{{{opt.name}}} must be one of {', '.join(map(str, s.choices))}, got '{value}'",
                              opt.name, flags=flags)
        bounds = ((s.at_least, lambda v, b: v >= b, ">="), (s.above, lambda v, b: v > b, ">"),
                  (s.at_most, lambda v, b: v <= b, "<="), (s.below, lambda v, b: v < b, "<"))
        values = value if isinstance(value, (tuple, list)) else (value,)
        for bound, ok, word in bounds:
            if bound is not None and not all(ok(v, bound) for v in values):
                raise OptionError(f"{{{opt.name}}} must be {_range_text(s)}, got {value}", opt.name, flags=flags)


def _range_text(s: OptionSpec) -> str:
    low = (f"[{_num(s.at_least)}" if s.at_least is not None else f"({_num(s.above)}" if s.above is not None else None)
    high = (f"{_num(s.at_most)}]" if s.at_most is not None else f"{_num(s.below)})" if s.below is not None else None)
    if low and high:
        return f"in {low}, {high[:-1]}{high[-1]}"
    if low:
        return (">= " if low[0] == "[" else "> ") + low[1:]
    return ("<= " if high[-1] == "]" else "< ") + high[:-1]


def _num(value: float) -> str:
    return f"{value:g}"


def fail(template: str, *names: str) -> None:
    """Raise an :class:`OptionError` about ``names`` (cross-option checks in ``__post_init__``)."""
    raise OptionError(template, *names)


def coerce_values(opts: dict[str, Option], values: dict[str, Any]) -> dict[str, Any]:
    """Recipe values as the fields expect them: text paths as :class:`~pathlib.Path`, lists as tuples."""
    from pathlib import Path

    out = {}
    for name, value in values.items():
        opt = opts.get(name)
        if opt is not None and isinstance(value, str) and Path in (opt.type, *getattr(opt.type, "__args__", ())):
            value = Path(value).expanduser()
        elif isinstance(value, list):
            value = tuple(value)
        out[name] = value
    return out


def config_options(config: Any) -> dict[str, Any]:
    """The declared option values of a config (for lineage records and results)."""
    return {o.name: getattr(config, o.name) for o in options(type(config))}
