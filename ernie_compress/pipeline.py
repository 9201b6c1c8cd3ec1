"""Run a recipe: each stage writes its own checkpoint (or export) under the run directory.

A stage whose output already exists is skipped when the recipe runs again (resume), unless
``force``; outputs are written atomically, so an existing output is always a finished one. The
recipe text is stored in the run directory, and every stage's result in ``results/NAME.json``.
The ``evaluate`` stage exports every variant that has no export yet, measures each through the
runtime and writes the report (``report.py``).
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .data.tasks import TaskSpec
from .errors import UserError
from .progress import note
from .recipe import CHECKPOINT_STAGES, Recipe, StageSpec, load_recipe
from .train import TrainConfig

RESULTS_DIR = "results"
RECIPE_FILE = "recipe.yaml"


@dataclass
class StageContext:
    run_dir: Path
    recipe: Recipe
    source: Path | None  # the checkpoint this stage reads
    out: Path
    seed: int

    @property
    def task(self) -> TaskSpec | None:
        if not self.recipe.task:
            return None
        data = str(Path(self.recipe.data).expanduser().resolve()) if self.recipe.data else None
        return TaskSpec(self.recipe.task, data)


def _train_config(ctx: StageContext, epochs: int, lr: float, batch_size: int, max_steps: int | None,
                  **extra) -> TrainConfig:
    return TrainConfig(epochs=epochs, learning_rate=lr, batch_size=batch_size, max_steps=max_steps,
                       seed=ctx.seed, **extra)


# --- builders: recipe options (keyword-only, as on the CLI) -> a function that runs the stage ---
def build_pretrain(ctx: StageContext, *, corpus: list[str] | None = None, preset: str = "demo-teacher",
                   steps: int = 600, batch_size: int = 32, lr: float = 1e-3, max_seq_len: int = 64,
                   mask_prob: float = 0.15, layout: str = "ours"):
    from .pretrain import PretrainConfig, pretrain

    corpora = tuple(corpus or ([ctx.recipe.task] if ctx.recipe.task else []))
    cfg = PretrainConfig(corpora=corpora, out=ctx.out, preset=preset, max_seq_length=max_seq_len,
                         mask_probability=mask_prob, layout=layout,
                         train=TrainConfig(epochs=10**6, batch_size=batch_size, learning_rate=lr,
                                           seed=ctx.seed, max_steps=steps))
    return lambda: pretrain(cfg)


def build_train(ctx: StageContext, *, preset: str | None = None, epochs: int = 3, batch_size: int = 32,
                lr: float = 5e-4, warmup: float = 0.1, weight_decay: float = 0.01, max_seq_len: int = 128,
                max_steps: int | None = None, eval_every: int | None = None, layout: str = "ours"):
    from .finetune import FinetuneConfig, finetune

    cfg = FinetuneConfig(task=ctx.task, out=ctx.out, preset=preset,
                         init_from=None if preset else ctx.source, max_seq_length=max_seq_len, layout=layout,
                         train=_train_config(ctx, epochs, lr, batch_size, max_steps, warmup_ratio=warmup,
                                             weight_decay=weight_decay, eval_every=eval_every))
    return lambda: finetune(cfg)


def build_distill(ctx: StageContext, *, student: str = "demo-mini", init_from_teacher: bool = False,
                  ce_weight: float = 0.5, kd_weight: float = 0.5, temperature: float = 2.0,
                  hidden_weight: float = 0.0, attention_weight: float = 0.0,
                  attention_teacher_layer: int = -1, relation_heads: int | None = None,
                  layer_map: str | None = None, baseline: bool = False, epochs: int = 3,
                  lr: float = 5e-4, batch_size: int = 32, max_steps: int | None = None,
                  latency: bool = False, layout: str = "ours"):
    from .distill import DistillConfig, distill

    cfg = DistillConfig(teacher=str(ctx.source), student=student, out=ctx.out, task=ctx.task,
                        init_from_teacher=init_from_teacher, ce_weight=ce_weight, kd_weight=kd_weight,
                        temperature=temperature, hidden_weight=hidden_weight,
                        attention_weight=attention_weight, attention_teacher_layer=attention_teacher_layer,
                        relation_heads=relation_heads, layer_map=layer_map, baseline=baseline,
                        measure_latency=latency, layout=layout,
                        train=_train_config(ctx, epochs, lr, batch_size, max_steps))
    return lambda: distill(cfg)


def build_prune(ctx: StageContext, *, heads: float | None = None, ffn: float | None = None,
                params: float | None = None, importance: str = "gradient", importance_samples: int = 512,
                recover_epochs: int = 1, distill_from_parent: bool = True, lr: float = 1e-4,
                batch_size: int = 32, max_steps: int | None = None, latency: bool = False,
                gqa: str = "queries", uniform: bool = False, layout: str = "ours"):
    from .prune import PruneConfig, prune_checkpoint

    cfg = PruneConfig(checkpoint=ctx.source, out=ctx.out, heads=heads, ffn=ffn, params=params,
                      importance=importance, importance_samples=importance_samples, task=ctx.task,
                      recover_epochs=recover_epochs, distill_from_parent=distill_from_parent,
                      measure_latency=latency, gqa=gqa, uniform=uniform, layout=layout,
                      train=_train_config(ctx, recover_epochs, lr, batch_size, max_steps))
    return lambda: prune_checkpoint(cfg)


def build_quantize(ctx: StageContext, *, qat: str | None = None, ptq: str | None = None, fp16: bool = False,
                   epochs: int = 1, lr: float = 5e-5, batch_size: int = 32, max_steps: int | None = None,
                   distill_from_parent: bool = False, kd_alpha: float = 0.5, kd_temperature: float = 2.0,
                   calib_samples: int = 512, observer: str = "abs_max", percentile: float = 99.99,
                   reduce_range: bool | None = None, layout: str = "ours"):
    from .quantize import QuantizeConfig, quantize_checkpoint

    cfg = QuantizeConfig(checkpoint=ctx.source, out=ctx.out, qat=qat, ptq=ptq, fp16=fp16, task=ctx.task,
                         reduce_range=reduce_range, distill_from_parent=distill_from_parent,
                         kd_alpha=kd_alpha, kd_temperature=kd_temperature, calib_samples=calib_samples,
                         observer=observer, percentile=percentile, layout=layout,
                         train=_train_config(ctx, epochs, lr, batch_size, max_steps))
    return lambda: quantize_checkpoint(cfg)


def build_export(ctx: StageContext, *, format: str = "onnx", opset: int = 17, tolerance: float = 1e-3,
                 layout: str | None = None):
    from .export import ExportConfig, export_checkpoint

    cfg = ExportConfig(checkpoint=ctx.source, out=ctx.out, format=format, opset=opset, tolerance=tolerance,
                       layout=layout)
    return lambda: export_checkpoint(cfg)


def build_evaluate(ctx: StageContext, *, batch_sizes: list[int] | None = None, seq_len: int = 128,
                   iterations: int = 20, warmup: int = 3, device: str = "cpu", backend: str | None = None):
    from .report import evaluate_run
    from .runtime.backends import RuntimeConfig
    from .runtime.latency import LatencyConfig

    latency = LatencyConfig(batch_sizes=tuple(batch_sizes or (1, 32)), seq_len=seq_len,
                            iterations=iterations, warmup=warmup)
    runtime = RuntimeConfig(device=device, backend=backend, threads=ctx.recipe.threads)
    return lambda: evaluate_run(ctx.run_dir, ctx.recipe, runtime, latency)


BUILDERS = {"pretrain": build_pretrain, "train": build_train, "distill": build_distill,
            "prune": build_prune, "quantize": build_quantize, "export": build_export,
            "evaluate": build_evaluate}


def _stage_source(run_dir: Path, recipe: Recipe, stage: StageSpec) -> Path | None:
    """The checkpoint a stage reads: another stage's output, or (distill) an external teacher."""
    if stage.source is None:
        return None
    if any(s.name == stage.source for s in recipe.stages):
        return run_dir / stage.source
    return Path(stage.source)


def run_recipe(recipe_path: str | Path, out: str | Path | None = None, force: bool = False) -> dict[str, Any]:
    """Run every stage of the recipe in order; returns the per-stage results and the report."""
    recipe = load_recipe(recipe_path)
    return run_parsed_recipe(recipe, Path(out) if out else Path("runs") / recipe.name, force)


def run_parsed_recipe(recipe: Recipe, run_dir: Path, force: bool = False) -> dict[str, Any]:
    from .paddle_env import set_default_threads

    run_dir = run_dir.expanduser().resolve()
    run_dir.mkdir(parents=True, exist_ok=True)
    stored = run_dir / RECIPE_FILE
    if stored.exists() and stored.read_text(encoding="utf-8") != recipe.text and not force:
        raise UserError(f"{run_dir} holds a run of a different recipe; use another --out or --force")
    stored.write_text(recipe.text, encoding="utf-8")
    (run_dir / RESULTS_DIR).mkdir(exist_ok=True)
    set_default_threads(recipe.threads)
    results: dict[str, Any] = {}
    start = time.perf_counter()
    for stage in recipe.stages:
        out = run_dir / stage.name
        result_file = run_dir / RESULTS_DIR / f"{stage.name}.json"
        done = result_file.is_file() and (out.exists() or stage.kind == "evaluate")
        if done and not force and stage.kind != "evaluate":
            note(f"[dim]{stage.name}: done earlier, skipped (--force to redo)[/dim]")
            results[stage.name] = json.loads(result_file.read_text())
            continue
        source = _stage_source(run_dir, recipe, stage)
        ctx = StageContext(run_dir=run_dir, recipe=recipe, source=source, out=out, seed=recipe.seed)
        if force and out.exists() and stage.kind != "evaluate":
            import shutil

            shutil.rmtree(out)
        note(f"[bold]== {stage.name}[/bold] ({stage.kind}{f' from {stage.source}' if stage.source else ''})")
        t = time.perf_counter()
        result = BUILDERS[stage.kind](ctx, **stage.options)()
        result["stage_seconds"] = round(time.perf_counter() - t, 1)
        result_file.write_text(json.dumps(result, indent=2, ensure_ascii=False, default=str))
        results[stage.name] = result
    return {"run_dir": str(run_dir), "recipe": recipe.name, "stages": results,
            "seconds": round(time.perf_counter() - start, 1),
            "report": results.get(next((s.name for s in reversed(recipe.stages) if s.kind == "evaluate"), ""), None)}


def checkpoint_stages(recipe: Recipe) -> list[StageSpec]:
    """The checkpoints a report compares: not pre-training, and not a training round that only
    another training round continues (the teacher is the last round)."""
    readers: dict[str, set[str]] = {}
    for s in recipe.stages:
        if s.source:
            readers.setdefault(s.source, set()).add(s.kind)
    return [s for s in recipe.stages if s.kind in CHECKPOINT_STAGES and s.kind != "pretrain"
            and not (s.kind == "train" and readers.get(s.name) == {"train"})]
