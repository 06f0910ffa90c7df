"""Model construction shared by every task; a task supplies its ``AutoModelFor*`` class.

* :func:`build_model` — random init from a ``transformers`` config, or a local ``save_pretrained``
  checkpoint, for a given auto class (QA: :func:`xdist.tasks.qa.model.build_qa_model`). Under ZeRO-3 it
  goes through transformers' own ``zero.Init`` path, so each rank only ever holds its partition of the
  weights.
* :func:`load_pretrained` — exactly the weights of a ``save_pretrained`` directory (an export, a
  teacher snapshot).

Exporting, teacher snapshots and every other handling of (possibly ZeRO-3-partitioned) weights live in
:mod:`xdist.weights`.

Random init draws from torch's global RNG: seed it identically on every rank before building
(``transformers.set_seed``), otherwise ZeRO-1/2 ranks would start from different weights.
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
from transformers import AutoConfig, PretrainedConfig, PreTrainedModel

from xdist import distributed
from xdist.config import ConfigError, ModelConfig
from xdist.hub import resolve_pretrained

logger = logging.getLogger(__name__)

# Config attributes that hold dropout probabilities across the encoder families we use (BERT, XLM-R,
# DistilBERT, ...); ``model.dropout`` sets every one the config class has.
_DROPOUT_ATTRIBUTES = (
    "hidden_dropout_prob",
    "attention_probs_dropout_prob",
    "dropout",
    "attention_dropout",
    "hidden_dropout",
)


# --------------------------------------------------------------------------------------------------
# Construction
# --------------------------------------------------------------------------------------------------


def _is_zero3(ds_config: dict | None) -> bool:
    return bool(ds_config) and int((ds_config.get("zero_optimization") or {}).get("stage", 0)) == 3


@contextlib.contextmanager
def zero3_construction(ds_config: dict | None) -> Iterator[None]:
    """While active, transformers builds/loads models partitioned with ``deepspeed.zero.Init``.

    transformers decides through a module-level weak reference to a live ``HfDeepSpeedConfig``; a raw
    ``with deepspeed.zero.Init()`` around a transformers 5 constructor fails in ``_init_weights``. The
    reference is dropped on exit so that later ``from_pretrained`` calls in the same process (an
    evaluation loading an exported model) build ordinary, unpartitioned models.
    """
    if not _is_zero3(ds_config):
        yield
        return
    from transformers.integrations.deepspeed import HfDeepSpeedConfig, unset_hf_deepspeed_config

    hf_ds_config = HfDeepSpeedConfig(ds_config)  # noqa: F841 -- must stay referenced while building
    try:
        yield
    finally:
        unset_hf_deepspeed_config()
        del hf_ds_config


def _config_error(field: str, message: str) -> ConfigError:
    return ConfigError(f"config field 'model.{field}': {message}")


def model_config(cfg: ModelConfig, *, vocab_size: int, pad_token_id: int) -> PretrainedConfig:
    """The ``transformers`` config for random init: ``model_type`` defaults plus ``architecture`` overrides.

    Every ``architecture`` key must be an attribute of that config class (a typo would otherwise be
    stored on the config and silently ignored by the model).
    """
    from transformers.models.auto.configuration_auto import CONFIG_MAPPING

    if cfg.model_type not in CONFIG_MAPPING:
        close = sorted(t for t in CONFIG_MAPPING if t[:2] == cfg.model_type[:2])[:8] or ["bert", "xlm-roberta"]
        raise _config_error("model_type", f"unknown transformers model type {cfg.model_type!r}; e.g. {close}")
    defaults = AutoConfig.for_model(cfg.model_type)
    valid = set(vars(defaults)) | set(getattr(defaults, "attribute_map", {}))
    for key in cfg.architecture:
        if key.startswith("_") or key not in valid:
            examples = sorted(k for k in vars(defaults) if not k.startswith("_") and not k.endswith("_id"))[:12]
            raise _config_error(
                f"architecture.{key}",
                f"not an attribute of {type(defaults).__name__} (model_type {cfg.model_type!r}); "
                f"valid keys include {examples}",
            )
    overrides = dict(cfg.architecture)
    model_vocab = overrides.pop("vocab_size", vocab_size)
    if model_vocab < vocab_size:
        raise _config_error(
            "architecture.vocab_size",
            f"{model_vocab} is smaller than the tokenizer's vocabulary ({vocab_size} tokens)",
        )
    config = AutoConfig.for_model(
        cfg.model_type, vocab_size=model_vocab, pad_token_id=pad_token_id, **overrides
    )
    _apply_dropout(config, cfg.dropout)
    return config


def _apply_dropout(config: PretrainedConfig, dropout: float | None) -> None:
    if dropout is None:
        return
    names = [name for name in _DROPOUT_ATTRIBUTES if hasattr(config, name)]
    if not names:
        raise _config_error(
            "dropout", f"{type(config).__name__} has none of the dropout attributes {list(_DROPOUT_ATTRIBUTES)}"
        )
    for name in names:
        setattr(config, name, dropout)


def _check_checkpoint_dir(path: str) -> Path:
    directory = Path(path)
    if not directory.is_dir():
        raise _config_error("checkpoint", f"directory {path!r} does not exist")
    if not (directory / "config.json").is_file():
        raise _config_error(
            "checkpoint",
            f"{path!r} is not a save_pretrained checkpoint (no config.json; found "
            f"{sorted(p.name for p in directory.iterdir())[:8]})",
        )
    if not any(directory.glob("*.safetensors")) and not any(directory.glob("*.bin")):
        raise _config_error("checkpoint", f"{path!r} has a config.json but no weights (*.safetensors)")
    return directory


def build_model(
    cfg: ModelConfig, auto_class: Any, *, vocab_size: int, pad_token_id: int, ds_config: dict | None = None,
    config_overrides: dict[str, Any] | None = None,
) -> PreTrainedModel:
    """Build a model of ``auto_class`` (an ``AutoModelFor*``, chosen by the task): random init from
    ``cfg.model_type``/``cfg.architecture``, or ``cfg.checkpoint``.

    ``vocab_size``/``pad_token_id`` come from the tokenizer. ``ds_config`` is the *resolved* DeepSpeed
    config (:func:`xdist.deepspeed_config.resolve_deepspeed_config`); with ZeRO-3 the model is created already
    partitioned (transformers' ``zero.Init`` path), so pass the same dict to ``Engine.create``. Without it
    (or for stages 0-2) every rank builds the full model in fp32; DeepSpeed casts it for bf16.

    A checkpoint is a local directory or a Hub id (:mod:`xdist.hub` resolves it to its cached snapshot, then
    it is loaded with ``local_files_only=True``); it may be a bare encoder (e.g.
    ``BertForMaskedLM``): the task's head is then newly initialised, which is logged.

    ``config_overrides`` are set on the ``transformers`` config in both cases (a classifier's
    ``num_labels``/``id2label``/``label2id``).
    """
    if cfg.checkpoint is None:
        config = model_config(cfg, vocab_size=vocab_size, pad_token_id=pad_token_id)
        for key, value in (config_overrides or {}).items():
            setattr(config, key, value)
        with zero3_construction(ds_config):
            return auto_class.from_config(config)

    if cfg.architecture:
        raise _config_error(
            "architecture",
            f"applies to random init only, but model.checkpoint is set ({cfg.checkpoint!r}); remove one of them",
        )
    directory = _check_checkpoint_dir(str(resolve_pretrained(cfg.checkpoint, field="model.checkpoint")))
    try:
        config = AutoConfig.from_pretrained(directory, local_files_only=True, **(config_overrides or {}))
    except (OSError, ValueError) as err:
        raise _config_error("checkpoint", f"cannot read the config in {str(directory)!r}: {err}") from None
    if config.vocab_size < vocab_size:
        raise _config_error(
            "checkpoint",
            f"{str(directory)!r} has vocab_size {config.vocab_size}, smaller than the tokenizer's {vocab_size}",
        )
    _apply_dropout(config, cfg.dropout)
    with zero3_construction(ds_config):
        model, info = auto_class.from_pretrained(
            directory, config=config, local_files_only=True, output_loading_info=True
        )
    for kind in ("missing_keys", "unexpected_keys", "mismatched_keys"):
        if info.get(kind) and _is_rank0():
            logger.warning("loading %s: %d %s, e.g. %s", directory, len(info[kind]), kind, list(info[kind])[:4])
    return model


def _is_rank0() -> bool:
    return not distributed.is_initialized() or torch.distributed.get_rank() == 0


def load_pretrained(
    auto_class: Any, checkpoint: str | os.PathLike, *, ds_config: dict | None = None
) -> PreTrainedModel:
    """Exactly the weights of a ``save_pretrained`` directory as a model of ``auto_class`` (local files only).

    Under a ZeRO-3 ``ds_config`` the model is loaded straight into partitions.
    """
    with zero3_construction(ds_config):
        return auto_class.from_pretrained(checkpoint, local_files_only=True)
