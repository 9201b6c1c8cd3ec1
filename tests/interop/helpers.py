"""Interop tests run the real reference libraries in their own virtual environments.

``tests/interop/make_reference_venvs.sh`` builds them (``.ci/run`` does). Without them these tests
skip, unless ``ERNIE_COMPRESS_INTEROP=required`` (set by CI), where a missing venv is a failure.
A venv is looked for in ``ERNIE_COMPRESS_REFERENCE_VENVS`` (default ``.venvs``), then in the cache
outside the clone where the script keeps the large PyTorch one (``ERNIE_COMPRESS_VENV_CACHE``,
default ``~/.cache/ernie-compress/venvs``).
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

HERE = Path(__file__).parent
sys.path.insert(0, str(HERE))
VENVS = Path(os.environ.get("ERNIE_COMPRESS_REFERENCE_VENVS", HERE.parent.parent / ".venvs"))
CACHE = Path(os.environ.get("ERNIE_COMPRESS_VENV_CACHE", Path.home() / ".cache" / "ernie-compress" / "venvs"))


def reference_python(library: str) -> Path:
    python = next((p for p in (VENVS / library / "bin" / "python", CACHE / library / "bin" / "python")
                   if p.is_file()), None)
    if python is None:
        message = (f"no {library} reference venv in {VENVS} or {CACHE} "
                   "(run tests/interop/make_reference_venvs.sh)")
        if os.environ.get("ERNIE_COMPRESS_INTEROP") == "required":
            pytest.fail(message)
        pytest.skip(message)
    return python


def run_reference(library: str, *args: str, script: str = "reference.py") -> str:
    """Run ``script`` (reference.py) with the library's own interpreter; its failure output becomes the
    test's. Its standard output."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTHON", "VIRTUAL_ENV"))}
    env.update(PYTHONWARNINGS="ignore", HF_HUB_OFFLINE="1", CUDA_VISIBLE_DEVICES="")
    proc = subprocess.run([str(reference_python(library)), str(HERE / script), *args],
                          capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 0, f"{library} failed:\n{proc.stderr[-4000:]}"
    return proc.stdout


def assert_close(ours: np.ndarray, theirs: np.ndarray, mask: np.ndarray | None = None, rtol: float = 1e-5) -> float:
    """Equal to ``rtol`` relative to the output's scale (on the positions ``mask`` keeps); the max |Δ|."""
    assert ours.shape == theirs.shape, (ours.shape, theirs.shape)
    if mask is not None:
        ours, theirs = ours[mask], theirs[mask]
    scale = float(np.abs(theirs).max())
    delta = float(np.abs(ours - theirs).max())
    assert delta <= rtol * max(scale, 1e-6), f"max |Δ| {delta:.3g} > {rtol} × scale {scale:.3g}"
    return delta
