"""Run ``ernie-compress`` as a user would, from a benchmark: a fresh process, ``--quiet --json``."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def cli(*args: str) -> dict:
    """The JSON result of ``ernie-compress ARGS``; exits with its error line if it fails."""
    done = subprocess.run([sys.executable, "-m", "ernie_compress", "--quiet", "--json", *args], capture_output=True,
                          text=True, cwd=ROOT)
    if done.returncode:
        sys.exit(f"ernie-compress {' '.join(args)}: {done.stderr.strip()}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def cli_or_refusal(*args: str) -> tuple[dict | None, str | None]:
    """``cli(*args)``'s result, or (None, its one-line refusal) when the command refuses (exit code 2)."""
    done = subprocess.run([sys.executable, "-m", "ernie_compress", "--quiet", "--json", *args], capture_output=True,
                          text=True, cwd=ROOT)
    if done.returncode == 2:
        return None, done.stderr.strip().removeprefix("error: ")
    if done.returncode:
        sys.exit(f"ernie-compress {' '.join(args)}: {done.stderr.strip()}")
    return json.loads(done.stdout.strip().splitlines()[-1]), None
