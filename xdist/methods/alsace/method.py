"""``method.name: alsace`` — cross-lingual self-distillation on parallel pairs (methods.md §C.5).

One model, no teacher copy: each micro-batch holds B instance pairs ``[B, 2, ...]`` (see
:func:`xdist.data.parallel.pair_sample`), forwarded once as ``[2B, ...]`` (first sides, then second
sides), so a ZeRO-3 engine gathers every parameter once per micro-batch, not twice. The logits of the
stacked batch (class logits ``[2B, C]``, or the MLM logits at the mask ``[2B, V]`` with ``level: vocab``)
go to :func:`xdist.methods.alsace.loss.pair_loss`. Nothing changes at epoch boundaries and the method has
no state of its own to checkpoint (the stream position and the engine carry the run).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

from xdist.data.parallel import stack_pair_batch
from xdist.methods.alsace.config import AlsaceConfig
from xdist.methods.alsace.loss import PairLossOptions, pair_loss
from xdist.methods.base import StepOutput

LogitsFn = Callable[[Any, dict[str, Any]], torch.Tensor]
"""``(model or engine, batch) -> [rows, K]`` logits: the task's class logits or its MLM logits at the mask."""


def loss_options(cfg: AlsaceConfig) -> PairLossOptions:
    """The loss options of an ``method.alsace`` section."""
    return PairLossOptions(direction=cfg.direction, divergence=cfg.divergence, temperature=cfg.temperature,
                           t2_scaling=cfg.t2_scaling, alpha_kl=cfg.alpha_kl, alpha_ce=cfg.alpha_ce)  # fmt: skip


class Alsace:
    """ALSACE's stage 2: the consistency loss between the two languages of every pair."""

    name = "alsace"
    tasks = ("classification",)

    def __init__(self, cfg: AlsaceConfig, logits: LogitsFn) -> None:
        self.options = loss_options(cfg)
        self.logits = logits

    def on_epoch_start(self, epoch: int, engine: Any) -> None:
        pass

    def step(self, engine: Any, batch: dict[str, Any]) -> StepOutput:
        stacked = stack_pair_batch(batch)
        logits = self.logits(engine, stacked)
        labels = stacked.get("labels") if self.options.alpha_ce > 0 else None
        result = pair_loss(logits, self.options, labels)
        return StepOutput(loss=result.loss, logs=result.logs())

    def state_dict(self) -> dict[str, Any]:
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        pass
