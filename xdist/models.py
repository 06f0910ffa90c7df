"""Build, snapshot and export the QA model (a ``transformers`` ``*ForQuestionAnswering``).

* :func:`build_qa_model` — random init from a ``transformers`` config, or a local ``save_pretrained``
  checkpoint. Under ZeRO-3 it goes through transformers' own ``zero.Init`` path, so each rank only
  ever holds its partition of the weights.
* :func:`export_pretrained` — a plain Hugging Face checkpoint (safetensors) from a model that may be
  wrapped by DeepSpeed and partitioned by ZeRO-3, loadable with ``AutoModelForQuestionAnswering``.
* :func:`frozen_copy` / :func:`copy_weights_into` — a frozen, full teacher snapshot of a (possibly
  partitioned) student, refreshed in place at each self-distillation generation.

Random init draws from torch's global RNG: seed it identically on every rank before building
(``transformers.set_seed``), otherwise ZeRO-1/2 ranks would start from different weights.
"""

from __future__ import annotations

import contextlib
import copy
import logging
import os
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import nn
from transformers import AutoConfig, AutoModelForQuestionAnswering, PretrainedConfig, PreTrainedModel

from xdist import distributed
from xdist.config import ConfigError, ModelConfig

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase

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
def _zero3_construction(ds_config: dict | None) -> Iterator[None]:
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


def qa_model_config(cfg: ModelConfig, *, vocab_size: int, pad_token_id: int) -> PretrainedConfig:
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


def build_qa_model(
    cfg: ModelConfig, *, vocab_size: int, pad_token_id: int, ds_config: dict | None = None
) -> PreTrainedModel:
    """Build the QA model: random init from ``cfg.model_type``/``cfg.architecture``, or ``cfg.checkpoint``.

    ``vocab_size``/``pad_token_id`` come from the tokenizer. ``ds_config`` is the *resolved* DeepSpeed
    config (:func:`xdist.engine.resolve_deepspeed_config`); with ZeRO-3 the model is created already
    partitioned (transformers' ``zero.Init`` path), so pass the same dict to ``Engine.create``. Without it
    (or for stages 0-2) every rank builds the full model in fp32; DeepSpeed casts it for bf16.

    A checkpoint is loaded with ``local_files_only=True`` (never the hub); it may be a bare encoder (e.g.
    ``BertForMaskedLM``): the QA head is then newly initialised, which is logged.
    """
    if cfg.checkpoint is None:
        config = qa_model_config(cfg, vocab_size=vocab_size, pad_token_id=pad_token_id)
        with _zero3_construction(ds_config):
            return AutoModelForQuestionAnswering.from_config(config)

    if cfg.architecture:
        raise _config_error(
            "architecture",
            f"applies to random init only, but model.checkpoint is set ({cfg.checkpoint!r}); remove one of them",
        )
    directory = _check_checkpoint_dir(cfg.checkpoint)
    try:
        config = AutoConfig.from_pretrained(directory, local_files_only=True)
    except (OSError, ValueError) as err:
        raise _config_error("checkpoint", f"cannot read the config in {str(directory)!r}: {err}") from None
    if config.vocab_size < vocab_size:
        raise _config_error(
            "checkpoint",
            f"{str(directory)!r} has vocab_size {config.vocab_size}, smaller than the tokenizer's {vocab_size}",
        )
    _apply_dropout(config, cfg.dropout)
    with _zero3_construction(ds_config):
        model, info = AutoModelForQuestionAnswering.from_pretrained(
            directory, config=config, local_files_only=True, output_loading_info=True
        )
    for kind in ("missing_keys", "unexpected_keys", "mismatched_keys"):
        if info.get(kind) and _is_rank0():
            logger.warning("loading %s: %d %s, e.g. %s", directory, len(info[kind]), kind, list(info[kind])[:4])
    return model


def _is_rank0() -> bool:
    return not distributed.is_initialized() or torch.distributed.get_rank() == 0


# --------------------------------------------------------------------------------------------------
# Full weights of a possibly ZeRO-3-partitioned module
# --------------------------------------------------------------------------------------------------


def unwrap(model_or_engine: Any) -> nn.Module:
    """The ``nn.Module`` inside an :class:`xdist.engine.Engine` or a ``DeepSpeedEngine`` (or the module)."""
    module = model_or_engine
    while not isinstance(module, PreTrainedModel) and hasattr(module, "module"):
        module = module.module
    if not isinstance(module, nn.Module):
        raise TypeError(f"expected a model or engine, got {type(model_or_engine).__name__}")
    return module


def _is_partitioned(param: torch.Tensor) -> bool:
    # ZeRO-3 marks its parameters with ds_id (and keeps only a local shard in ds_tensor).
    return hasattr(param, "ds_id")


@contextlib.contextmanager
def _gathered(params: list[nn.Parameter]) -> Iterator[None]:
    """Full values of ``params`` on every rank while active (no-op for unpartitioned parameters).

    Collective under ZeRO-3: every rank must enter it with the same parameters in the same order.
    """
    partitioned = [p for p in params if _is_partitioned(p)]
    if not partitioned:
        yield
        return
    import deepspeed

    with deepspeed.zero.GatheredParameters(partitioned, modifier_rank=None):
        yield


def iter_full_parameters(module: nn.Module) -> Iterator[tuple[str, torch.Tensor]]:
    """``(name, full tensor)`` for every parameter, gathering ZeRO-3 partitions one submodule at a time.

    The tensor is only valid until the next item (it aliases the gathered storage); copy it. All
    ranks must iterate to the end together (the gathers are collective).
    """
    for prefix, submodule in module.named_modules():
        own = list(submodule.named_parameters(prefix=prefix, recurse=False))
        if not own:
            continue
        with _gathered([p for _, p in own]):
            for name, param in own:
                yield name, param.data


def full_state_dict(model_or_engine: Any, *, master_weights: bool = True) -> dict[str, torch.Tensor] | None:
    """The consolidated state dict on CPU on rank 0 (``None`` on other ranks). All ranks must call it.

    With ``master_weights`` the values come from DeepSpeed's fp32 master copy where one exists (bf16
    training keeps its exact weights there; ``deepspeed.utils.safe_get_full_fp32_param``), else from the
    module's own parameters. Buffers are included. Peak memory on rank 0: one fp32 copy of the model.
    """
    from deepspeed.utils import safe_get_full_fp32_param

    module = unwrap(model_or_engine)
    is_main = _is_rank0()
    state: dict[str, torch.Tensor] = {}
    for prefix, submodule in module.named_modules():
        own = list(submodule.named_parameters(prefix=prefix, recurse=False))
        if not own:
            continue
        masters = {}
        if master_weights:
            for name, param in own:
                # Collective for ZeRO-3 parameters: every rank calls it for the same params in order.
                master = safe_get_full_fp32_param(param) if param.requires_grad else None
                if master is not None:
                    masters[name] = master
        missing = [(name, p) for name, p in own if name not in masters]
        with _gathered([p for _, p in missing]):
            if is_main:
                for name, param in own:
                    value = masters.get(name)
                    if value is None:
                        value = param.data
                    shape = getattr(param, "ds_shape", param.shape)
                    state[name] = value.detach().reshape(shape).to("cpu", copy=True)
    if not is_main:
        return None
    for name, buffer in module.state_dict().items():
        if name not in state and not _is_partitioned(buffer) and buffer.numel() > 0:
            state[name] = buffer.detach().to("cpu", copy=True)
    return state


def export_pretrained(
    model_or_engine: Any, out_dir: str | os.PathLike, tokenizer: PreTrainedTokenizerBase | None = None
) -> None:
    """Write a Hugging Face checkpoint (``config.json`` + safetensors, and the tokenizer if given).

    Works for a plain model, an :class:`xdist.engine.Engine` or a ``DeepSpeedEngine`` at any ZeRO stage;
    weights are consolidated (ZeRO-3 partitions gathered, fp32 master weights preferred) and only rank 0
    writes. All ranks must call it. The result loads with plain
    ``AutoModelForQuestionAnswering.from_pretrained(out_dir)``.
    """
    module = unwrap(model_or_engine)
    if not isinstance(module, PreTrainedModel):
        raise TypeError(f"export_pretrained needs a transformers PreTrainedModel, got {type(module).__name__}")
    state = full_state_dict(model_or_engine)
    if state is not None:
        out = Path(out_dir)
        dtypes = {t.dtype for t in state.values() if t.is_floating_point()}
        # save_pretrained records the *module's* dtype (bf16 under bf16 training) in config.dtype, which
        # from_pretrained(dtype="auto") would then load the fp32 master weights as; keep the live config
        # untouched and write the dtype the weights actually have.
        live_dtype = module.config.dtype
        try:
            # transformers 5 always writes safetensors (the safe_serialization switch is gone).
            module.save_pretrained(out, state_dict=state, is_main_process=True)
        finally:
            module.config.dtype = live_dtype
        if len(dtypes) == 1:
            saved = AutoConfig.from_pretrained(out, local_files_only=True)
            saved.dtype = next(iter(dtypes))
            saved.save_pretrained(out)
        if tokenizer is not None:
            tokenizer.save_pretrained(out)
    distributed.barrier()


# --------------------------------------------------------------------------------------------------
# Teacher snapshots
# --------------------------------------------------------------------------------------------------


def _compute_dtype(module: nn.Module) -> torch.dtype:
    for param in module.parameters():
        if param.is_floating_point():
            return param.dtype
    return torch.float32


def frozen_copy(model_or_engine: Any, device: torch.device | str | None = None) -> PreTrainedModel:
    """A full, frozen, eval-mode copy of the current weights (for a distillation teacher).

    The copy is an ordinary module on every rank (not partitioned, no DeepSpeed hooks, no optimizer
    state, ``requires_grad=False``) in the student's compute dtype (bf16 when training in bf16), on
    ``device`` (default: where the student's parameters live). Memory: one full model per rank — under
    ZeRO-3 that undoes the partitioning for the teacher; for a teacher too large to replicate, wrap it
    in its own ZeRO-3 inference engine instead (the TRL ``prepare_deepspeed`` pattern). Collective
    under ZeRO-3: all ranks must call it.

    The skeleton is built on the meta device (no random init, no memory) and then filled by
    :func:`copy_weights_into`; this avoids ``copy.deepcopy`` of a module whose parameters carry
    DeepSpeed's hooks and optimizer links.
    """
    module = unwrap(model_or_engine)
    if not isinstance(module, PreTrainedModel):
        raise TypeError(f"frozen_copy needs a transformers PreTrainedModel, got {type(module).__name__}")
    if device is None:
        device = next(module.parameters()).device
    with torch.device("meta"):
        teacher = type(module)(copy.deepcopy(module.config))
    teacher = teacher.to(dtype=_compute_dtype(module)).to_empty(device=device)
    teacher.requires_grad_(False)
    teacher.eval()
    copy_weights_into(model_or_engine, teacher)
    return teacher


@torch.no_grad()
def copy_weights_into(model_or_engine: Any, teacher: nn.Module) -> None:
    """Overwrite ``teacher``'s parameters and buffers with the student's current values, in place.

    Gathers ZeRO-3 partitions one submodule at a time (collective: all ranks call it). The teacher must
    have the same architecture (names and shapes); values are cast to the teacher's dtype.
    """
    module = unwrap(model_or_engine)
    targets = dict(teacher.named_parameters())
    if set(targets) != {name for name, _ in module.named_parameters()}:
        raise ValueError("copy_weights_into: teacher and student have different parameter names")
    for name, value in iter_full_parameters(module):
        target = targets[name]
        if target.numel() != value.numel():
            raise ValueError(f"copy_weights_into: {name} has {target.numel()} values, student has {value.numel()}")
        target.copy_(value.reshape(target.shape))
    teacher_buffers = dict(teacher.named_buffers())
    for name, buffer in module.named_buffers():
        # Buffers are never partitioned; non-persistent ones (position ids) are needed after to_empty.
        if name in teacher_buffers:
            teacher_buffers[name].copy_(buffer)
