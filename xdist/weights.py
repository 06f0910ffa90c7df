"""The weights of a model that DeepSpeed may wrap and ZeRO-3 may partition: gather, export, snapshot, copy.

* :func:`unwrap` — the ``nn.Module`` inside an engine; :func:`iter_full_parameters` /
  :func:`full_state_dict` — full values, gathered one submodule at a time.
* :func:`export_pretrained` — a plain Hugging Face checkpoint (safetensors) from a model that may be
  wrapped by DeepSpeed and partitioned by ZeRO-3, loadable with the task's ``AutoModelFor*`` class.
* :func:`frozen_copy` / :func:`copy_weights_into` — a frozen, full teacher snapshot of a (possibly
  partitioned) student, refreshed in place at each self-distillation generation.
* :func:`copy_partitions_into` — the same refresh for a teacher that is itself ZeRO-3-partitioned
  (built by :meth:`xdist.engine.Engine.partitioned_teacher`): rank-local partition copies.

Nothing here depends on the task: it works for any ``transformers`` ``PreTrainedModel``.
"""

from __future__ import annotations

import contextlib
import copy
import logging
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import nn
from transformers import AutoConfig, PreTrainedModel

from xdist import distributed

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase

logger = logging.getLogger(__name__)


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
    ``AutoModelFor*.from_pretrained(out_dir)`` of the model's task.
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
def copy_weights_into(model_or_engine: Any, teacher: Any) -> None:
    """Overwrite ``teacher``'s parameters and buffers with the student's current values, in place.

    Gathers ZeRO-3 partitions one submodule at a time (collective: all ranks call it); a partitioned
    teacher is gathered alike and re-partitioned with the new values (the fallback of
    :func:`copy_partitions_into`). The teacher must have the same architecture (names and shapes, else
    ``ValueError``); values are cast to the teacher's dtype.
    """
    student, target = unwrap(model_or_engine), unwrap(teacher)
    _parameter_pairs(student, target)
    _copy_gathered(student, target)
    _copy_buffers(student, target)


# --------------------------------------------------------------------------------------------------
# ZeRO-3-partitioned teachers
# --------------------------------------------------------------------------------------------------


def is_partitioned(model_or_engine: Any) -> bool:
    """True when the module's parameters are ZeRO-3-partitioned (DeepSpeed marks them with ``ds_id``)."""
    return any(_is_partitioned(p) for p in unwrap(model_or_engine).parameters())


@dataclass(frozen=True)
class PartitionFootprint:
    """Parameter elements a ZeRO-3-partitioned module holds on this rank."""

    local: int
    """Elements of this rank's partitions (``ds_tensor``, padding included): about ``full / world``."""

    full: int
    """Elements of the whole model."""

    persistent: int
    """Elements of the parameters DeepSpeed keeps whole on every rank after their first use (those at or
    below ``stage3_param_persistence_threshold``), on top of their partitions."""


def partition_footprint(model_or_engine: Any) -> PartitionFootprint:
    """How much of a partitioned module lives on this rank (an unpartitioned one: local = full)."""
    local = full = persistent = 0
    for param in unwrap(model_or_engine).parameters():
        if _is_partitioned(param):
            local += param.ds_tensor.numel()
            full += param.ds_numel
            persistent += param.ds_numel if param.ds_persist else 0
        else:
            local += param.numel()
            full += param.numel()
    return PartitionFootprint(local=local, full=full, persistent=persistent)


def _layout_difference(student: nn.Parameter, teacher: nn.Parameter) -> str | None:
    """Why this rank's partition of ``student`` cannot be copied element for element into ``teacher``'s.

    ZeRO-3 flattens a parameter, pads it with zeros to a multiple of the partition group's size and gives
    rank r the slice ``[r*n, (r+1)*n)`` (``n = ceil(numel / group size)``; ``Init._partition_param``):
    two parameters of the same shape partitioned over the same group therefore hold the same elements
    on every rank. The exceptions are checked here.
    """
    from deepspeed.runtime.swap_tensor.partitioned_param_swapper import PartitionedParamStatus
    from deepspeed.runtime.zero.offload_config import OffloadDeviceEnum
    from deepspeed.runtime.zero.partition_parameters import ZeroParamStatus

    if not (_is_partitioned(student) and _is_partitioned(teacher)):
        return "one of them is not ZeRO-3-partitioned"
    if student.ds_tensor is None or teacher.ds_tensor is None:
        return "a partition is missing"
    for where in (torch.distributed.get_world_size, torch.distributed.get_rank):
        if where(group=student.ds_process_group) != where(group=teacher.ds_process_group):
            return "they are partitioned over different process groups"
    if student.ds_tensor.numel() != teacher.ds_tensor.numel():
        return f"partition sizes differ ({student.ds_tensor.numel()} vs {teacher.ds_tensor.numel()})"
    for param in (student, teacher):
        swapped = getattr(param.ds_tensor, "final_location", None) == OffloadDeviceEnum.nvme
        if swapped or getattr(param.ds_tensor, "status", PartitionedParamStatus.AVAILABLE) != \
                PartitionedParamStatus.AVAILABLE:
            return "a partition is swapped out to NVMe"
        if hasattr(param.ds_tensor, "ds_quant_scale"):
            return "a partition is quantized"
        if param.ds_status == ZeroParamStatus.INFLIGHT:
            return "a parameter is being gathered"
    if getattr(teacher, "ds_secondary_tensor", None) is not None:
        return "the teacher has a secondary (hpZ) partition that would go stale"
    return None


def _all_ranks_agree(flag: bool) -> bool:
    """True when ``flag`` is true on every rank (one tiny all-reduce; collective)."""
    if not distributed.is_initialized():
        return flag
    from deepspeed.accelerator import get_accelerator

    value = torch.tensor([int(flag)], device=get_accelerator().current_device_name())
    torch.distributed.all_reduce(value, op=torch.distributed.ReduceOp.MIN)
    return bool(value.item())


@torch.no_grad()
def copy_partitions_into(model_or_engine: Any, teacher: Any) -> str:
    """Overwrite a ZeRO-3-partitioned ``teacher`` with the student's current weights, in place.

    Student and teacher are partitioned alike (same architecture, same ranks), so each rank copies its own
    partitions (``param.ds_tensor``, the student's compute-dtype weights) into the teacher's: no
    communication beyond one agreement all-reduce, and no rank ever holds the whole model. Parameters the
    teacher keeps whole between forwards (DeepSpeed's persistent ones) are then re-gathered from the new
    partitions, as DeepSpeed does after loading a checkpoint. If any parameter's layout differs on any rank
    (NVMe offload, quantized or hpZ partitions, different groups) every rank falls back to gathering one
    submodule at a time, which is logged. Buffers are copied as they are (never partitioned).

    Collective: all ranks call it. Returns ``"partitions"`` or ``"gathered"`` (the path taken). Raises
    ``ValueError`` if the teacher's parameter names or shapes differ from the student's.
    """
    from deepspeed.runtime.zero.partition_parameters import ZeroParamStatus

    student, target = unwrap(model_or_engine), unwrap(teacher)
    pairs = _parameter_pairs(student, target)
    difference = next((f"{name}: {d}" for name, s, t in pairs if (d := _layout_difference(s, t))), None)
    if _all_ranks_agree(difference is None):
        gathered_whole = []
        for _, source, dest in pairs:
            dest.ds_tensor.copy_(source.ds_tensor)
            if dest.ds_status == ZeroParamStatus.AVAILABLE:  # a full copy DeepSpeed keeps between forwards
                gathered_whole.append(dest)
        if gathered_whole:
            # The same on every rank (persistence and fetch order are). Free the stale full values and
            # gather the fresh ones, the order of DeepSpeed's own checkpoint-load code (stage3.py).
            gathered_whole[0].partition(param_list=gathered_whole, has_been_updated=False)
            gathered_whole[0].all_gather(param_list=gathered_whole)
        path = "partitions"
    else:
        logger.warning("teacher refresh: %s; gathering one submodule at a time instead",
                       difference or "the partition layout differs on another rank")
        _copy_gathered(student, target)
        path = "gathered"
    _copy_buffers(student, target)
    return path


def _parameter_pairs(student: nn.Module, teacher: nn.Module) -> list[tuple[str, nn.Parameter, nn.Parameter]]:
    sources, targets = dict(student.named_parameters()), dict(teacher.named_parameters())
    if list(sources) != list(targets):
        missing = sorted(set(sources) ^ set(targets))[:4]
        raise ValueError(f"teacher refresh: teacher and student have different parameters (e.g. {missing})")
    pairs = []
    for name, source in sources.items():
        target = targets[name]
        shapes = getattr(source, "ds_shape", source.shape), getattr(target, "ds_shape", target.shape)
        if tuple(shapes[0]) != tuple(shapes[1]):
            raise ValueError(f"teacher refresh: {name} has shape {tuple(shapes[1])}, the student's {tuple(shapes[0])}")
        pairs.append((name, source, target))
    return pairs


def _copy_gathered(student: nn.Module, teacher: nn.Module) -> None:
    """Copy full values submodule by submodule; partitioned teacher parameters are re-partitioned on exit."""
    teacher_modules = dict(teacher.named_modules())
    for prefix, submodule in student.named_modules():
        own = list(submodule.named_parameters(recurse=False))
        if not own:
            continue
        targets = dict(teacher_modules[prefix].named_parameters(recurse=False))
        partitioned = [targets[name] for name, _ in own if _is_partitioned(targets[name])]
        modified = contextlib.nullcontext()
        if partitioned:
            import deepspeed

            # modifier_rank=0: on exit DeepSpeed broadcasts rank 0's values and re-partitions them (every
            # rank wrote the same values anyway); with None it would discard the writes.
            modified = deepspeed.zero.GatheredParameters(partitioned, modifier_rank=0)
        with _gathered([p for _, p in own]), modified:
            for name, source in own:
                targets[name].data.copy_(source.data.reshape(targets[name].shape))


def _copy_buffers(student: nn.Module, teacher: nn.Module) -> None:
    # Buffers are never partitioned; non-persistent ones (position ids) are needed after to_empty.
    teacher_buffers = dict(teacher.named_buffers())
    for name, buffer in student.named_buffers():
        if name in teacher_buffers:
            teacher_buffers[name].copy_(buffer)
