"""Run a recipe: each stage writes its own checkpoint (or export) under the run directory.

A stage whose output already exists is skipped when the recipe runs again (resume), unless
``force``; outputs are written atomically, so an existing output is always a finished one. The
recipe text is stored in the run directory, and every stage's result in ``results/NAME.json``.
A stage declared ``reports_run`` (``evaluate``) exports every variant that has no export yet,
measures each through the runtime and writes the report (``report.py``).
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from .errors import UserError
from .paddle_env import set_default_threads
from .progress import note
from .recipe import Recipe, StageSpec, load_recipe, stage_config
from .report import evaluate_run
from .stages import STAGES, run_stage
from .training_loop import clear_train_state
from .results import RunResult

RESULTS_DIR = "results"
RECIPE_FILE = "recipe.yaml"


def _stage_source(run_dir: Path, recipe: Recipe, stage: StageSpec) -> Path | None:
    """The checkpoint a stage reads: another stage's output, or (distill) an external teacher."""
    if stage.source is None:
        return None
    if any(s.name == stage.source for s in recipe.stages):
        return run_dir / stage.source
    return Path(stage.source)


def run_recipe(recipe_path: str | Path, out: str | Path | None = None, force: bool = False) -> RunResult:
    """Run every stage of the recipe in order; returns the per-stage results and the report."""
    recipe = load_recipe(recipe_path)
    return run_parsed_recipe(recipe, Path(out) if out else Path("runs") / recipe.name, force)


def run_parsed_recipe(recipe: Recipe, run_dir: Path, force: bool = False,
                      after_stage: Callable[[StageSpec, dict[str, Any]], None] | None = None) -> RunResult:
    """Run (or resume) every stage of ``recipe`` in ``run_dir``; ``after_stage(stage, result)`` follows
    each stage and may raise to stop the run there (a search stops a trial that shows no promise)."""
    run_dir = run_dir.expanduser().resolve()
    run_dir.mkdir(parents=True, exist_ok=True)
    stored = run_dir / RECIPE_FILE
    if stored.exists() and stored.read_text(encoding="utf-8") != recipe.text and not force:
        raise UserError(f"{run_dir} holds a run of a different recipe; use another --out or --force")
    stored.write_text(recipe.text, encoding="utf-8")
    (run_dir / RESULTS_DIR).mkdir(exist_ok=True)
    results: dict[str, Any] = {}
    start = time.perf_counter()
    for stage in recipe.stages:
        results[stage.name] = _run_or_resume(run_dir, recipe, stage, force)
        if after_stage is not None:
            after_stage(stage, results[stage.name])
    report = next((s.name for s in reversed(recipe.stages) if STAGES[s.kind].reports_run), "")
    return RunResult(run_dir=str(run_dir), recipe=recipe.name, stages=results,
                     seconds=round(time.perf_counter() - start, 1), report=results.get(report, None))


def _run_or_resume(run_dir: Path, recipe: Recipe, stage: StageSpec, force: bool) -> dict[str, Any]:
    """One stage's result: read back when an earlier attempt finished it (unless ``force``), else
    run now and stored in ``results/NAME.json``. A stage that reports on the run (evaluate) has no
    folder of its own and runs every time: it measures every variant the run holds now."""
    declared = STAGES[stage.kind]
    out = run_dir / stage.name
    result_file = run_dir / RESULTS_DIR / f"{stage.name}.json"
    if not declared.reports_run:
        if result_file.is_file() and out.exists() and not force:
            note(f"[dim]{stage.name}: done earlier, skipped (--force to redo)[/dim]")
            return json.loads(result_file.read_text())
        if force:  # before the config looks for a state to resume
            import shutil

            shutil.rmtree(out, ignore_errors=True)
            clear_train_state(out)
    cfg = stage_config(recipe, stage, _stage_source(run_dir, recipe, stage), out)
    set_default_threads(cfg.threads)  # the recipe's, or the stage's own
    note(f"[bold]== {stage.name}[/bold] ({stage.kind}{f' from {stage.source}' if stage.source else ''})")
    t = time.perf_counter()
    if declared.reports_run:
        result = evaluate_run(run_dir, recipe, cfg.runtime_config(), cfg.latency_config())
    else:
        result = run_stage(cfg).to_dict()
    result["stage_seconds"] = round(time.perf_counter() - t, 1)
    result_file.write_text(json.dumps(result, indent=2, ensure_ascii=False, default=str))
    return result
