"""The two classification heads: building the model, and the logits of a batch.

* ``classifier``: ``AutoModelForSequenceClassification`` (pair tasks) or ``AutoModelForMultipleChoice``
  (choice tasks); class logits are the model's logits.
* ``prompt`` (ALSACE, methods.md §C.2): ``AutoModelForMaskedLM`` on a cloze prompt. The encoder runs on the
  whole prompt, but the MLM head only on the hidden state at the mask (``[B, H] -> [B, V]``; the full
  ``[B, L, V]`` would be 4 GB for XLM-R at batch 32 x 128 tokens). Class logits are those MLM logits
  gathered at the verbalizer's token ids (:class:`Verbalizer`). Choice tasks score each choice with a
  binary right/wrong verbalizer: a choice's score is ``logit(right) - logit(wrong)``.

The API other methods build on (ALSACE's consistency loss, MBLM's branches)::

    logits = class_logits(model, batch, head)   # [B, C] float32: classes, or choices of a choice task
    vocab = mask_logits(model, batch)           # prompt head: [B, V] (choice tasks [B, C, V]) at the mask

``model`` is a ``transformers`` model, a DeepSpeed engine or an :class:`xdist.engine.Engine`; ``batch`` is
a collated dict of tensors (:func:`xdist.tasks.classification.features.collate`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

import torch
import torch.nn.functional as F
from torch import nn
from transformers import (
    AutoConfig,
    AutoModelForMaskedLM,
    AutoModelForMultipleChoice,
    AutoModelForSequenceClassification,
    PreTrainedModel,
)

from xdist.config import ConfigError, ModelConfig
from xdist.models import _apply_dropout, _check_checkpoint_dir, model_config, zero3_construction
from xdist.tasks.classification.config import PromptConfig
from xdist.tasks.classification.examples import IGNORE_LABEL

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase

HeadName = Literal["classifier", "prompt"]

INPUT_NAMES = ("input_ids", "attention_mask", "token_type_ids")
"""Batch fields that are model inputs (the rest are targets and metadata)."""


# --------------------------------------------------------------------------------------------------
# Verbalizer
# --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Verbalizer:
    """Classes -> label-word token ids, and the rule that turns MLM logits at the mask into class logits.

    ``class_logit[c] = mean over c's words w of word_logit(w)``, ``word_logit(w)`` = the logit of w's single
    token, or with ``multi_token: first`` its first sub-token's, with ``mean`` the mean of its sub-tokens'.
    Stored as ``token_ids [K]`` (the distinct ids used) and ``weights [C, K]`` (rows sum to 1); when every
    class is one single-token word, the class logits are the gathered logits exactly (no arithmetic).
    """

    class_names: tuple[str, ...]
    words: tuple[tuple[str, ...], ...]
    """Label words per class."""
    word_token_ids: tuple[tuple[tuple[int, ...], ...], ...]
    """Token ids of each word of each class (more than one only under a multi-token rule)."""
    multi_token: str
    token_ids: tuple[int, ...]
    weights: tuple[tuple[float, ...], ...]

    @property
    def is_gather(self) -> bool:
        """Every class is exactly one single-token word: class logits = logits[:, token_ids]."""
        return all(len(words) == 1 and len(words[0]) == 1 for words in self.word_token_ids) and len(
            self.token_ids
        ) == len(self.class_names)

    @property
    def targets(self) -> tuple[int, ...]:
        """Per class, the vocabulary target of the ``vocab`` loss: its first word's first token."""
        return tuple(words[0][0] for words in self.word_token_ids)

    def class_logits(self, vocab_logits: torch.Tensor) -> torch.Tensor:
        """``[..., V]`` MLM logits at the mask -> ``[..., C]`` class logits."""
        ids = torch.tensor(self.token_ids, device=vocab_logits.device)
        gathered = vocab_logits.index_select(-1, ids)
        if self.is_gather:
            return gathered
        weights = torch.tensor(self.weights, dtype=gathered.dtype, device=gathered.device)
        return gathered @ weights.T


def build_verbalizer(
    prompt: PromptConfig, default: dict[str, list[str]] | None, class_names: list[str],
    tokenizer: PreTrainedTokenizerBase,
) -> Verbalizer:
    """Resolve ``prompt.verbalizer`` (or ``default``) against ``class_names`` and the tokenizer.

    Raises :class:`ConfigError` for classes missing from or unknown to the verbalizer, and for a label word
    that is not a single token when ``prompt.multi_token`` is ``error`` (naming the word and its pieces).
    """
    field = "model.prompt.verbalizer"
    mapping = prompt.verbalizer if prompt.verbalizer is not None else default
    if mapping is None:
        raise ConfigError(f"config field '{field}': no default verbalizer for this source; map every class to words")
    mapping = {str(k): list(v) for k, v in mapping.items()}
    missing = [c for c in class_names if c not in mapping]
    unknown = [c for c in mapping if c not in class_names]
    if missing or unknown:
        raise ConfigError(
            f"config field '{field}': classes {class_names} need label words; missing {missing}, unknown {unknown}"
        )
    word_ids: list[tuple[tuple[int, ...], ...]] = []
    for name in class_names:
        per_word = []
        for word in mapping[name]:
            ids = tuple(tokenizer(word, add_special_tokens=False)["input_ids"])
            if not ids:
                raise ConfigError(f"config field '{field}.{name}': label word {word!r} has no tokens")
            if len(ids) > 1:
                if prompt.multi_token == "error":
                    pieces = tokenizer.convert_ids_to_tokens(list(ids))
                    raise ConfigError(
                        f"config field '{field}.{name}': label word {word!r} is {len(ids)} tokens {pieces} of the "
                        f"tokenizer; use a single-token word, or set model.prompt.multi_token: first | mean"
                    )
                if prompt.multi_token == "first":
                    ids = ids[:1]
            per_word.append(ids)
        word_ids.append(tuple(per_word))
    token_ids = tuple(dict.fromkeys(t for words in word_ids for ids in words for t in ids))
    index = {t: k for k, t in enumerate(token_ids)}
    weights = []
    for words in word_ids:
        row = [0.0] * len(token_ids)
        for ids in words:
            for t in ids:
                row[index[t]] += 1.0 / (len(words) * len(ids))
        weights.append(tuple(row))
    return Verbalizer(
        class_names=tuple(class_names), words=tuple(tuple(mapping[c]) for c in class_names),
        word_token_ids=tuple(word_ids), multi_token=prompt.multi_token, token_ids=token_ids, weights=tuple(weights),
    )


# --------------------------------------------------------------------------------------------------
# Models
# --------------------------------------------------------------------------------------------------


def model_class(head: HeadName, choice: bool) -> type:
    """The ``transformers`` auto class of ``head`` (the only place the classification family names one)."""
    if head == "prompt":
        return AutoModelForMaskedLM
    return AutoModelForMultipleChoice if choice else AutoModelForSequenceClassification


def build_classification_model(
    cfg: ModelConfig, head: HeadName, *, choice: bool, class_names: list[str], vocab_size: int, pad_token_id: int,
    ds_config: dict | None = None,
) -> PreTrainedModel:
    """Random init from ``cfg.model_type``/``cfg.architecture``, or a local ``cfg.checkpoint``, with the head's
    auto class. Sequence classifiers get ``num_labels``, ``id2label`` and ``label2id`` from ``class_names``.
    Under a ZeRO-3 ``ds_config`` the model is built partitioned (see :func:`xdist.models.build_model`)."""
    auto = model_class(head, choice)
    labels = {}
    if head == "classifier" and not choice:
        labels = {
            "num_labels": len(class_names), "id2label": dict(enumerate(class_names)),
            "label2id": {name: i for i, name in enumerate(class_names)},
        }
    if cfg.checkpoint is None:
        config = model_config(cfg, vocab_size=vocab_size, pad_token_id=pad_token_id)
        for key, value in labels.items():
            setattr(config, key, value)
        with zero3_construction(ds_config):
            return auto.from_config(config)
    if cfg.architecture:
        raise ConfigError(
            f"config field 'model.architecture': applies to random init only, but model.checkpoint is set "
            f"({cfg.checkpoint!r}); remove one of them"
        )
    directory = _check_checkpoint_dir(cfg.checkpoint)
    config = AutoConfig.from_pretrained(directory, local_files_only=True, **labels)
    if config.vocab_size < vocab_size:
        raise ConfigError(
            f"config field 'model.checkpoint': {str(directory)!r} has vocab_size {config.vocab_size}, smaller than "
            f"the tokenizer's {vocab_size}"
        )
    _apply_dropout(config, cfg.dropout)
    with zero3_construction(ds_config):
        return auto.from_pretrained(directory, config=config, local_files_only=True)


# --------------------------------------------------------------------------------------------------
# Logits
# --------------------------------------------------------------------------------------------------


def _module(model: Any) -> nn.Module:
    """The ``transformers`` model inside an xdist Engine / DeepSpeed engine, or ``model`` itself."""
    while not isinstance(model, PreTrainedModel) and hasattr(model, "module"):
        model = model.module
    return model


def _inputs(batch: dict[str, Any], device: torch.device) -> dict[str, torch.Tensor]:
    return {k: torch.as_tensor(batch[k]).to(device) for k in INPUT_NAMES if k in batch}


def _device(module: nn.Module) -> torch.device:
    return next(module.parameters()).device


def mlm_parts(module: nn.Module) -> tuple[nn.Module, nn.Module]:
    """(encoder, MLM head) of a ``*ForMaskedLM``: the base model, and its one other child (BERT's ``cls``,
    XLM-R's ``lm_head``). Architectures whose head is not a single module are refused, naming the type."""
    base = module.base_model
    others = [child for child in module.children() if child is not base]
    if base is module or len(others) != 1:
        raise ConfigError(
            f"config field 'model.head': the prompt head needs a masked LM whose head is one module beside the "
            f"encoder (BERT, XLM-R, ...); {type(module).__name__} has children "
            f"{[name for name, _ in module.named_children()]}"
        )
    return base, others[0]


def mask_logits(model: Any, batch: dict[str, Any]) -> torch.Tensor:
    """MLM logits at the mask position of a prompt batch: ``[B, V]`` (choice tasks: ``[B, C, V]``).

    Runs the encoder on the whole prompt and the MLM head on the mask's hidden state only. The logits are in
    the model's compute dtype (bf16 under a bf16 engine).
    """
    module = _module(model)
    encoder, lm_head = mlm_parts(module)
    device = _device(module)
    inputs = _inputs(batch, device)
    positions = torch.as_tensor(batch["mask_positions"]).to(device)
    choice_shape = None
    if inputs["input_ids"].dim() == 3:  # [B, C, L]: score every choice as its own row
        choice_shape = inputs["input_ids"].shape[:2]
        inputs = {k: v.flatten(0, 1) for k, v in inputs.items()}
        positions = positions.flatten()
    hidden = encoder(**inputs).last_hidden_state  # [N, L, H]
    at_mask = hidden[torch.arange(hidden.shape[0], device=device), positions]  # [N, H]
    logits = lm_head(at_mask)  # [N, V]
    return logits if choice_shape is None else logits.unflatten(0, tuple(choice_shape))


def class_logits(
    model: Any, batch: dict[str, Any], head: HeadName, verbalizer: Verbalizer | None = None
) -> torch.Tensor:
    """Class logits ``[B, C]`` (float32) of ``batch``: the classifier's logits, or the prompt head's MLM logits
    at the mask gathered by ``verbalizer``; for choice tasks one score per choice."""
    if head == "prompt":
        if verbalizer is None:
            raise ValueError("the prompt head needs its verbalizer")
        vocab = mask_logits(model, batch)
        logits = verbalizer.class_logits(vocab.float())
        if vocab.dim() == 3:  # choices: P(right) - P(wrong) in logit space
            if len(verbalizer.class_names) != 2:
                raise ConfigError(
                    "config field 'model.prompt.verbalizer': choice tasks need two classes [wrong, right]"
                )
            logits = logits[..., 1] - logits[..., 0]
        return logits
    module = _module(model)
    outputs = model(**_inputs(batch, _device(module)))
    return outputs.logits.float()


def classification_loss(
    model: Any, batch: dict[str, Any], head: HeadName, verbalizer: Verbalizer | None = None, loss: str = "classes"
) -> tuple[torch.Tensor, torch.Tensor]:
    """Hard-label loss of a batch (mean over labelled rows) and its class logits ``[B, C]``.

    ``loss``: ``classes`` (cross-entropy over the class logits) or, for a pair task's prompt head, ``vocab``
    (cross-entropy over the whole vocabulary at the mask, target the gold class's first label token).
    """
    labels = torch.as_tensor(batch["labels"])
    if head == "prompt" and loss == "vocab":
        assert verbalizer is not None
        vocab = mask_logits(model, batch).float()
        if vocab.dim() != 2:
            raise ConfigError("config field 'model.prompt.loss': 'vocab' is for pair tasks; use 'classes'")
        labels = labels.to(vocab.device)
        targets = torch.tensor(verbalizer.targets, device=vocab.device)[labels.clamp(min=0)]
        targets = torch.where(labels == IGNORE_LABEL, torch.full_like(targets, IGNORE_LABEL), targets)
        return F.cross_entropy(vocab, targets, ignore_index=IGNORE_LABEL), verbalizer.class_logits(vocab)
    logits = class_logits(model, batch, head, verbalizer)
    return F.cross_entropy(logits, labels.to(logits.device), ignore_index=IGNORE_LABEL), logits
