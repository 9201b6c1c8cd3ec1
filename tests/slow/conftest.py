"""The slow suite (`python -m pytest -m slow`): end-to-end runs on the real built-in data. Every test
here carries the `slow` marker, so the default suite deselects them; `.ci/run` runs them after it."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

README = Path(__file__).resolve().parents[2] / "README.md"


def pytest_collection_modifyitems(items):
    here = Path(__file__).parent
    for item in items:
        if here in Path(item.fspath).parents:
            item.add_marker(pytest.mark.slow)


def cli(*args: str, cwd: Path | None = None) -> dict:
    """Run the installed CLI in a subprocess (as a pipeline would) with --quiet --json; its result."""
    res = subprocess.run([sys.executable, "-m", "ernie_compress.cli", "--quiet", "--json", *args],
                         capture_output=True, text=True, cwd=cwd, env=dict(os.environ))
    assert res.returncode == 0, res.stderr[-3000:]
    return json.loads(res.stdout)


@pytest.fixture(scope="session")
def readme() -> str:
    return README.read_text(encoding="utf-8")
