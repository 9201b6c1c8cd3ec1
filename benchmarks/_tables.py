"""Shared output of the benchmark scripts: a Markdown table, then the JSON result (also to a file)."""

from __future__ import annotations

import json
from pathlib import Path


def emit(title: str, rows: list[dict], cols: list[str], result: dict, json_path: Path | None,
         digits: int = 2) -> None:
    print(f"\n{title}\n")
    print("| " + " | ".join(cols) + " |")
    print("|" + "---|" * len(cols))
    for row in rows:
        print("| " + " | ".join(row[c] if isinstance(row[c], str) else f"{row[c]:.{digits}f}" for c in cols) + " |")
    print("\n" + json.dumps(result))
    if json_path:
        json_path.write_text(json.dumps(result, indent=2))
