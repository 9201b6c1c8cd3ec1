"""Which task and data a command runs on: ``--task`` and ``--data``, declared once for the stages
(``stages/common.py``) and for ``bench``."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from ..options import fail, option
from .tasks import TaskSpec, resolve_task

TASK_HELP = ("Task: demo:sentiment, demo:ner, demo:lm (built in), or with --data: tnews, afqmc, text, "
             "text-pair, msra-ner, cmrc2018, lm. Default: the task the checkpoint (or export) was trained on.")


@dataclass(frozen=True, kw_only=True)
class TaskOptions:
    task: str | None = option(None, short="-t", scope="run", help=TASK_HELP)
    data: Path | None = option(None, scope="run", help="Folder with train, dev and (optional) test files "
                                                       "(.json, .jsonl, .tsv, .txt) for --task.")

    @property
    def task_spec(self) -> TaskSpec | None:
        """The task named by the options, or None to use the checkpoint's own."""
        if not self.task:
            if self.data is not None:
                fail("{data} needs {task} to say the file format", "data", "task")
            return None
        return resolve_task(self.task, None if self.data is None else str(self.data), None)
