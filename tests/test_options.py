"""options.py: a field declares an option once; ranges, choices and names in errors come from it."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pytest

from ernie_compress.options import OptionError, check_options, coerce_values, option, options


@dataclass(frozen=True, kw_only=True)
class Example:
    out: Path = option(short="-o", scope="cli", help="Where.")
    rate: float = option(0.1, above=0, below=1, help="A fraction.")
    steps: int | None = option(None, at_least=1, help="Steps.")
    mode: str = option("a", choices=("a", "b"), help="Mode.")
    origin: Path | None = option(None, flag="--from", help="Start here.")
    internal: int = 3  # not an option

    def __post_init__(self) -> None:
        check_options(self)


def test_options_are_the_declared_fields_only():
    opts = {o.name: o for o in options(Example)}
    assert list(opts) == ["out", "rate", "steps", "mode", "origin"]
    assert opts["out"].required and opts["out"].spec.scope == "cli"
    assert opts["rate"].default == 0.1 and opts["origin"].flag == "--from"


@pytest.mark.parametrize("values, message", [
    ({"rate": 0.0}, "--rate must be in (0, 1), got 0.0"),
    ({"rate": 1.0}, "--rate must be in (0, 1), got 1.0"),
    ({"steps": 0}, "--steps must be >= 1, got 0"),
    ({"mode": "c"}, "--mode must be one of a, b, got 'c'"),
])
def test_a_value_out_of_range_is_refused_with_its_flag(values, message):
    with pytest.raises(OptionError) as exc:
        Example(out=Path("x"), **values)
    assert str(exc.value) == message


def test_an_error_names_options_as_the_caller_spells_them():
    with pytest.raises(OptionError) as exc:
        Example(out=Path("x"), steps=0)
    assert exc.value.render(lambda n: f"'{n}'") == "'steps' must be >= 1, got 0"


def test_recipe_values_become_field_types():
    opts = {o.name: o for o in options(Example)}
    assert coerce_values(opts, {"origin": "~/ckpt", "rate": 0.5}) == {"origin": Path("~/ckpt").expanduser(), "rate": 0.5}
