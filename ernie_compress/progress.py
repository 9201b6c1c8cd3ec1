"""Progress bars on stderr (stdout stays clean for ``--json``), silenced with ``--quiet``."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, \
    TimeRemainingColumn

stderr_console = Console(stderr=True)
_enabled = True


def set_enabled(enabled: bool) -> None:
    global _enabled
    _enabled = enabled


def enabled() -> bool:
    return _enabled


class _Bar:
    def __init__(self, progress: Progress | None, task_id):
        self._progress, self._task = progress, task_id

    def advance(self, values: dict[str, float] | None = None, steps: int = 1) -> None:
        if self._progress is None:
            return
        shown = "  ".join(f"{k} {v:.4f}" for k, v in (values or {}).items())
        self._progress.update(self._task, advance=steps, info=shown)


@contextlib.contextmanager
def progress_bar(total: int, description: str) -> Iterator[_Bar]:
    """A bar with ``total`` steps; ``advance(values)`` shows named values (losses) beside it."""
    if not _enabled or total <= 0:
        yield _Bar(None, None)
        return
    progress = Progress(TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
                        TimeElapsedColumn(), TextColumn("<"), TimeRemainingColumn(),
                        TextColumn("{task.fields[info]}"), console=stderr_console, transient=False)
    with progress:
        task_id = progress.add_task(description, total=total, info="")
        yield _Bar(progress, task_id)


def warn(message: str) -> None:
    """A warning line on stderr, shown even with --quiet (it says something about the result)."""
    stderr_console.print(f"warning: {message}", highlight=False, soft_wrap=True)


def note(message: str) -> None:
    """A status line on stderr (hidden with --quiet)."""
    if _enabled:
        stderr_console.print(message, highlight=False, soft_wrap=True)
