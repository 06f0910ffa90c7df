"""Training methods: how a batch becomes a loss, and what happens at epoch boundaries.

The training loop (:mod:`xdist.train`) never branches on a method's name: it calls the small
:class:`Method` interface. ``ce`` is plain hard-label cross-entropy for any task (the spine and Carrino et
al.'s stage 1); ``skd`` is Carrino et al.'s self-knowledge distillation for QA (stage 2); ``alsace`` (Zhao et
al.) and ``mblm`` (Yang et al.) are cross-lingual distillation for classification. Each method
declares the tasks it supports (``tasks``); a job pairing a method with another task is refused.
"""

from __future__ import annotations

import importlib

from xdist.config import ConfigError
from xdist.methods.base import Method, MethodContext, StepOutput

__all__ = ["Method", "MethodContext", "StepOutput", "build_method", "method_class"]

_METHODS: dict[str, str] = {
    "ce": "xdist.methods.ce:CrossEntropy",
    "skd": "xdist.methods.skd:SelfDistillation",
    "alsace": "xdist.methods.alsace.method:Alsace",
    "mblm": "xdist.methods.mblm.method:MBLM",
}
"""name (``method.name``) → ``"module:Class"``; imported on first use."""


def method_class(name: str, task: str) -> type:
    """The class of method ``name`` after checking that it supports ``task``.

    Raises :class:`ConfigError` naming ``method.name`` (unknown method) or both ``method.name`` and ``task``
    (a method that cannot train that task).
    """
    if name not in _METHODS:
        raise ConfigError(f"config field 'method.name': unknown method {name!r}; available: {sorted(_METHODS)}")
    module, _, attribute = _METHODS[name].partition(":")
    cls = getattr(importlib.import_module(module), attribute)
    if cls.tasks is not None and task not in cls.tasks:
        raise ConfigError(
            f"config fields 'method.name' and 'task': method {name!r} supports task(s) {list(cls.tasks)}, "
            f"not {task!r}; choose a method for {task!r} (e.g. 'ce') or set task to one of {list(cls.tasks)}"
        )
    return cls


def build_method(context: MethodContext) -> Method:
    """The method object for ``context.cfg.method.name`` (checked against ``context.task``)."""
    return method_class(context.cfg.method.name, context.task.name)(context)
