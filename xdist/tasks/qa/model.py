"""The extractive-QA model: a ``transformers`` ``*ForQuestionAnswering`` (the only module naming the class)."""

from __future__ import annotations

import os

from transformers import AutoModelForQuestionAnswering, PreTrainedModel

from xdist.config import ModelConfig
from xdist.models import build_model, load_pretrained


def build_qa_model(
    cfg: ModelConfig, *, vocab_size: int, pad_token_id: int, ds_config: dict | None = None
) -> PreTrainedModel:
    """The QA model from ``cfg`` (random init or ``cfg.checkpoint``; see :func:`xdist.models.build_model`)."""
    return build_model(cfg, AutoModelForQuestionAnswering, vocab_size=vocab_size, pad_token_id=pad_token_id,
                       ds_config=ds_config)


def load_qa_model(checkpoint: str | os.PathLike, *, ds_config: dict | None = None) -> PreTrainedModel:
    """Exactly the QA model saved in ``checkpoint`` (an export or a teacher snapshot)."""
    return load_pretrained(AutoModelForQuestionAnswering, checkpoint, ds_config=ds_config)
