"""Plain supervised training: the task's hard-label cross-entropy (QA: ``(CE(start) + CE(end)) / 2``)."""

from __future__ import annotations

from typing import Any

from xdist.methods.base import MethodContext, StepOutput


class CrossEntropy:
    """Hard-label cross-entropy of the task's logits (QA: answers outside the window point at the CLS token)."""

    name = "ce"
    tasks = None  # any task: the loss is the task's own

    def __init__(self, context: MethodContext):
        self.task = context.task

    def on_epoch_start(self, epoch: int, engine: Any) -> None:
        pass

    def step(self, engine: Any, batch: dict[str, Any]) -> StepOutput:
        loss = self.task.loss(self.task.logits(engine.forward, batch), batch)
        return StepOutput(loss=loss, logs={"loss/ce": loss.detach()})

    def state_dict(self) -> dict[str, Any]:
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        pass
