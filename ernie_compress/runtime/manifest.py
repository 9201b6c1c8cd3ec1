"""An export directory's ``manifest.json``: what ``export`` wrote and every runtime reads first."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from ..errors import UserError

MANIFEST_FILE = "manifest.json"
MANIFEST_VERSION = 1


def load_manifest(export_dir: Path) -> dict[str, Any]:
    export_dir = Path(export_dir).expanduser()
    path = export_dir / MANIFEST_FILE
    if not export_dir.is_dir():
        raise UserError(f"{export_dir} does not exist or is not a directory")
    if not path.is_file():
        raise UserError(f"{export_dir}: no {MANIFEST_FILE}; not an export directory "
                        f"(create one with `ernie-compress export`)")
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise UserError(f"{path}: invalid JSON ({exc.msg})") from None
