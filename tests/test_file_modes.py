"""What the toolkit writes is readable as the umask says (0644 files / 0755 folders under 022), not
private to its writer: ``mkdtemp``'s ``drwx------`` and safetensors' ``-rw-------`` must not survive
the atomic rename."""

from __future__ import annotations

import contextlib
import os
import stat
from pathlib import Path

import pytest

from ernie_compress.checkpoint import atomic_output_dir, write_safetensors
from tests.helpers import cli_json, train_tiny_checkpoint


@contextlib.contextmanager
def umask(mask: int):
    old = os.umask(mask)
    try:
        yield
    finally:
        os.umask(old)


def modes(root: Path) -> dict[str, int]:
    """Permission bits of ``root`` and everything under it, by relative path."""
    return {str(p.relative_to(root)): stat.S_IMODE(os.stat(p).st_mode) for p in (root, *root.rglob("*"))}


@pytest.mark.parametrize("mask, folder, file", [(0o022, 0o755, 0o644), (0o027, 0o750, 0o640)])
def test_an_atomic_output_gets_the_modes_of_the_umask(tmp_path, mask, folder, file):
    import numpy as np

    with umask(mask):
        with atomic_output_dir(tmp_path / "out") as tmp:
            write_safetensors(tmp / "model.safetensors", {"w": np.zeros(2, np.float32)})
            (tmp / "sub").mkdir()
            (tmp / "sub" / "x.json").write_text("{}")
    assert modes(tmp_path / "out") == {".": folder, "model.safetensors": file, "sub": folder, "sub/x.json": file}


def test_train_and_export_write_files_another_user_can_read(tmp_path):
    with umask(0o022):
        ckpt, _ = train_tiny_checkpoint(tmp_path, epochs=1)
        export = tmp_path / "export"
        cli_json(["export", str(ckpt), "--out", str(export), "--format", "onnx"])
    for root in (ckpt, export):
        found = modes(root)
        assert "model.safetensors" in found or any(name.endswith(".onnx") for name in found)
        private = {name: oct(mode) for name, mode in found.items()
                   if mode & 0o044 != 0o044 or (Path(root, name).is_dir() and mode & 0o011 != 0o011)}
        assert not private, f"{root.name}: not readable by group and others: {private}"
