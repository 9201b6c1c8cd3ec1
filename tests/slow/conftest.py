"""The slow suite (`python -m pytest -m slow`): end-to-end runs on the real built-in data. Every test
here carries the `slow` marker, so the default suite deselects them; `.ci/run` runs them after it."""

from __future__ import annotations

from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
DOC_PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]  # the user docs the numbers are stated in


def pytest_collection_modifyitems(items):
    here = Path(__file__).parent
    for item in items:
        if here in Path(item.fspath).parents:
            item.add_marker(pytest.mark.slow)


@pytest.fixture(scope="session")
def readme() -> str:
    """The text of the README and every docs page, one after another."""
    return "\n".join(page.read_text(encoding="utf-8") for page in DOC_PAGES)
