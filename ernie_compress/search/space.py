"""The search space: options the stages already declare, each searched over a range or set inside
what its declaration allows (``options.option``: choices, at_least/at_most/above/below), so a searched
value is always one the stage accepts from the command line or a recipe.

A :class:`Dimension` names (stage, option) and narrows it; :class:`SearchSpace` suggests one value per
dimension for an Optuna trial (parameter ``"{stage}.{option}"``) and refuses, before any trial, a
dimension the stage does not declare or whose range leaves the declared one. A choice of ``None``
leaves the stage out of the trial (no pruning), and ``quantize.precision`` chooses among quantize's
methods (:data:`PRECISIONS`: each a set of quantize's own options; ``fp32`` leaves quantize out).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from ..errors import UserError
from ..options import Option


PRECISION = "precision"  # quantize's searched method: a choice among PRECISIONS, not one declared option
PRECISIONS: dict[str, dict[str, Any] | None] = {
    "fp32": None,  # no quantize stage
    "int8-ptq": {"ptq": "int8"},
    "int8-qat": {"qat": "int8"},
    "w8": {"weight_only": "int8"},  # decoders: weight-only
    "w4": {"weight_only": "int4", "group_size": 32},
}


@dataclass(frozen=True)
class Dimension:
    """One searched option: ``choices``, or a numeric range ``low``..``high`` (``log``: sampled on a
    log scale; ``step``: on a grid)."""

    stage: str
    option: str
    low: float | None = None
    high: float | None = None
    choices: tuple[Any, ...] | None = None
    log: bool = False
    step: float | None = None

    @property
    def name(self) -> str:
        return f"{self.stage}.{self.option}"

    def check(self, declared: Option) -> None:
        """Refuse a dimension that leaves what ``declared`` (the stage's own option) accepts."""
        spec = declared.spec
        if (self.choices is None) == (self.low is None or self.high is None):
            raise UserError(f"search dimension {self.name}: give choices, or low and high")
        if self.choices is not None:
            if not self.choices:
                raise UserError(f"search dimension {self.name}: no choices")
            if spec.choices is not None and not set(self.choices) <= set(spec.choices):
                raise UserError(f"search dimension {self.name}: {sorted(set(self.choices) - set(spec.choices))} "
                                f"are not choices of --{self.option.replace('_', '-')} ({', '.join(map(str, spec.choices))})")
            values = [c for c in self.choices if isinstance(c, (int, float)) and not isinstance(c, bool)]
        else:
            if not self.low < self.high:
                raise UserError(f"search dimension {self.name}: low {self.low} must be below high {self.high}")
            if self.log and self.low <= 0:
                raise UserError(f"search dimension {self.name}: a log range needs low > 0")
            values = [self.low, self.high]
        for value in values:
            if ((spec.at_least is not None and value < spec.at_least) or (spec.above is not None and value <= spec.above)
                    or (spec.at_most is not None and value > spec.at_most)
                    or (spec.below is not None and value >= spec.below)):
                raise UserError(f"search dimension {self.name}: {value} is outside what "
                                f"--{self.option.replace('_', '-')} accepts")

    def check_precision(self) -> None:
        """``quantize.precision``: choices among :data:`PRECISIONS`, each made of options quantize declares."""
        from ..stages.registry import stage_options

        unknown = [c for c in self.choices or () if c not in PRECISIONS]
        if self.choices is None or not self.choices or unknown:
            raise UserError(f"search dimension {self.name}: choose among {', '.join(PRECISIONS)}"
                            + (f" ({', '.join(map(str, unknown))} unknown)" if unknown else ""))
        declared = stage_options("quantize")
        for choice in self.choices:
            missing = [o for o in (PRECISIONS[choice] or {}) if o not in declared]
            if missing:
                raise AssertionError(f"PRECISIONS[{choice!r}] names options quantize does not declare: {missing}")

    def suggest(self, trial, declared: Option | None) -> Any:
        """This dimension's value for ``trial`` (an ``optuna.Trial``), of the option's type."""
        if self.choices is not None:
            return trial.suggest_categorical(self.name, list(self.choices))
        if _is_int(declared):
            return trial.suggest_int(self.name, int(self.low), int(self.high), log=self.log,
                                     step=int(self.step) if self.step else 1)
        return trial.suggest_float(self.name, self.low, self.high, log=self.log, step=self.step)


def _is_int(declared: Option) -> bool:
    return declared.type is int or declared.type == (int | None)


@dataclass(frozen=True)
class SearchSpace:
    """Dimensions over the stages' options, checked against their declarations when made."""

    dimensions: tuple[Dimension, ...]

    def __post_init__(self) -> None:
        names = [d.name for d in self.dimensions]
        if len(set(names)) != len(names):
            raise UserError(f"search space: a dimension is given twice ({', '.join(sorted(names))})")
        for dimension in self.dimensions:
            if (dimension.stage, dimension.option) == ("quantize", PRECISION):
                dimension.check_precision()
            else:
                dimension.check(self.declared(dimension))

    @staticmethod
    def declared(dimension: Dimension) -> Option:
        """The stage's declaration of the dimension's option."""
        from ..stages.registry import STAGES, stage_options

        if dimension.stage not in STAGES:
            raise UserError(f"search dimension {dimension.name}: no stage '{dimension.stage}' "
                            f"({', '.join(STAGES)})")
        opts = stage_options(dimension.stage)
        if dimension.option not in opts:
            raise UserError(f"search dimension {dimension.name}: {dimension.stage} has no option '{dimension.option}'")
        return opts[dimension.option]

    def suggest(self, trial) -> dict[str, dict[str, Any]]:
        """One value per dimension for ``trial``: {stage: {option: value}}."""
        values: dict[str, dict[str, Any]] = {}
        for dimension in self.dimensions:
            declared = None if dimension.choices is not None else self.declared(dimension)
            values.setdefault(dimension.stage, {})[dimension.option] = dimension.suggest(trial, declared)
        return values
