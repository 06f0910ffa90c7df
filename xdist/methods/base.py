"""The interface between the training loop and a training method."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

import torch


@dataclass
class StepOutput:
    """What a method returns for one micro-batch."""

    loss: torch.Tensor
    """Scalar to back-propagate: the *mean* over the micro-batch's rows (every micro-batch has the
    same number of rows, so DeepSpeed's 1/GA scaling and rank averaging give the global-batch mean)."""

    logs: dict[str, torch.Tensor | float] = field(default_factory=dict)
    """Detached scalars to log (e.g. ``loss/ce``, ``kd/coefficient``). They may stay on the device: the loop
    sums them over the accumulation window and reads them back once per optimizer step."""


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


def span_logits(model: Callable[..., Any], batch: dict[str, Any], device: torch.device | None = None) -> torch.Tensor:
    """Start/end logits [B, 2, L] of a QA model (or engine) on ``batch``'s model inputs, moved to ``device``
    first when given."""
    inputs = model_inputs(batch)
    if device is not None:
        inputs = {k: v.to(device) for k, v in inputs.items()}
    outputs = model(**inputs)
    return torch.stack([outputs.start_logits, outputs.end_logits], dim=1)
