"""The slow suite (`python -m pytest -m slow`): end-to-end runs on the real built-in data. Every test
here carries the `slow` marker, so the default suite deselects them; `.ci/run` runs them after it."""

from __future__ import annotations

from pathlib import Path

import pytest

README = Path(__file__).resolve().parents[2] / "README.md"


def pytest_collection_modifyitems(items):
    here = Path(__file__).parent
    for item in items:
        if here in Path(item.fspath).parents:
            item.add_marker(pytest.mark.slow)


@pytest.fixture(scope="session")
def readme() -> str:
    return README.read_text(encoding="utf-8")
