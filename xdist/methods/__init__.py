"""Training methods: how a batch becomes a loss, and what happens at epoch boundaries.

The training loop (:mod:`xdist.train`) never branches on a method's name: it calls the small
:class:`Method` interface. ``ce`` is plain span cross-entropy (the spine and Carrino et al.'s stage 1);
the distillation methods plug in here through the same interface.
"""

from __future__ import annotations

from xdist.methods.base import Method, StepOutput
from xdist.methods.ce import CrossEntropy

__all__ = ["Method", "StepOutput", "CrossEntropy", "build_method"]


def build_method(name: str = "ce") -> Method:
    """The method object for a config's method name."""
    if name == "ce":
        return CrossEntropy()
    raise ValueError(f"config field 'method.name': unknown method {name!r}; expected one of ['ce']")
