"""The interface between the training loop and a training method."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Protocol

import torch


@dataclass
class StepOutput:
    """What a method returns for one micro-batch."""

    loss: torch.Tensor
    """Scalar to back-propagate: the *mean* over the micro-batch's rows (every micro-batch has the
    same number of rows, so DeepSpeed's 1/GA scaling and rank averaging give the global-batch mean)."""

    logs: dict[str, float] = field(default_factory=dict)
    """Detached per-step values to log (e.g. ``loss/ce``, ``kd/coefficient``)."""


class Method(Protocol):
    """A training method. The loop calls ``on_epoch_start`` then ``step`` for every micro-batch."""

    name: str

    def on_epoch_start(self, epoch: int, engine: Any) -> None:
        """Called on every rank before the first micro-batch of each epoch (incl. a resumed one)."""

    def step(self, engine: Any, batch: dict[str, Any]) -> StepOutput:
        """Forward the student on ``batch`` and return the loss to back-propagate."""

    def state_dict(self) -> dict[str, Any]:
        """Method state saved in checkpoints (e.g. the current generation)."""

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore :meth:`state_dict`."""


MODEL_INPUTS = ("input_ids", "attention_mask", "token_type_ids")


def model_inputs(batch: dict[str, Any]) -> dict[str, torch.Tensor]:
    """The tensors a ``transformers`` QA model takes as inputs (not the labels or metadata)."""
    return {k: batch[k] for k in MODEL_INPUTS if k in batch}
