"""Every measured table in the README is a copy of a generated result in benchmarks/results/
(benchmarks/readme_tables.py puts them there); a hand edit of a README table fails here."""

from __future__ import annotations

import importlib.util
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
_spec = importlib.util.spec_from_file_location("readme_tables", ROOT / "benchmarks" / "readme_tables.py")
readme_tables = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(readme_tables)


def test_readme_tables_are_the_generated_results():
    blocks = readme_tables.readme_blocks(readme_tables.README.read_text(encoding="utf-8"))
    results = sorted(p.stem for p in readme_tables.RESULTS.glob("*.md"))
    assert sorted(blocks) == results  # every result shown, every block backed by a result
    for name, body in blocks.items():
        assert body == readme_tables.result_text(readme_tables.RESULTS / f"{name}.md"), name


def test_a_hand_edit_is_seen():
    text = readme_tables.README.read_text(encoding="utf-8")
    name, body = next(iter(readme_tables.readme_blocks(text).items()))
    edited = text.replace(body, body.replace("|", "| 9.99 |", 1), 1)
    assert readme_tables.readme_blocks(edited)[name] != readme_tables.result_text(readme_tables.RESULTS / f"{name}.md")
    assert readme_tables.updated_readme(edited) == text  # and the script restores it


def test_the_option_tables_are_the_stage_configs():
    from ernie_compress.option_tables import markdown

    assert readme_tables.result_text(readme_tables.RESULTS / "options.md") == markdown().strip() + "\n"
