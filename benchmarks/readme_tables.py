"""Put generated tables into the README and the pages of docs/, so that no measured number there is typed by hand.

Each generated table lives in ``benchmarks/results/NAME.md``, written by the command that measures
it (``ernie-compress report`` writes ``report.md`` for a run; ``benchmarks/quantization.py
--markdown FILE``); a page shows it between ``<!-- generated: NAME -->`` and
``<!-- /generated: NAME -->``, next to the command. The pages are ``README.md`` and every
``docs/**/*.md``; a block may sit in any of them, and the same block in several.
``tests/test_readme_tables.py`` fails when a block and its result differ, so a hand edit of a
table, or a new result not copied in, is caught. One block is not measured but generated from the
code: ``options`` (every stage's options, from the stage configs; ``ernie_compress/option_tables.py``),
rewritten on every run of this script.

    python benchmarks/readme_tables.py --take demo=runs/demo/report.md   # store a result, update the pages
    python benchmarks/readme_tables.py                                   # update the pages from results/
"""

from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
README = ROOT / "README.md"
BLOCK = re.compile(r"(<!-- generated: (?P<name>[\w.-]+) -->\n)(?P<body>.*?)(<!-- /generated: (?P=name) -->)", re.S)


def doc_pages(root: Path = ROOT) -> list[Path]:
    """The pages that may hold generated blocks: the README, then every Markdown file under docs/."""
    return [root / "README.md", *sorted((root / "docs").rglob("*.md"))]


def result_text(path: Path) -> str:
    """A result file as a page shows it: without a leading ``# title`` line (report.md has one)."""
    lines = path.read_text(encoding="utf-8").strip().splitlines()
    if lines and lines[0].startswith("# "):
        lines = lines[1:]
    return "\n".join(lines).strip() + "\n"


def readme_blocks(text: str) -> dict[str, str]:
    """The generated blocks of one page's text: name -> body."""
    return {m["name"]: m["body"] for m in BLOCK.finditer(text)}


def all_blocks(root: Path = ROOT) -> list[tuple[Path, str, str]]:
    """Every generated block of every page: (page, name, body)."""
    return [(page, name, body) for page in doc_pages(root) if page.is_file()
            for name, body in readme_blocks(page.read_text(encoding="utf-8")).items()]


def updated_readme(text: str, results: Path = RESULTS) -> str:
    """``text`` (one page) with every block replaced by its result; a block without one stays."""
    def fill(m: re.Match) -> str:
        source = results / f"{m['name']}.md"
        if not source.is_file():  # not measured yet: left as it is (the test asks for every one)
            print(f"block '{m['name']}': no {source} yet", file=sys.stderr)
            return m.group(0)
        return m.group(1) + result_text(source) + m.group(4)
    return BLOCK.sub(fill, text)


def update_pages(root: Path = ROOT, results: Path = RESULTS) -> list[Path]:
    """Rewrite every page whose blocks differ from their results; the pages changed."""
    changed = []
    for page in doc_pages(root):
        if not page.is_file():
            continue
        text = page.read_text(encoding="utf-8")
        new = updated_readme(text, results)
        if new != text:
            page.write_text(new, encoding="utf-8")
            changed.append(page)
    return changed


def write_option_tables() -> None:
    """``results/options.md`` from the stage configs."""
    sys.path.insert(0, str(ROOT))
    from ernie_compress.option_tables import markdown

    (RESULTS / "options.md").write_text(markdown(), encoding="utf-8")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--take", action="append", default=[], metavar="NAME=FILE",
                        help="store FILE as benchmarks/results/NAME.md first")
    args = parser.parse_args(argv)
    RESULTS.mkdir(parents=True, exist_ok=True)
    write_option_tables()
    for item in args.take:
        name, _, file = item.partition("=")
        (RESULTS / f"{name}.md").write_text(Path(file).read_text(encoding="utf-8"), encoding="utf-8")
    for page in update_pages():
        print(f"updated {page.relative_to(ROOT)}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
