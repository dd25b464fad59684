"""Tasks: built-in SuperGLUE/GLUE tasks and user tasks described in TOML files."""

from __future__ import annotations

from pathlib import Path

from softprompt.errors import SoftPromptError
from softprompt.tasks.base import SPLITS, DataSource, Example, Task, majority_label
from softprompt.tasks.builtin import BUILTIN_TASKS

__all__ = ["BUILTIN_TASKS", "SPLITS", "DataSource", "Example", "Task", "get_task", "majority_label", "task_name"]


def get_task(name: str) -> Task:
    """A built-in task by name, or a user task from a `.toml` file path."""
    if name.endswith(".toml"):
        from softprompt.tasks.custom import load_task_file

        return load_task_file(Path(name))
    key = name.lower()
    if key not in BUILTIN_TASKS:
        raise SoftPromptError(f"unknown task {name!r}: expected one of {', '.join(BUILTIN_TASKS)} or a path to a task .toml file")
    return BUILTIN_TASKS[key]


def task_name(task: str) -> str:
    """A task as reports name it: a custom task (given by its .toml path) by the name its file declares (its file
    name if the file cannot be read any more), a built-in one by itself."""
    if not task.endswith(".toml"):
        return task
    try:
        return get_task(task).name
    except SoftPromptError:
        return Path(task).stem
