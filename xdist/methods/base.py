"""The interface between the training loop and a training method."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, Protocol

import torch

if TYPE_CHECKING:
    from xdist.config import JobConfig, MethodConfig
    from xdist.data.shards import Manifest
    from xdist.distributed import DistEnv
    from xdist.tasks.base import Task


@dataclass
class StepOutput:
    """What a method returns for one micro-batch."""

    loss: torch.Tensor
    """Scalar to back-propagate: the *mean* over the micro-batch's rows (every micro-batch has the
    same number of rows, so DeepSpeed's 1/GA scaling and rank averaging give the global-batch mean)."""

    logs: dict[str, torch.Tensor | float] = field(default_factory=dict)
    """Detached scalars to log (e.g. ``loss/ce``, ``kd/coefficient``). They may stay on the device: the loop
    sums them over the accumulation window and reads them back once per optimizer step."""


@dataclass
class MethodContext:
    """Everything a method is built from (one object, so a new method needs no new keyword anywhere)."""

    cfg: JobConfig
    """The whole job config; the method's own section is :attr:`method` (``cfg.method``)."""

    task: Task
    """The job's task: the method gets logits and the hard-label loss from it, never from the model's head."""

    dist: DistEnv
    """This rank's place in the job."""

    output_dir: Path
    """The run's output directory (``train.output_dir``): teacher snapshots, caches."""

    manifest_for_epoch: Callable[[int], Manifest]
    """The shard set (manifest) the stream reads in an epoch (per-epoch shard sets differ)."""

    tokenizer: Any = None
    """The job's tokenizer (for methods that build models or read text)."""

    @property
    def method(self) -> MethodConfig:
        return self.cfg.method


class Method(Protocol):
    """A training method. The loop calls ``on_epoch_start`` then ``step`` for every micro-batch.

    A class implementing it is registered in :mod:`xdist.methods` and constructed as ``Class(context)``
    from a :class:`MethodContext`.
    """

    name: ClassVar[str]

    tasks: ClassVar[tuple[str, ...] | None]
    """Task names (``JobConfig.task``) the method can train; ``None``: any task. Checked before it is built."""

    def on_epoch_start(self, epoch: int, engine: Any) -> None:
        """Called on every rank before the first micro-batch of each epoch (incl. a resumed one)."""

    def step(self, engine: Any, batch: dict[str, Any]) -> StepOutput:
        """Forward the student on ``batch`` and return the loss to back-propagate."""

    def state_dict(self) -> dict[str, Any]:
        """Method state saved in checkpoints (e.g. the current generation)."""

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore :meth:`state_dict`."""
