"""Tasks beyond bits per byte: UDHR article cloze, generation fidelity, any lm-evaluation-harness task (``lmeval:TASK``);
per-item results of both arms."""

from . import cloze, generate, lmeval  # noqa: F401  (register the built-in tasks)
from .base import ARMS, TASKS, Arms, LanguageItems, Metric, Task, TaskContext, TaskKind, TaskSettings, parse_tasks
from .run import run_tasks, tasks_markdown

__all__ = [
    "ARMS",
    "TASKS",
    "Arms",
    "LanguageItems",
    "Metric",
    "Task",
    "TaskContext",
    "TaskKind",
    "TaskSettings",
    "parse_tasks",
    "run_tasks",
    "tasks_markdown",
]
