"""The resumable state of a streamed, sharded write (``quantize --weight-only --stream``): the shards
finished so far, kept beside ``--out`` in the stage's resumable-state folder
(``training_loop.train_state_dir``) until the checkpoint is complete.

Each finished shard is recorded in :data:`PROGRESS_FILE` with its sha256, the tensor names it holds (for
the index), its bytes and what the walk that made it needs to report later (GPTQ: each Linear's rounding
and each expert's token record). The file is replaced atomically after each shard, so a run killed at any
point leaves the shards it recorded intact. ``--resume`` continues after the last recorded shard, once the
run's fingerprint (parent checkpoint, options, shard count, layout, process count) matches and every
recorded shard's sha256 is checked; a shard that fails the check and those after it are written again.
GPTQ's calibration hidden states at the resume point are the walk's own business (``sequential.py``).
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .checkpoint import sha256_file
from .errors import UserError

PROGRESS_FILE = "stream_progress.json"


def fingerprint_tag(fingerprint: dict[str, Any]) -> str:
    """A short digest of a run's fingerprint: every rank computes the same from the same options."""
    return hashlib.sha256(json.dumps(fingerprint, sort_keys=True).encode()).hexdigest()[:12]


@dataclass
class ShardProgress:
    """The shards of one streamed write finished so far, in order (module docstring)."""

    directory: Path  # where the shards are written until the checkpoint is complete
    fingerprint: dict[str, Any]
    shards: list[dict[str, Any]] = field(default_factory=list)  # {"name", "sha256", "keys", "bytes", "extra"}

    @property
    def done(self) -> int:
        """How many groups (shards) are finished: the walk continues with the next."""
        return len(self.shards)

    @classmethod
    def start(cls, directory: Path, fingerprint: dict[str, Any], resume: bool) -> ShardProgress:
        """A fresh record in ``directory`` (which the caller has emptied), or with ``resume`` the one an
        interrupted run left there: refused when there is none or it is from a run with other settings;
        its shards checked (the first that fails the check and every one after it are dropped)."""
        directory = Path(directory)
        if not resume:
            directory.mkdir(parents=True, exist_ok=True)
            progress = cls(directory, fingerprint)
            progress._save()
            return progress
        path = directory / PROGRESS_FILE
        if not path.is_file():
            raise UserError(f"nothing to resume: no streamed write was interrupted in {directory}; run without "
                            f"--resume")
        saved = json.loads(path.read_text(encoding="utf-8"))
        if saved["fingerprint"] != fingerprint:
            changed = _differences(saved["fingerprint"], fingerprint)
            raise UserError(f"the interrupted write in {directory} is from a run with other settings "
                            f"({', '.join(changed)} differ); start again without --resume")
        progress = cls(directory, fingerprint)
        for shard in saved["shards"]:
            file = directory / shard["name"]
            if not file.is_file() or sha256_file(file) != shard["sha256"]:
                break  # written again, with the ones after it
            progress.shards.append(shard)
        progress._save()
        return progress

    def add(self, name: str, keys: list[str], nbytes: int, extra: dict[str, Any] | None = None) -> None:
        """Record shard ``name`` (written to :attr:`directory`) as finished."""
        self.shards.append({"name": name, "sha256": sha256_file(self.directory / name), "keys": keys,
                            "bytes": nbytes, "extra": extra or {}})
        self._save()

    def _save(self) -> None:
        path = self.directory / PROGRESS_FILE
        partial = path.with_suffix(".partial")
        partial.write_text(json.dumps({"fingerprint": self.fingerprint, "shards": self.shards}, indent=1) + "\n",
                           encoding="utf-8")
        os.replace(partial, path)


def _differences(old: dict[str, Any], new: dict[str, Any]) -> list[str]:
    """The keys whose values differ, a nested dict's by their own keys (``options`` -> its option names)."""
    changed = []
    for key in sorted({*old, *new}):
        a, b = old.get(key), new.get(key)
        if isinstance(a, dict) and isinstance(b, dict):
            changed += _differences(a, b)
        elif a != b:
            changed.append(key)
    return changed
