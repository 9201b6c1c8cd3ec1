"""Tasks, readers and tokenization."""

from .tasks import Example, TaskData, TaskSpec, load_task

__all__ = ["Example", "TaskData", "TaskSpec", "load_task"]
