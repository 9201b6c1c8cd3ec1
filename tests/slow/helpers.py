"""Helpers of the slow suite: the installed CLI run as a subprocess."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path


def cli(*args: str, cwd: Path | None = None) -> dict:
    """Run the installed CLI in a subprocess (as a pipeline would) with --quiet --json; its result."""
    res = subprocess.run([sys.executable, "-m", "ernie_compress.cli", "--quiet", "--json", *args],
                         capture_output=True, text=True, cwd=cwd, env=dict(os.environ))
    assert res.returncode == 0, res.stderr[-3000:]
    return json.loads(res.stdout)
