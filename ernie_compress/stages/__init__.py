"""The compression stages, each a config class (its options, declared once) and the function that
runs it, registered by config type in ``registry.py``.

Stages build on the core below them (``models/``, ``data/``, ``training_loop.py``,
``checkpoint.py``, ``prune/``, ``quantize/``, ``distill/``, ``export/``, ``runtime/``) and never
on each other; the command line (``cli.py``) and recipes (``recipe.py``, ``pipeline.py``) sit
above. A new stage is a module here that declares its config and registers its runner.
"""

from __future__ import annotations

from . import distill, evaluate, export, pretrain, prune, quantize, train  # noqa: F401  (they register)
from .registry import STAGES, StageDef, config_for, run_stage, selectors, stage_options

PIPELINE_ORDER = ("pretrain", "train", "distill", "prune", "quantize", "export", "evaluate")
for _kind in PIPELINE_ORDER:  # --help, recipes and the README list the stages in the order a run uses them
    STAGES[_kind] = STAGES.pop(_kind)

__all__ = ["STAGES", "StageDef", "config_for", "run_stage", "selectors", "stage_options"]
