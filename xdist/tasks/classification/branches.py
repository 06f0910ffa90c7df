"""The branched classifier (``model.branches``, MBLM) inside the classification task: building it, routing
each row to its language's branch, and checking a loaded one against the config.

Routing: :class:`xdist.branched.BranchedForSequenceClassification` takes a ``branch`` index per row (its
language's branch, ``-1`` for a language without one: the mixture). Evaluation sets carry it as an input
array (:func:`branch_array`, written by the task's ``eval_data``); training batches carry their languages
as ``groups`` and get it from the model's own language list (:func:`branch_rows`), so that any method —
``mblm``, or plain ``ce`` on a branched model — routes rows the same way.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from transformers import AutoModelForSequenceClassification, PreTrainedModel

from xdist.branched import BranchedConfig, BranchedForSequenceClassification, BranchError, branched_from_standard
from xdist.config import ConfigError, ModelConfig
from xdist.hub import resolve_pretrained
from xdist.models import build_model, load_pretrained
from xdist.weights import unwrap


def branched_module(model: Any) -> BranchedForSequenceClassification | None:
    """The branched model inside ``model`` (a model, an engine, or an engine's bound ``forward``), else None."""
    owner = getattr(model, "__self__", model)  # engine.forward -> the engine
    try:
        module = unwrap(owner)
    except TypeError:
        return None
    return module if isinstance(module, BranchedForSequenceClassification) else None


def branch_array(languages: Sequence[str], branch_languages: Sequence[str]) -> np.ndarray:
    """Branch index per row ``[N]`` (int64): the language's position in ``branch_languages``, else -1."""
    index = {lang: i for i, lang in enumerate(branch_languages)}
    return np.asarray([index.get(lang, -1) for lang in languages], dtype=np.int64)


def branch_rows(model: Any, batch: dict[str, Any]) -> torch.Tensor | None:
    """The ``branch`` input of ``batch`` for ``model``: the batch's own ``branch`` array, else one computed from
    its ``groups`` (languages) when ``model`` is branched; None for an ordinary model."""
    if "branch" in batch:
        return torch.as_tensor(batch["branch"])
    module = branched_module(model)
    if module is None or "groups" not in batch:
        return None
    return torch.from_numpy(branch_array(batch["groups"], module.config.languages))


def _model_type(directory: Path) -> str | None:
    try:
        return json.loads((directory / "config.json").read_text()).get("model_type")
    except (OSError, ValueError):
        return None  # build_model names what is wrong with the directory


def _check_fits(cfg: ModelConfig, model: BranchedForSequenceClassification, where: str) -> None:
    """A branched checkpoint's languages and depth are those of ``model.branches``."""
    branches, config = cfg.branches, model.config
    if branches is None:
        raise ConfigError(
            f"config field 'model.branches': {where} is a branched (MBLM) model with branches {config.languages}; "
            f"set model.branches.languages: {config.languages} (and layers: {config.branch_layers}) to use it"
        )
    if list(branches.languages) != list(config.languages) or branches.layers != config.branch_layers:
        raise ConfigError(
            f"config field 'model.branches': {where} has branches {config.languages} of {config.branch_layers} "
            f"layers, the config asks for {branches.languages} of {branches.layers}; make them agree"
        )


def check_loaded(model: PreTrainedModel, cfg: ModelConfig, where: str) -> PreTrainedModel:
    """``model`` loaded from ``where``, after checking that it is branched exactly when ``model.branches`` is set
    (and with the same branches). Returns it."""
    if isinstance(model, BranchedForSequenceClassification):
        _check_fits(cfg, model, where)
    elif cfg.branches is not None:
        raise ConfigError(
            f"config field 'model.branches': {where} is an ordinary {type(model).__name__}, not a branched model; "
            "remove model.branches to evaluate it"
        )
    return model


def build_branched_classifier(
    cfg: ModelConfig, *, class_names: list[str], vocab_size: int, pad_token_id: int, ds_config: dict | None = None,
) -> BranchedForSequenceClassification:
    """The branched student of ``model.branches``: from a branched checkpoint as saved, or around an ordinary
    encoder (random init, a pretrained checkpoint such as ``xlm-roberta-base``) whose top K layers and head
    become every branch's starting point (:func:`xdist.branched.branched_from_standard`).

    The ordinary model is built whole on every rank first (random init draws from the seeded global RNG, so
    every rank gets the same weights); under ZeRO-3 the branched model is then built partitioned and
    loaded partition by partition, and the whole copy is released.
    """
    branches = cfg.branches
    if cfg.checkpoint is not None:
        directory = Path(resolve_pretrained(cfg.checkpoint, field="model.checkpoint"))
        if _model_type(directory) == BranchedConfig.model_type:  # an MBLM export: load it as saved
            model = load_pretrained(AutoModelForSequenceClassification, directory, ds_config=ds_config)
            where = f"model.checkpoint {cfg.checkpoint!r}"
            _check_fits(cfg, model, where)
            labels = [model.config.id2label[i] for i in range(model.config.num_labels)]
            if labels != list(class_names):
                raise ConfigError(f"config field 'model.labels': {where} classifies {labels}, the job {class_names}")
            return model
    overrides = {"num_labels": len(class_names), "id2label": dict(enumerate(class_names)),
                 "label2id": {name: i for i, name in enumerate(class_names)}}
    standard = build_model(cfg, AutoModelForSequenceClassification, vocab_size=vocab_size,
                           pad_token_id=pad_token_id, config_overrides=overrides)
    layers = standard.config.num_hidden_layers
    if branches.layers > layers:
        raise ConfigError(f"config field 'model.branches.layers': {branches.layers} branch layers, but the encoder "
                          f"has {layers}; choose 0 <= layers <= {layers}")
    try:
        return branched_from_standard(
            standard, list(branches.languages), ds_config=ds_config, branch_layers=branches.layers,
            share_head=branches.share_head, mixture=branches.mixture,
            mixture_representation=branches.representation, supervised_inference=branches.supervised_inference,
        )
    except BranchError as err:
        raise ConfigError(f"config field 'model.branches': {err}") from None
