"""Task families, registered by name (``JobConfig.task``); see :mod:`xdist.tasks.base` for the protocol and
for how to add one."""

from __future__ import annotations

import importlib

from xdist.config import ConfigError
from xdist.tasks.base import EvalData, SourceRead, Task

__all__ = ["EvalData", "SourceRead", "Task", "get_task", "task_names"]

_TASKS: dict[str, str] = {
    "qa": "xdist.tasks.qa.task:QATask",
    "classification": "xdist.tasks.classification.task:ClassificationTask",
}
"""name → ``"module:Class"``; imported on first use, so a job never imports another task's code."""

_INSTANCES: dict[str, Task] = {}


def task_names() -> list[str]:
    """The registered task names."""
    return sorted(_TASKS)


def get_task(name: str) -> Task:
    """The task registered as ``name`` (one shared, stateless instance); a :class:`ConfigError` naming the
    ``task`` field when there is none."""
    if name not in _INSTANCES:
        if name not in _TASKS:
            raise ConfigError(f"config field 'task': no task {name!r} is registered; available: {task_names()}")
        module, _, attribute = _TASKS[name].partition(":")
        _INSTANCES[name] = getattr(importlib.import_module(module), attribute)()
    return _INSTANCES[name]
