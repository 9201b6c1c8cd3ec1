"""What a search reports: the Pareto frontier of its trials, the point chosen inside the budget, and the
files a person reads and reruns (``report.md``, ``report.json``, ``report.png``, every frontier point's
recipe under ``frontier/``, the chosen model's export and recipe under ``chosen/``).

The objectives are dev-split numbers (what the search chose by); the frontier's points are also
scored on the task's held-out split for the report, once, after the search, so choosing never saw it.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

OBJECTIVE_KEYS = ("accuracy", "latency", "size")
FRONTIER_DIR, CHOSEN_DIR = "frontier", "chosen"
HELD_OUT_CACHE = "held-out-scores.json"  # the frontier points' held-out metric, computed once each


@dataclass(frozen=True)
class Budget:
    """The user's budget: latency p50 (ms), size (MB), least dev metric (points); None: no bound."""

    latency_ms: float | None = None
    max_size_mb: float | None = None
    min_accuracy: float | None = None

    @property
    def given(self) -> bool:
        return any(v is not None for v in (self.latency_ms, self.max_size_mb, self.min_accuracy))

    def holds(self, point: dict[str, float]) -> bool:
        return ((self.latency_ms is None or point["latency"] <= self.latency_ms)
                and (self.max_size_mb is None or point["size"] <= self.max_size_mb)
                and (self.min_accuracy is None or point["accuracy"] >= self.min_accuracy))

    def shortfall(self, point: dict[str, float]) -> float:
        """How far outside the budget a point is: the sum of its relative excesses (0 inside)."""
        parts = []
        if self.latency_ms is not None:
            parts.append(max(0.0, point["latency"] / self.latency_ms - 1))
        if self.max_size_mb is not None:
            parts.append(max(0.0, point["size"] / self.max_size_mb - 1))
        if self.min_accuracy is not None:
            parts.append(max(0.0, (self.min_accuracy - point["accuracy"]) / max(abs(self.min_accuracy), 1e-9)))
        return sum(parts)

    def text(self, metric: str) -> str:
        parts = []
        if self.latency_ms is not None:
            parts.append(f"p50 <= {self.latency_ms:g} ms")
        if self.max_size_mb is not None:
            parts.append(f"<= {self.max_size_mb:g} MB")
        if self.min_accuracy is not None:
            parts.append(f"dev {metric} >= {self.min_accuracy:.2f}")
        return ", ".join(parts) or "no budget"


def _point(trial) -> dict[str, float] | None:
    attrs = trial.user_attrs
    if trial.state.name != "COMPLETE" or any(k not in attrs for k in OBJECTIVE_KEYS):
        return None
    return {k: float(attrs[k]) for k in OBJECTIVE_KEYS}


def point_text(trial, metric: str) -> str:
    p = _point(trial)
    return f"dev {metric} {p['accuracy']:.2f}, p50 {p['latency']:.2f} ms, {p['size']:.1f} MB" if p else ""


def trial_text(trial, metric: str) -> str:
    what = trial.user_attrs.get("values", "")
    if trial.state.name == "COMPLETE":
        return f"{what} -> {point_text(trial, metric)}"
    reason = trial.user_attrs.get("stopped") or trial.user_attrs.get("error") or (
        "interrupted" if trial.user_attrs.get("interrupted") else "")
    return f"{what}{f' ({reason})' if reason else ''}"


def count_text(study, trials: int | None) -> str:
    from .study import finished

    done = finished(study)
    return f"{done}/{trials} trials" if trials else f"{done} trials"


def best_inside(study, budget: Budget):
    """The most accurate completed trial inside the budget (the faster of equals), or None."""
    inside = [t for t in study.get_trials(deepcopy=False) if _point(t) is not None and budget.holds(_point(t))]
    return max(inside, key=lambda t: (_point(t)["accuracy"], -_point(t)["latency"]), default=None)


SHORT = {"distill.student": "{}", "distill.epochs": "{} ep", "prune.params": "prune {}", "quantize.precision": "{}"}


def short_values(params: dict[str, Any]) -> str:
    """A trial's values in a legend's few words: ``demo-mini, 2 ep, prune 0.15, int8-ptq``."""
    words = []
    for key, value in params.items():
        if key == "prune.params" and value is None:
            continue
        words.append(SHORT.get(key, key.split(".")[-1] + " {}").format(value))
    return ", ".join(words)


def _row(trial, metric: str) -> dict[str, Any]:
    row: dict[str, Any] = {"number": trial.number, "state": trial.state.name.lower(),
                           "values": trial.user_attrs.get("values", ""), "params": dict(trial.params),
                           "short": short_values(dict(trial.params))}
    if _point(trial) is not None:
        row.update(_point(trial), recipe=trial.user_attrs.get("recipe"), export=trial.user_attrs.get("export"),
                   recipe_text=trial.user_attrs.get("recipe_text", ""), student_dev=trial.user_attrs.get("student_dev"),
                   text=point_text(trial, metric))
    for key in ("stopped", "error", "interrupted", "retry_of"):
        if key in trial.user_attrs:
            row[key] = trial.user_attrs[key]
    return row


def _held_out(out: Path, rows: list[dict[str, Any]], target) -> str | None:
    """Score each frontier point's export on the task's held-out split (cached in ``out``); the split's
    name, or None where the held-out split is the dev split itself."""
    from ..data.tasks import TaskSpec, load_task
    from ..runtime.evaluate_export import EvaluateExportConfig, evaluate_export
    from ..runtime.latency import LatencyConfig

    split = load_task(TaskSpec(target.task, target.data)).held_out
    if split == "dev":
        return None
    cache_path = out / HELD_OUT_CACHE
    cache = json.loads(cache_path.read_text()) if cache_path.is_file() else {}
    for row in rows:
        key = str(row["number"])
        if key not in cache and not Path(row["export"]).is_dir():
            continue  # another worker's trial, on its disk
        if key not in cache:
            evaluation = evaluate_export(EvaluateExportConfig(
                Path(row["export"]), runtime=target.runtime, split=split,
                latency=LatencyConfig(batch_sizes=(1,), seq_len=8, warmup=0, iterations=1)))
            cache[key] = 100 * evaluation.metrics[target.metric]
        row[split] = cache[key]
    cache_path.write_text(json.dumps(cache, indent=2))
    return split


def write(out: Path, study, target, teacher_dev: float, budget: Budget, settings, finish: bool = False) -> dict:
    """Write the report files for the study as it stands; ``finish``: also score the frontier on the
    held-out split and copy the chosen model and the frontier's recipes. Returns the report's data."""
    metric = target.metric
    trials = sorted((t for t in study.get_trials(deepcopy=False) if not t.user_attrs.get("surplus")),
                    key=lambda t: t.number)
    rows = [_row(t, metric) for t in trials]
    frontier_numbers = {t.number for t in study.best_trials} if any(_point(t) for t in trials) else set()
    frontier = [r for r in rows if r["number"] in frontier_numbers]
    chosen_trial = best_inside(study, budget)
    chosen = next((r for r in rows if chosen_trial is not None and r["number"] == chosen_trial.number), None)
    if chosen is not None and chosen["number"] not in frontier_numbers:
        frontier.append(chosen)  # equal to a frontier point on every objective: shown as one
    complete = [r for r in rows if "accuracy" in r]
    closest = min(complete, key=lambda r: budget.shortfall(r), default=None) if chosen is None else None
    held_out = None
    if finish and frontier:
        held_out = _held_out(out, frontier, target)
        _copy_recipes(out, frontier)
        if chosen is not None:
            _copy_chosen(out, chosen)
    counts = {state: sum(r["state"] == state for r in rows) for state in ("complete", "pruned", "fail", "running")}
    data = {"task": target.task, "metric": metric, "teacher": str(target.teacher), "teacher_dev": teacher_dev,
            "objectives": list(settings.objectives), "budget": budget.text(metric), "budget_limits": asdict(budget),
            "storage": settings.storage,
            "study": settings.name, "held_out_split": held_out, "counts": counts,
            "runtime": {"device": target.runtime.device, "threads": target.runtime.threads,
                        "batch_size": target.latency.batch_sizes[0], "seq_len": target.latency.seq_len},
            "frontier": sorted(frontier, key=lambda r: r["latency"]), "chosen": chosen, "closest": closest,
            "trials": rows}
    (out / "report.json").write_text(json.dumps(data, indent=2, ensure_ascii=False, default=str) + "\n")
    (out / "report.md").write_text(markdown(data), encoding="utf-8")
    if complete:
        plot(data, out / "report.png")
    return data


def _copy_recipes(out: Path, frontier: list[dict[str, Any]]) -> None:
    folder = out / FRONTIER_DIR
    folder.mkdir(exist_ok=True)
    for row in frontier:
        path = folder / f"trial-{row['number']:04d}.yaml"
        path.write_text(row["recipe_text"], encoding="utf-8")
        row["frontier_recipe"] = str(path)


def _copy_chosen(out: Path, chosen: dict[str, Any]) -> None:
    """The chosen trial's export (verified by its export stage) and recipe under ``chosen/``; a trial
    another worker ran leaves its export on that worker's disk: its recipe rebuilds it here."""
    folder, staging = out / CHOSEN_DIR, out / f".{CHOSEN_DIR}.tmp"
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir()
    if Path(chosen["export"]).is_dir():
        shutil.copytree(chosen["export"], staging / "export")
    else:
        chosen["export_elsewhere"] = "another worker ran this trial: `ernie-compress run chosen/recipe.yaml` rebuilds it"
    (staging / "recipe.yaml").write_text(chosen["recipe_text"], encoding="utf-8")
    (staging / "trial.json").write_text(json.dumps(chosen, indent=2, ensure_ascii=False, default=str) + "\n")
    shutil.rmtree(folder, ignore_errors=True)
    staging.rename(folder)
    chosen["chosen_dir"] = str(folder)


def markdown(data: dict[str, Any]) -> str:
    metric, held = data["metric"], data["held_out_split"]
    lines = [f"# Compression search: {data['task']}", "",
             f"Teacher `{data['teacher']}`: dev {metric} {data['teacher_dev']:.2f}. Objectives: "
             f"{', '.join(data['objectives'])}; budget: {data['budget']}. Latency: p50 at batch "
             f"{data['runtime']['batch_size']}, sequence {data['runtime']['seq_len']}, {data['runtime']['device']}"
             f" ({data['runtime']['threads'] or 'all'} threads). Study `{data['study']}` in `{data['storage']}`.", "",
             "Trials: " + ", ".join(f"{n} {state}" for state, n in data["counts"].items() if n) + ".", ""]
    chosen = data["chosen"]
    if chosen is not None:
        lines += [f"**Chosen** (the most accurate inside the budget): trial {chosen['number']}, {chosen['values']}: "
                  f"{chosen['text']}; export and recipe in `{chosen.get('chosen_dir', CHOSEN_DIR)}`.", ""]
    elif data["closest"] is not None:
        lines += [f"No trial is inside the budget; the closest: trial {data['closest']['number']}, "
                  f"{data['closest']['values']}: {data['closest']['text']}.", ""]
    header = ["trial", "values", f"dev {metric}"] + ([f"{held} {metric}"] if held else []) + [
        "p50 ms", "MB", "recipe"]
    lines += ["## Pareto frontier (dev split), fastest first", "", "| " + " | ".join(header) + " |",
              "|" + "---|" * len(header)]
    for r in data["frontier"]:
        cells = [str(r["number"]), r["values"], f"{r['accuracy']:.2f}"] + (
            [f"{r[held]:.2f}" if held in r else ""] if held else []) + [
            f"{r['latency']:.2f}", f"{r['size']:.1f}", f"`{r.get('frontier_recipe', r['recipe'])}`"]
        lines.append("| " + " | ".join(cells) + " |")
    dominated = [r for r in data["trials"] if "accuracy" in r and r["number"] not in {f["number"] for f in data["frontier"]}]
    if dominated:
        lines += ["", "## Dominated trials", "", f"| trial | values | dev {metric} | p50 ms | MB |", "|---|---|---|---|---|"]
        lines += [f"| {r['number']} | {r['values']} | {r['accuracy']:.2f} | {r['latency']:.2f} | {r['size']:.1f} |"
                  for r in dominated]
    others = [r for r in data["trials"] if "accuracy" not in r]
    if others:
        lines += ["", "## Stopped, failed or unfinished trials", "", "| trial | state | values | why |", "|---|---|---|---|"]
        lines += [f"| {r['number']} | {r['state']} | {r['values']} | "
                  f"{r.get('stopped') or r.get('error') or ('interrupted' if r.get('interrupted') else '')} |"
                  for r in others]
    return "\n".join(lines) + "\n"


def plot(data: dict[str, Any], path: Path) -> None:
    """Accuracy against latency: the frontier's points each in the legend (no label can overlap another),
    dominated trials grey, marker area by size; the axes fitted to the trials, the teacher and the
    budget drawn where they fall inside and named at the edge where not; latency on a log axis when
    it spans more than a decade (``plotting.py``)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from ..plotting import figure_height, fitted_limits, legend_below, reference_level, set_latency_axis

    metric = data["metric"]
    complete = [r for r in data["trials"] if "accuracy" in r]
    frontier = data["frontier"]
    sizes = [r["size"] for r in complete]
    span = max(sizes) - min(sizes)
    area = lambda mb: 40 + 260 * (mb - min(sizes)) / span if span else 120  # noqa: E731
    fig, ax = plt.subplots(figsize=(8, figure_height(len(frontier))))
    dominated = [r for r in complete if r["number"] not in {f["number"] for f in frontier}]
    if dominated:
        ax.scatter([r["latency"] for r in dominated], [r["accuracy"] for r in dominated],
                   s=[area(r["size"]) for r in dominated], color="0.75", label="dominated", zorder=2)
    ordered = sorted(frontier, key=lambda r: r["latency"])
    ax.plot([r["latency"] for r in ordered], [r["accuracy"] for r in ordered], color="0.3", lw=1, zorder=3)
    colors = plt.get_cmap("tab10")
    for i, r in enumerate(ordered):
        mark = " (chosen)" if data["chosen"] is not None and r["number"] == data["chosen"]["number"] else ""
        ax.scatter([r["latency"]], [r["accuracy"]], s=area(r["size"]), color=colors(i % 10), edgecolor="black",
                   zorder=4, label=f"#{r['number']}{mark}: {r['short']} ({r['size']:.1f} MB)")
    set_latency_axis(ax, [r["latency"] for r in complete])
    ax.set_ylim(*fitted_limits([r["accuracy"] for r in complete]))
    reference_level(ax, data["teacher_dev"], f"teacher {data['teacher_dev']:.2f}", "tab:blue", "--")
    limits = data["budget_limits"]
    if limits["min_accuracy"] is not None:
        reference_level(ax, limits["min_accuracy"], f"budget: dev {metric} >= {limits['min_accuracy']:.2f}",
                        "tab:red", ":")
    if limits["latency_ms"] is not None:
        ax.axvline(limits["latency_ms"], color="tab:red", ls=":", lw=1, zorder=1)
        ax.annotate(f"budget {limits['latency_ms']:g} ms", xy=(limits["latency_ms"], 0.0),
                    xycoords=("data", "axes fraction"), xytext=(3, 4), textcoords="offset points", fontsize=8,
                    color="tab:red", annotation_clip=True)
    ax.set_xlabel(f"latency p50, ms (batch {data['runtime']['batch_size']}, {data['runtime']['device']})")
    ax.set_ylabel(f"dev {metric}")
    ax.set_title(f"Compression search on {data['task']}: {len(complete)} trials, {len(frontier)} on the frontier "
                 f"(marker area: MB)", fontsize=10)
    ax.grid(True, alpha=0.3)
    legend_below(ax)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
