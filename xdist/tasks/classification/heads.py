"""The classification heads: building the model, and the logits of a batch.

* ``classifier``: ``AutoModelForSequenceClassification``; class logits are the model's logits.
* ``multiple_choice`` (choice tasks such as XCOPA): ``AutoModelForMultipleChoice`` on ``[B, C, L]``.
* ``prompt`` (ALSACE, methods.md §C.2): ``AutoModelForMaskedLM`` on a cloze prompt. The MLM head runs only
  on the hidden state at the mask (``[B, H] -> [B, V]``; the full ``[B, L, V]`` would be 4 GB for XLM-R at
  batch 32 x 128 tokens): :func:`enable_mask_forward` gives the model's *own* forward a ``mask_positions``
  argument, so DeepSpeed (ZeRO-3 parameter gathering included) sees one ordinary forward call, and the
  weights, ``save_pretrained`` and plain ``transformers`` loading are untouched. Class logits are those
  MLM logits gathered at the verbalizer's token ids (:mod:`xdist.tasks.classification.verbalizer`). The
  verbalizer travels *in the batch* (``verbalizer_ids [K]``, ``verbalizer_weights [C, K]`` per row, written
  by the featuriser), so the logits of a batch need nothing but the model and the batch. Choice tasks score
  each choice with a binary (wrong, right) verbalizer: a choice's score is ``logit(right) - logit(wrong)``.

The API other methods build on (ALSACE's consistency loss, MBLM's branches)::

    logits = class_logits(model, batch)   # [B, C] float32: classes, or choices of a choice task
    vocab = mask_logits(model, batch)     # prompt head only: [B, V] at the mask (choice tasks [B, C, V])

``model`` is a ``transformers`` model, a (DeepSpeed or xdist) engine or its ``forward``; ``batch`` is a
collated dict of tensors (:func:`xdist.tasks.classification.features.collate`), already on the model's
device or moved there with ``device=``.
"""

from __future__ import annotations

import types
from pathlib import Path
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import nn
from transformers import (
    AutoModelForMaskedLM,
    AutoModelForMultipleChoice,
    AutoModelForSequenceClassification,
    PreTrainedModel,
)
from transformers.modeling_outputs import MaskedLMOutput

from xdist.config import ConfigError, ModelConfig
from xdist.models import build_model, load_pretrained
from xdist.tasks.classification.branches import branch_rows
from xdist.tasks.classification.examples import IGNORE_LABEL

HeadName = Literal["classifier", "multiple_choice", "prompt"]

INPUT_NAMES = ("input_ids", "attention_mask", "token_type_ids")
"""Batch fields that are model inputs (the rest are targets, the verbalizer and metadata)."""

PROMPT_FIELDS = ("mask_positions", "verbalizer_ids", "verbalizer_weights", "verbalizer_targets")
"""Batch fields of the prompt head besides the model inputs."""


# --------------------------------------------------------------------------------------------------
# Models
# --------------------------------------------------------------------------------------------------


def model_class(head: HeadName) -> type:
    """The ``transformers`` auto class of ``head`` (the only place the classification family names one)."""
    return {"classifier": AutoModelForSequenceClassification, "multiple_choice": AutoModelForMultipleChoice,
            "prompt": AutoModelForMaskedLM}[head]


def build_classification_model(
    cfg: ModelConfig, head: HeadName, *, class_names: list[str], vocab_size: int, pad_token_id: int,
    ds_config: dict | None = None,
) -> PreTrainedModel:
    """Random init from ``cfg.model_type``/``cfg.architecture``, or a local ``cfg.checkpoint``, with the head's
    auto class (:func:`xdist.models.build_model`). Sequence classifiers get ``num_labels``, ``id2label`` and
    ``label2id`` from ``class_names``. Under a ZeRO-3 ``ds_config`` the model is built partitioned."""
    overrides = {}
    if head == "classifier":
        overrides = {"num_labels": len(class_names), "id2label": dict(enumerate(class_names)),
                     "label2id": {name: i for i, name in enumerate(class_names)}}
    model = build_model(cfg, model_class(head), vocab_size=vocab_size, pad_token_id=pad_token_id,
                        ds_config=ds_config, config_overrides=overrides)
    return _prepared(model, head)


def load_classification_model(
    head: HeadName, checkpoint: str | Path, *, ds_config: dict | None = None
) -> PreTrainedModel:
    """Exactly the model saved in ``checkpoint`` (an export, a teacher snapshot), with the head's class."""
    return _prepared(load_pretrained(model_class(head), checkpoint, ds_config=ds_config), head)


def _prepared(model: PreTrainedModel, head: HeadName) -> PreTrainedModel:
    return enable_mask_forward(model) if head == "prompt" else model


# --------------------------------------------------------------------------------------------------
# Logits
# --------------------------------------------------------------------------------------------------


def mlm_parts(module: nn.Module) -> tuple[nn.Module, nn.Module]:
    """(encoder, MLM head) of a ``*ForMaskedLM``: the base model, and its one other child (BERT's ``cls``,
    XLM-R's ``lm_head``). Architectures whose head is not a single module are refused, naming the type."""
    base = getattr(module, "base_model", module)
    others = [child for child in module.children() if child is not base]
    if base is module or len(others) != 1:
        raise ConfigError(
            f"config field 'model.head': the prompt head needs a masked LM whose head is one module beside the "
            f"encoder (BERT, XLM-R, ...); {type(module).__name__} has children "
            f"{[name for name, _ in module.named_children()]}"
        )
    return base, others[0]


def _mask_forward(self: nn.Module, *args: Any, mask_positions: torch.Tensor | None = None, **kwargs: Any) -> Any:
    """The masked LM's forward; with ``mask_positions [N]`` the MLM head runs only at those positions and
    ``logits`` is ``[N, V]``."""
    if mask_positions is None:
        return type(self).forward(self, *args, **kwargs)
    encoder, lm_head = mlm_parts(self)
    hidden = encoder(*args, **kwargs).last_hidden_state  # [N, L, H]
    rows = torch.arange(hidden.shape[0], device=hidden.device)
    return MaskedLMOutput(logits=lm_head(hidden[rows, mask_positions.to(hidden.device)]))  # [N, V]


def enable_mask_forward(model: PreTrainedModel) -> PreTrainedModel:
    """Give ``model`` (a ``*ForMaskedLM``) a ``mask_positions`` forward argument (idempotent; instance-level,
    so its class, weights and ``save_pretrained`` output stay those of the plain model). Returns ``model``."""
    mlm_parts(model)  # refuse unsupported architectures now, not at the first batch
    if getattr(model.forward, "__func__", None) is not _mask_forward:
        model.forward = types.MethodType(_mask_forward, model)
    return model


def _tensor(batch: dict[str, Any], name: str, device: torch.device | None) -> torch.Tensor:
    value = torch.as_tensor(batch[name])
    return value if device is None else value.to(device)


def _call(model: Any, inputs: dict[str, torch.Tensor]) -> Any:
    if isinstance(model, PreTrainedModel):
        enable_mask_forward(model) if "mask_positions" in inputs else None
    return model(**inputs)


def mask_logits(model: Any, batch: dict[str, Any], device: torch.device | None = None) -> torch.Tensor:
    """MLM logits at the mask of a prompt batch: ``[B, V]`` (choice tasks: ``[B, C, V]``), in the model's
    compute dtype (bf16 under a bf16 engine)."""
    inputs = {k: _tensor(batch, k, device) for k in INPUT_NAMES if k in batch}
    inputs["mask_positions"] = _tensor(batch, "mask_positions", device)
    choice_shape = None
    if inputs["input_ids"].dim() == 3:  # [B, C, L]: every choice is a row of its own
        choice_shape = tuple(inputs["input_ids"].shape[:2])
        inputs = {k: v.flatten(0, 1) for k, v in inputs.items()}
    logits = _call(model, inputs).logits  # [N, V]
    return logits if choice_shape is None else logits.unflatten(0, choice_shape)


def verbalize(vocab: torch.Tensor, ids: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """Class logits from MLM logits at the mask: ``vocab [B, V]`` (or ``[B, C', V]``), per-row verbalizer
    ``ids [B, K]`` and ``weights [B, C, K]`` -> ``[B, C]`` (``[B, C', C]``), in float32."""
    vocab = vocab.float()
    ids = ids.to(vocab.device)
    weights = weights.to(vocab.device, torch.float32)
    if vocab.dim() == 3:
        gathered = vocab.gather(-1, ids[:, None, :].expand(-1, vocab.shape[1], -1))  # [B, C', K]
        return torch.einsum("bjk,bck->bjc", gathered, weights)
    return torch.einsum("bk,bck->bc", vocab.gather(-1, ids), weights)


def class_logits(model: Any, batch: dict[str, Any], device: torch.device | None = None) -> torch.Tensor:
    """Class logits ``[B, C]`` (float32) of ``batch``: the classifier's logits, or (a batch with
    ``mask_positions``) the prompt head's MLM logits at the mask through the batch's verbalizer; for choice
    tasks one score per choice."""
    if "mask_positions" in batch:
        vocab = mask_logits(model, batch, device)
        logits = verbalize(vocab, _tensor(batch, "verbalizer_ids", None), _tensor(batch, "verbalizer_weights", None))
        if vocab.dim() == 3:  # choices: right minus wrong, in logit space
            if logits.shape[-1] != 2:
                raise ConfigError(
                    "config field 'model.prompt.verbalizer': choice tasks need two classes [wrong, right]"
                )
            logits = logits[..., 1] - logits[..., 0]
        return logits
    inputs = {k: _tensor(batch, k, device) for k in INPUT_NAMES if k in batch}
    branch = branch_rows(model, batch)  # a branched (MBLM) classifier: each row's language branch
    if branch is not None:
        inputs["branch"] = branch if device is None else branch.to(device)
    return _call(model, inputs).logits.float()


def cross_entropy(logits: torch.Tensor, batch: dict[str, Any]) -> torch.Tensor:
    """Hard-label cross-entropy of class logits ``[B, C]``: the mean over labelled rows (unlabelled rows carry
    :data:`IGNORE_LABEL`)."""
    labels = torch.as_tensor(batch["labels"]).to(logits.device)
    return F.cross_entropy(logits.float(), labels, ignore_index=IGNORE_LABEL)


def vocab_cross_entropy(vocab: torch.Tensor, batch: dict[str, Any]) -> torch.Tensor:
    """ALSACE's stage-0 loss: cross-entropy over the whole vocabulary at the mask (``vocab [B, V]`` from
    :func:`mask_logits`), target the gold class's first label token (``verbalizer_targets``)."""
    labels = torch.as_tensor(batch["labels"]).to(vocab.device)
    targets = torch.as_tensor(batch["verbalizer_targets"]).to(vocab.device)  # [B, C]
    gold = targets.gather(1, labels.clamp(min=0)[:, None])[:, 0]
    gold = torch.where(labels == IGNORE_LABEL, torch.full_like(gold, IGNORE_LABEL), gold)
    return F.cross_entropy(vocab.float(), gold, ignore_index=IGNORE_LABEL)
