"""The user docs (README.md and docs/*.md) hold together: every relative link and anchor resolves,
every docs page is linked from the README, the README stays short, its test command is the one CI
runs, and its recipe is one the recipe parser accepts."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
PAGES = [README, *sorted((ROOT / "docs").rglob("*.md"))]
FENCE = re.compile(r"^(```|~~~)")
LINK = re.compile(r"(?<!!)\[[^\]]*\]\(([^)\s]+)\)")
CODE_SPAN = re.compile(r"`[^`]*`")


def prose_lines(text: str) -> list[str]:
    """The lines outside fenced code blocks."""
    lines, fenced = [], False
    for line in text.splitlines():
        if FENCE.match(line.strip()):
            fenced = not fenced
        elif not fenced:
            lines.append(line)
    return lines


def github_slug(heading: str) -> str:
    """The anchor GitHub gives a heading: markup dropped, lower case, punctuation other than '-' and
    '_' removed, spaces to '-'."""
    text = re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", heading).replace("`", "").strip().lower()
    return re.sub(r"[^\w\- ]", "", text).replace(" ", "-")


def anchors(page: Path) -> set[str]:
    """Every heading's anchor in a Markdown page; a repeated one gets -1, -2, ... as on GitHub."""
    seen: dict[str, int] = {}
    found = set()
    for line in prose_lines(page.read_text(encoding="utf-8")):
        m = re.match(r"^#{1,6}\s+(.*?)\s*#*\s*$", line)
        if not m:
            continue
        slug = github_slug(m.group(1))
        found.add(slug if slug not in seen else f"{slug}-{seen[slug]}")
        seen[slug] = seen.get(slug, 0) + 1
    return found


def links(page: Path) -> list[str]:
    """The link targets of a page's prose (code blocks and code spans left out)."""
    return [m.group(1) for line in prose_lines(page.read_text(encoding="utf-8"))
            for m in LINK.finditer(CODE_SPAN.sub("", line))]


def broken_links(page: Path) -> list[str]:
    """The relative links of ``page`` whose file, or whose anchor in that file, does not exist."""
    broken = []
    for target in links(page):
        if re.match(r"^[a-z][a-z0-9+.-]*:", target):  # http:, https:, mailto: — not checked here
            continue
        path, _, anchor = target.partition("#")
        file = (page.parent / path).resolve() if path else page
        if not file.exists():
            broken.append(target)
        elif anchor and (file.suffix != ".md" or anchor not in anchors(file)):
            broken.append(target)
    return broken


@pytest.mark.parametrize("page", PAGES, ids=lambda p: str(p.relative_to(ROOT)))
def test_every_relative_link_resolves(page):
    assert links(page) or page != README
    assert broken_links(page) == []


def test_a_broken_link_or_anchor_is_seen(tmp_path):
    (tmp_path / "other.md").write_text("# Other\n\n## A `code` heading: yes\n", encoding="utf-8")
    page = tmp_path / "page.md"
    page.write_text("# Page\n[ok](other.md#a-code-heading-yes) [self](#page) [web](https://example.com)\n"
                    "[gone](missing.md) [bad anchor](other.md#nope) `[in code](nowhere.md)`\n"
                    "```\n[in a block](nowhere.md)\n```\n", encoding="utf-8")
    assert broken_links(page) == ["missing.md", "other.md#nope"]


def test_every_docs_page_is_linked_from_the_readme():
    linked = {(ROOT / t.partition("#")[0]).resolve() for t in links(README) if t.startswith("docs/")}
    assert set(PAGES[1:]) <= linked and len(PAGES) > 1


def test_the_readme_fits_a_screenful_of_reading():
    assert len(README.read_text(encoding="utf-8").splitlines()) <= 250


def test_the_readme_test_command_is_the_one_ci_runs():
    ci = (ROOT / ".ci" / "run").read_text(encoding="utf-8").splitlines()
    command = ci[ci.index("# The README's test command:") + 1]
    assert command.startswith("pip install") and "pytest" in command
    assert command in README.read_text(encoding="utf-8").splitlines()


def test_the_readme_recipe_parses():
    from ernie_compress.recipe import parse_recipe

    text = README.read_text(encoding="utf-8")
    block = re.search(r"```yaml\n(.*?)```", text, re.S).group(1)
    recipe = parse_recipe(block, "README.md")
    assert [s.kind for s in recipe.stages] == ["distill", "prune", "quantize", "export", "evaluate"]
