"""Training methods: how a batch becomes a loss, and what happens at epoch boundaries.

The training loop (:mod:`xdist.train`) never branches on a method's name: it calls the small
:class:`Method` interface. ``ce`` is plain span cross-entropy (the spine and Carrino et al.'s stage 1);
``skd`` is Carrino et al.'s self-knowledge distillation (stage 2).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from xdist.config import MethodConfig
from xdist.distributed import DistEnv
from xdist.methods.base import Method, StepOutput
from xdist.methods.ce import CrossEntropy

__all__ = ["Method", "StepOutput", "CrossEntropy", "build_method"]


def build_method(
    cfg: MethodConfig, *, output_dir: Path, dist: DistEnv, manifest_for_epoch: Callable, cache_batch_size: int = 64
) -> Method:
    """The method object for ``cfg.name``."""
    if cfg.name == "ce":
        return CrossEntropy()
    if cfg.name == "skd":
        from xdist.methods.skd import SelfDistillation

        return SelfDistillation(cfg, output_dir=output_dir, dist=dist, manifest_for_epoch=manifest_for_epoch,
                                cache_batch_size=cache_batch_size)
    raise ValueError(f"config field 'method.name': unknown method {cfg.name!r}")
