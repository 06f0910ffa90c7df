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
from xdist.methods.base import MethodContext, StepOutput

LogitsFn = Callable[[Any, dict[str, Any]], torch.Tensor]
"""``(model or engine, batch) -> [rows, K]`` logits: the task's class logits or its MLM logits at the mask."""


def loss_options(cfg: AlsaceConfig) -> PairLossOptions:
    """The loss options of an ``method.alsace`` section."""
    return PairLossOptions(direction=cfg.direction, divergence=cfg.divergence, temperature=cfg.temperature,
                           t2_scaling=cfg.t2_scaling, alpha_kl=cfg.alpha_kl, alpha_ce=cfg.alpha_ce)  # fmt: skip


def vocab_logits(model: Any, batch: dict[str, Any]) -> torch.Tensor:
    """The prompt head's MLM logits at the mask ``[rows, V]`` (``level: vocab``)."""
    from xdist.tasks.classification.heads import mask_logits

    return mask_logits(model, batch)


class Alsace:
    """ALSACE's stage 2: the consistency loss between the two languages of every pair."""

    name = "alsace"
    tasks = ("classification",)

    def __init__(self, context: MethodContext | None = None, *, cfg: AlsaceConfig | None = None,
                 logits: LogitsFn | None = None) -> None:  # fmt: skip
        """From the job's :class:`MethodContext` (the training loop), or from ``cfg`` and a ``logits``
        function directly (tests, other callers)."""
        if context is not None:
            cfg = context.method.alsace
            if cfg.level == "vocab":
                if context.cfg.model.head != "prompt":
                    from xdist.config import ConfigError

                    raise ConfigError("config field 'method.alsace.level': 'vocab' compares MLM distributions at "
                                      f"the mask and needs model.head 'prompt', got {context.cfg.model.head!r}")
                logits = vocab_logits
            else:
                task = context.task
                logits = task.logits
        if cfg is None or logits is None:
            raise ValueError("Alsace needs a MethodContext, or both cfg and logits")
        self.options = loss_options(cfg)
        self.logits = logits

    @staticmethod
    def prepare_records(cfg: Any, task: Any, read: Any, tokenizer: Any, stats: Any) -> tuple[Any, dict]:
        """``xdist prepare``'s samples for this method: pairs of parallel rows (:func:`.stages.pair_records`)."""
        from xdist.methods.alsace.stages import pair_records

        return pair_records(cfg, task, read, tokenizer, stats)

    @staticmethod
    def shards_config(cfg: Any) -> dict[str, Any]:
        """What decides the pair shards besides the data and features (:func:`.stages.shards_config`)."""
        from xdist.methods.alsace.stages import shards_config

        return shards_config(cfg)

    def on_epoch_start(self, epoch: int, engine: Any) -> None:
        pass

    def step(self, engine: Any, batch: dict[str, Any]) -> StepOutput:
        stacked = stack_pair_batch(batch)
        logits = self.logits(engine.forward, stacked)  # the engine's forward, as ce and skd call it
        labels = stacked.get("labels") if self.options.alpha_ce > 0 else None
        result = pair_loss(logits, self.options, labels)
        return StepOutput(loss=result.loss, logs=result.logs())

    def state_dict(self) -> dict[str, Any]:
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        pass
