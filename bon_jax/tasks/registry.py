"""Tasks by name: `get_task("arith", seed=0, num_train=1000)`.

The registry maps a name to `"module:ClassName"`; the module is imported on first use, so registering a
task costs nothing and a task whose optional dependencies are missing only fails when it is asked for.
To add a task, add one line to `_TASKS` (or call `register_task` from outside the package).
"""

from __future__ import annotations

import importlib

from bon_jax.errors import ConfigError
from bon_jax.tasks.base import Task

_TASKS: dict[str, str] = {
    "arith": "bon_jax.tasks.arith:ArithTask",
    "sentiment": "bon_jax.tasks.sentiment:SentimentTask",
    "math": "bon_jax.tasks.math:MathTask",
    "imdb": "bon_jax.tasks.imdb:ImdbTask",
    "humaneval": "bon_jax.tasks.code:HumanEvalTask",
    "mbpp": "bon_jax.tasks.code:MBPPTask",
}


def register_task(name: str, target: str) -> None:
    """Registers `name` -> `"package.module:ClassName"` (a Task subclass). Refuses to rebind a name."""
    if ":" not in target:
        raise ValueError(f"register_task: target must be 'module:ClassName', got {target!r}")
    if name in _TASKS and _TASKS[name] != target:
        raise ValueError(f"register_task: {name!r} is already registered as {_TASKS[name]!r}")
    _TASKS[name] = target


def task_names() -> tuple[str, ...]:
    """The registered task names, sorted."""
    return tuple(sorted(_TASKS))


def get_task_class(name: str) -> type[Task]:
    """The Task subclass registered as `name` (imports its module)."""
    if name not in _TASKS:
        raise ConfigError("task.name", f"unknown task {name!r}; registered: {', '.join(task_names())}")
    module_name, _, attr = _TASKS[name].partition(":")
    cls = getattr(importlib.import_module(module_name), attr)
    if not (isinstance(cls, type) and issubclass(cls, Task)):
        raise TypeError(f"task {name!r}: {_TASKS[name]} is not a Task subclass")
    return cls


def get_task(name: str, **kwargs) -> Task:
    """An instance of the task registered as `name`, built with `kwargs`."""
    return get_task_class(name)(**kwargs)
