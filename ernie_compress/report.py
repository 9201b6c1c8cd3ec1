"""The run report: one row per variant, as a table, ``report.md``, ``report.json`` and a PNG of
accuracy against batch-1 latency (the Pareto view).

Variants are the checkpoints a recipe produced (teacher, student, pruned, quantized ...). Each is
measured through the same runtime: the recipe's own export if it made one, otherwise an ONNX
export made here under ``exports/``. Accuracy is on the task's held-out split; "loss" is in points
against the first trained model (the teacher). Classification reports end with context rows that
are not ERNIE models (majority class, naive Bayes on character n-grams, :mod:`.baselines`), and
every report names the machine it was measured on (:mod:`.machine`).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from .baselines import classification_baselines
from .checkpoint import load_checkpoint
from .data.tasks import TaskSpec, load_task
from .errors import UserError
from .inspect_checkpoint import directory_size
from .machine import machine_info, machine_line
from .metrics import LOWER_IS_BETTER, bootstrap_delta, metric_delta
from .models import count_parameters
from .recipe import checkpoint_stages
from .runtime.evaluate_export import EvaluateExportConfig, evaluate_export
from .stages.export import ExportConfig, export_checkpoint

REPORT_JSON, REPORT_MD, REPORT_PNG = "report.json", "report.md", "report.png"
ROLE = {"train": "FP32", "distill": "distilled FP32", "prune": "pruned FP32"}


def _variant_label(stage, checkpoint_dir: Path) -> str:
    if stage.kind == "quantize":
        quant = json.loads((checkpoint_dir / "config.json").read_text()).get("quantization", {})
        return f"{stage.name} ({quant.get('method', '?')} {quant.get('dtype', '')})".strip()
    return f"{stage.name} ({ROLE.get(stage.kind, stage.kind)})"


def evaluate_run(run_dir: Path, recipe, runtime, latency) -> dict[str, Any]:
    exports = {s.source: run_dir / s.name for s in recipe.stages
               if s.kind == "export" and (run_dir / s.name / "onnx").exists()}
    rows = []
    for stage in checkpoint_stages(recipe):
        ckpt_dir = run_dir / stage.name
        if not ckpt_dir.exists():
            raise UserError(f"{ckpt_dir} is missing; run the stages before 'evaluate'")
        export_dir = exports.get(stage.name)
        if export_dir is None:
            export_dir = run_dir / "exports" / stage.name
            if not (export_dir / "manifest.json").exists():
                export_checkpoint(ExportConfig(checkpoint=ckpt_dir, out=export_dir, format="onnx"))
        ev = evaluate_export(EvaluateExportConfig(export_dir, runtime=runtime, latency=latency,
                                                  keep_example_stats=True))
        ckpt = load_checkpoint(ckpt_dir)
        params = count_parameters({k: v.shape for k, v in ckpt.state.items()}, ckpt.config)
        by_batch = {r["batch_size"]: r for r in ev["latency"]}
        b1 = by_batch.get(1) or ev["latency"][0]
        big = by_batch.get(max(by_batch))
        onnx_file = export_dir / "onnx" / "model.onnx"
        rows.append({
            "variant": _variant_label(stage, ckpt_dir), "stage": stage.name, "kind": stage.kind,
            "parameters": params["total"], "non_embedding_parameters": params["non_embedding"],
            **({"active_parameters": params["active"]} if "active" in params else {}),  # mixture of experts
            "size_mb": (onnx_file.stat().st_size if onnx_file.exists() else directory_size(ckpt_dir)) / 1e6,
            "score": ev["metrics"][ev["primary_metric"]], "metric": ev["primary_metric"],
            "p50_b1_ms": b1["p50_ms"], "qps_large_batch": big["qps"], "large_batch": big["batch_size"],
            "runtime": f"{ev['backend']}/{ev['device']}/{ev['precision']}", "export": str(export_dir),
            "latency": ev["latency"], "example_stats": ev["example_stats"],
        })
    if not rows:
        raise UserError("the recipe produced no checkpoints to evaluate")
    base = rows[0]
    for row in rows:
        row["loss_points"] = 0.0 - metric_delta(row["metric"], row["score"], base["score"])  # never -0.0
        if row is not base:  # paired bootstrap over the held-out examples, as a loss: [low, high]
            _, low, high = bootstrap_delta(row["metric"], row["example_stats"], base["example_stats"])
            row["loss_interval"] = [0.0 - high, 0.0 - low]
        row["speedup_b1"] = base["p50_b1_ms"] / row["p50_b1_ms"]
    for row in rows:
        del row["example_stats"]

    report = {"run_dir": str(run_dir), "task": recipe.task, "seq_len": latency.seq_len,
              "threads": runtime.threads, "rows": rows, "context_rows": _baseline_rows(recipe, rows[0]),
              "machine": machine_info(runtime.threads)}
    write_report(run_dir, report)
    return report


def _baseline_rows(recipe, teacher: dict[str, Any]) -> list[dict[str, Any]]:
    """For classification tasks: the non-ERNIE baselines on the same held-out split, as rows."""
    if teacher["metric"] != "accuracy" or not recipe.task:
        return []
    task = load_task(TaskSpec(recipe.task, recipe.data))
    return [{"variant": f"{b['model']} (not ERNIE, context)", "score": b["accuracy"], "metric": "accuracy",
             "loss_points": 0.0 - metric_delta("accuracy", b["accuracy"], teacher["score"])}
            for b in classification_baselines(task.split("train"), task.split(task.held_out))]


def load_report(run_dir: Path) -> dict[str, Any]:
    path = Path(run_dir).expanduser() / REPORT_JSON
    if not path.is_file():
        raise UserError(f"{run_dir}: no {REPORT_JSON}; run a recipe with an 'evaluate' stage first")
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise UserError(f"{path}: invalid JSON ({exc.msg})") from None


COLUMNS = [("variant", "variant", "{}"), ("params", "parameters", "{:,}"),
           ("non-emb params", "non_embedding_parameters", "{:,}"), ("active params", "active_parameters", "{:,}"),
           ("size MB", "size_mb", "{:.2f}"),
           ("score", "score", "{:.4f}"), ("loss", "loss_points", "{:+.2f}"),
           ("p50 b1 ms", "p50_b1_ms", "{:.2f}"), ("speedup b1", "speedup_b1", "{:.2f}x"),
           ("QPS (large batch)", "qps_large_batch", "{:.1f}"), ("runtime", "runtime", "{}")]


def _columns(report: dict[str, Any]) -> list[tuple[str, str, str]]:
    """:data:`COLUMNS`, without active parameters unless a variant is a mixture of experts."""
    moe = any("active_parameters" in row for row in report.get("rows", []))
    return [c for c in COLUMNS if moe or c[1] != "active_parameters"]


def _titles(report: dict[str, Any]) -> list[str]:
    """Column titles naming the task's metric (accuracy, f1, perplexity)."""
    metric = report["rows"][0]["metric"] if report.get("rows") else "score"
    unit = "" if metric in LOWER_IS_BETTER else " (pt)"
    return [metric if key == "score" else f"loss{unit} (95% CI)" if key == "loss_points" else title
            for title, key, _ in _columns(report)]


def _cells(report: dict[str, Any], row: dict[str, Any]) -> list[str]:
    """A row's cells; a context row has only a score and its loss (the rest is blank); a loss
    carries its 95% bootstrap interval when the report has one."""
    columns = _columns(report)
    cells = [fmt.format(row[key]) if key in row else "" for _, key, fmt in columns]
    if row.get("loss_interval"):
        low, high = row["loss_interval"]
        cells[[key for _, key, _ in columns].index("loss_points")] += f" ({low:+.2f} to {high:+.2f})"
    return cells


def _all_rows(report: dict[str, Any]) -> list[dict[str, Any]]:
    return report["rows"] + report.get("context_rows", [])


def markdown_table(report: dict[str, Any]) -> str:
    lines = ["| " + " | ".join(_titles(report)) + " |", "|" + "---|" * len(_columns(report))]
    lines += ["| " + " | ".join(_cells(report, row)) + " |" for row in _all_rows(report)]
    if report.get("machine"):
        lines += ["", f"Task {report.get('task')}, held-out split, ONNX Runtime on CPU, seq "
                      f"{report.get('seq_len')}. " + machine_line(report["machine"])]
    return "\n".join(lines)


def rich_table(report: dict[str, Any]):
    from rich.table import Table

    metric = report["rows"][0]["metric"] if report.get("rows") else "score"
    table = Table(title=f"{report.get('task')}: held-out {metric} and CPU latency (seq {report.get('seq_len')})")
    for title in _titles(report):
        table.add_column(title, justify="left" if title in ("variant", "runtime") else "right")
    for row in _all_rows(report):
        table.add_row(*_cells(report, row))
    return table


def write_report(run_dir: Path, report: dict[str, Any]) -> None:
    run_dir = Path(run_dir)
    (run_dir / REPORT_JSON).write_text(json.dumps(report, indent=2, ensure_ascii=False))
    (run_dir / REPORT_MD).write_text(f"# {Path(run_dir).name}\n\n" + markdown_table(report) + "\n")
    plot_pareto(report, run_dir / REPORT_PNG)


def plot_pareto(report: dict[str, Any], path: Path) -> None:
    """Held-out metric against batch-1 latency: each variant a point named in the legend (labels on the
    axes overlapped), the axes fitted to the variants, each non-ERNIE context row a level drawn where
    it falls inside and named at the edge where not (``plotting.py``)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from .plotting import figure_height, fitted_limits, legend_below, reference_level, set_latency_axis

    rows = report["rows"]
    metric = rows[0]["metric"] if rows else "score"
    fig, ax = plt.subplots(figsize=(7, figure_height(len(rows))), dpi=120)
    colors = plt.get_cmap("tab10")
    for i, row in enumerate(rows):
        ax.scatter(row["p50_b1_ms"], row["score"], s=60, color=colors(i % 10), edgecolor="black", zorder=3,
                   label=f"{row['variant']}: {row['score']:.4g} {metric}, {row['p50_b1_ms']:.2f} ms")
    if rows:
        set_latency_axis(ax, [r["p50_b1_ms"] for r in rows])
        ax.set_ylim(*fitted_limits([r["score"] for r in rows]))
    for row in report.get("context_rows", []):  # not ERNIE: no latency, a reference level
        reference_level(ax, row["score"], f"{row['variant']} {row['score']:.4g}")
    better = "down" if metric in LOWER_IS_BETTER else "up"
    ax.set_xlabel("latency p50, batch 1 (ms)")
    ax.set_ylabel(f"held-out {metric}")
    ax.set_title(f"{metric} vs latency ({better} and left is better)")
    ax.grid(alpha=0.3)
    if rows:
        legend_below(ax)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
