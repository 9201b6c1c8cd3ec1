"""Put generated tables into the README, so that no measured number there is typed by hand.

Each generated table lives in ``benchmarks/results/NAME.md``, written by the command that measures
it (``ernie-compress report`` writes ``report.md`` for a run; ``benchmarks/quantization.py
--markdown FILE``); the README shows it between ``<!-- generated: NAME -->`` and
``<!-- /generated: NAME -->``, next to the command. ``tests/test_readme_tables.py`` fails when the
two differ, so a hand edit of a README table, or a new result not copied in, is caught. One block
is not measured but generated from the code: ``options`` (every stage's options, from the stage
configs; ``ernie_compress/option_tables.py``), rewritten on every run of this script.

    python benchmarks/readme_tables.py --take demo=runs/demo/report.md   # store a result, update README
    python benchmarks/readme_tables.py                                   # update README from results/
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


def result_text(path: Path) -> str:
    """A result file as the README shows it: without a leading ``# title`` line (report.md has one)."""
    lines = path.read_text(encoding="utf-8").strip().splitlines()
    if lines and lines[0].startswith("# "):
        lines = lines[1:]
    return "\n".join(lines).strip() + "\n"


def readme_blocks(text: str) -> dict[str, str]:
    return {m["name"]: m["body"] for m in BLOCK.finditer(text)}


def updated_readme(text: str) -> str:
    def fill(m: re.Match) -> str:
        source = RESULTS / f"{m['name']}.md"
        if not source.is_file():  # not measured yet: left as it is (the test asks for every one)
            print(f"README block '{m['name']}': no {source.relative_to(ROOT)} yet", file=sys.stderr)
            return m.group(0)
        return m.group(1) + result_text(source) + m.group(4)
    return BLOCK.sub(fill, text)


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
    text = README.read_text(encoding="utf-8")
    README.write_text(updated_readme(text), encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
