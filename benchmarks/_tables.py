"""Shared output of the benchmark scripts: a Markdown table with the machine it ran on, then the
JSON result (also to a file); ``markdown_path`` keeps the table for ``readme_tables.py``."""

from __future__ import annotations

import json
import statistics
from pathlib import Path


def markdown(title: str, rows: list[dict], cols: list[str], digits: int = 2, threads: int | None = None) -> str:
    from ernie_compress.machine import machine_info, machine_line

    lines = [title, "", "| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    for row in rows:
        lines.append("| " + " | ".join(row[c] if isinstance(row[c], str) else f"{row[c]:.{digits}f}"
                                        for c in cols) + " |")
    return "\n".join(lines + ["", machine_line(machine_info(threads))])


def emit(title: str, rows: list[dict], cols: list[str], result: dict, json_path: Path | None,
         digits: int = 2, markdown_path: Path | None = None, threads: int | None = None,
         summary: dict | None = None) -> None:
    """Print the table and the JSON result (``summary`` instead, when the result is too long to
    read on a terminal; ``json_path`` gets the whole result either way)."""
    table = markdown(title, rows, cols, digits, threads)
    print("\n" + table)
    print("\n" + json.dumps(result if summary is None else summary))
    if json_path:
        json_path.write_text(json.dumps(result, indent=2))
    if markdown_path:
        markdown_path.write_text(table + "\n")


def operator_rows(ops: dict[str, dict[str, float]], top: int, unit: str, digits: int) -> list[dict]:
    """A per-operator table from ``ops`` (model -> operator type -> ms): the ``top`` operator types by
    their largest time in any model, the rest summed in one row, and all operators' total; one
    column per model (``"{model} {unit}"``)."""
    names = list(ops)
    ranked = sorted({op for n in names for op in ops[n]}, key=lambda op: -max(ops[n].get(op, 0.0) for n in names))
    shown, rest = ranked[:top], ranked[top:]

    def row(label: str, kinds: list[str]) -> dict:
        return {"operator": label, **{f"{n} {unit}": f"{sum(ops[n].get(op, 0.0) for op in kinds):.{digits}f}"
                                      for n in names}}

    rows = [row(op, [op]) for op in shown]
    if rest:
        rows.append(row(f"{len(rest)} other types", rest))
    rows.append(row("all operators (profiled)", ranked))
    return rows


def median_interval(values: list[float], digits: int) -> str:
    """``median (min-max)`` of a measurement's rounds, thousands separated."""
    return f"{statistics.median(values):,.{digits}f} ({min(values):,.{digits}f}-{max(values):,.{digits}f})"
