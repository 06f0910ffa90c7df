"""Span cross-entropy: ``(CE(start) + CE(end)) / 2``, the loss of ``*ForQuestionAnswering`` models."""

from __future__ import annotations

from typing import Any

from xdist.methods.base import StepOutput, model_inputs


class CrossEntropy:
    """Plain supervised extractive QA (answers outside the window point at the CLS token)."""

    name = "ce"

    def on_epoch_start(self, epoch: int, engine: Any) -> None:
        pass

    def step(self, engine: Any, batch: dict[str, Any]) -> StepOutput:
        # The transformers QA head computes the mean over rows of (CE_start + CE_end) / 2.
        outputs = engine.forward(
            **model_inputs(batch),
            start_positions=batch["start_positions"],
            end_positions=batch["end_positions"],
        )
        return StepOutput(loss=outputs.loss, logs={"loss/ce": outputs.loss.detach()})

    def state_dict(self) -> dict[str, Any]:
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        pass
