"""Task name -> Task: every task registers one instance here (like timm's model registry)."""

from edgezoo.errors import UsageError
from edgezoo.tasks.base import Task

_TASKS: dict[str, Task] = {}


def register_task(task: Task) -> Task:
    """Make `task` known by its name; a name registered twice is a programming error."""
    if task.name in _TASKS:
        raise ValueError(f"task {task.name!r} is registered already")
    _TASKS[task.name] = task
    return task


def get_task(task: "str | Task") -> Task:
    """The task of a name (a Task passes through); UsageError naming the known ones."""
    if isinstance(task, Task):
        return task
    try:
        return _TASKS[task]
    except (KeyError, TypeError):
        raise UsageError(f"unknown task {task!r}; use one of {', '.join(_TASKS)}") from None


def task_names() -> tuple[str, ...]:
    """The registered tasks' names, in registration order."""
    return tuple(_TASKS)


def task_of_graph(output_rank: int, ends_in_argmax: bool = False) -> Task:
    """The task of a bare graph (no zoo name to ask): one whose exported graph ends in ArgMax,
    else the one whose output has this rank, else the first registered (classification)."""
    for task in _TASKS.values():
        if ends_in_argmax and task.export_argmax:
            return task
    for task in _TASKS.values():
        if not ends_in_argmax and task.output_rank == output_rank:
            return task
    return next(iter(_TASKS.values()))
