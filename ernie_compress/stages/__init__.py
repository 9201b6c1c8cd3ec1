"""The compression stages, each a config class (its options, declared once) and the function that
runs it.

A stage is declared once, in ``registry.py`` (``DECLARED``: its place in a run, its summary and
the properties recipes and the command line read), and its module here, named after it,
registers the function that runs its config(s). Importing this package imports no stage module:
a stage's module is imported the first time its configs are asked for, so ``--help`` stays instant.

Stages build on the core below them (``models/``, ``data/``, ``training_loop.py``,
``checkpoint.py``, ``prune/``, ``quantize/``, ``distill/``, ``export/``, ``runtime/``) and never
on each other; the command line (``cli.py``) and recipes (``recipe.py``, ``pipeline.py``) sit
above.
"""

from __future__ import annotations

from .registry import DECLARED, STAGES, StageDef, config_for, register, run_stage, selectors, stage_options

__all__ = ["DECLARED", "STAGES", "StageDef", "config_for", "register", "run_stage", "selectors", "stage_options"]
