"""Every generated table in the README and the pages of docs/ is a copy of a result in
benchmarks/results/ (benchmarks/readme_tables.py puts them there); a hand edit of a table fails here."""

from __future__ import annotations

import importlib.util
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
_spec = importlib.util.spec_from_file_location("readme_tables", ROOT / "benchmarks" / "readme_tables.py")
readme_tables = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(readme_tables)


def test_the_tables_are_the_generated_results():
    blocks = readme_tables.all_blocks()
    results = sorted(p.stem for p in readme_tables.RESULTS.glob("*.md"))
    assert sorted({name for _, name, _ in blocks}) == results  # every result shown, every block backed by a result
    for page, name, body in blocks:
        assert body == readme_tables.result_text(readme_tables.RESULTS / f"{name}.md"), f"{page}: {name}"


def test_the_pages_are_the_readme_and_every_docs_page():
    pages = readme_tables.doc_pages()
    assert pages[0] == readme_tables.README
    assert set(pages[1:]) == set((ROOT / "docs").rglob("*.md")) and len(pages) > 1
    assert {page.parent.name for page, _, _ in readme_tables.all_blocks()} >= {ROOT.name, "docs"}


def test_a_hand_edit_is_seen():
    page, name, body = next(b for b in readme_tables.all_blocks() if b[0].parent.name == "docs")
    text = page.read_text(encoding="utf-8")
    edited = text.replace(body, body.replace("|", "| 9.99 |", 1), 1)
    assert readme_tables.readme_blocks(edited)[name] != readme_tables.result_text(readme_tables.RESULTS / f"{name}.md")
    assert readme_tables.updated_readme(edited) == text  # and the script restores it


def test_the_script_rewrites_a_stale_block_in_a_docs_page(tmp_path):
    results = tmp_path / "results"
    results.mkdir()
    (results / "t.md").write_text("# title\n| a |\n|---|\n| 1 |\n", encoding="utf-8")
    (tmp_path / "README.md").write_text("no blocks\n", encoding="utf-8")
    page = tmp_path / "docs" / "deep" / "page.md"
    page.parent.mkdir(parents=True)
    page.write_text("x\n<!-- generated: t -->\n| a |\n|---|\n| 2 |\n<!-- /generated: t -->\ny\n", encoding="utf-8")
    assert readme_tables.update_pages(tmp_path, results) == [page]
    assert page.read_text(encoding="utf-8") == "x\n<!-- generated: t -->\n| a |\n|---|\n| 1 |\n<!-- /generated: t -->\ny\n"
    assert readme_tables.update_pages(tmp_path, results) == []  # current now: nothing rewritten


def test_the_option_tables_are_the_stage_configs():
    from ernie_compress.option_tables import markdown

    assert readme_tables.result_text(readme_tables.RESULTS / "options.md") == markdown().strip() + "\n"
