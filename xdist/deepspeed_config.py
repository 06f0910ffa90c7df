"""DeepSpeed config resolution: our typed ``train`` section fills the ``"auto"`` values of a DeepSpeed JSON file.

``train.deepspeed`` names a standard DeepSpeed JSON file. Every value our :class:`TrainConfig` owns is
written there as ``"auto"`` and filled by :func:`resolve_deepspeed_config` (the Hugging Face Trainer
convention); an explicit value that disagrees with our config is an error, never silently overridden.
The file itself keeps what only DeepSpeed knows: the ZeRO stage, buckets, overlap, offload. The
learning-rate schedule (:func:`warmup_steps`, :func:`linear_schedule`) and the config of a partitioned
teacher's inference engine (:func:`teacher_inference_config`) are derived here too.
"""

from __future__ import annotations

import copy
import json
import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

from xdist.config import ConfigError, TrainConfig

AUTO = "auto"


def _load_json(path: Path) -> dict:
    if not path.is_file():
        raise ConfigError(f"config field 'train.deepspeed': DeepSpeed config file {str(path)!r} does not exist")
    text = path.read_text()
    try:
        data = json.loads(text)
    except json.JSONDecodeError as err:
        raise ConfigError(
            f"DeepSpeed config {str(path)!r}, line {err.lineno} column {err.colno}: invalid JSON ({err.msg})"
        ) from None
    if not isinstance(data, dict):
        raise ConfigError(f"DeepSpeed config {str(path)!r}: expected a JSON object at top level")
    return data


def _same(a: Any, b: Any) -> bool:
    if isinstance(a, bool) or isinstance(b, bool):
        return a is b
    if isinstance(a, int | float) and isinstance(b, int | float):
        return math.isclose(a, b, rel_tol=1e-9, abs_tol=0.0)
    if isinstance(a, list | tuple) and isinstance(b, list | tuple):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b, strict=True))
    return a == b


class _Resolver:
    """Fills ``"auto"`` values of one DeepSpeed config and reports conflicts with our config."""

    def __init__(self, path: Path, config: dict) -> None:
        self.path = path
        self.config = config

    def fill(self, section: dict, key: str, where: str, value: Any, field: str, *, add: bool = True) -> None:
        """``section[key] = value`` if absent (``add``) or ``"auto"``; an explicit different value is an error."""
        current = section.get(key, AUTO if add else None)
        if current == AUTO:
            section[key] = value
        elif current is not None and not _same(current, value):
            raise ConfigError(
                f"DeepSpeed config {str(self.path)!r}: '{where}' is {json.dumps(current)} but config field "
                f"{field} gives {json.dumps(value)}; write \"auto\" there (xdist fills it) or make them agree"
            )

    def section(self, key: str) -> dict:
        value = self.config.setdefault(key, {})
        if not isinstance(value, dict):
            raise ConfigError(f"DeepSpeed config {str(self.path)!r}: '{key}' must be a JSON object, got {value!r}")
        return value

    def check_type(self, section: dict, name: str, allowed: str, why: str) -> None:
        kind = section.get("type", AUTO)
        if kind == AUTO:
            section["type"] = allowed
        elif kind != allowed:
            raise ConfigError(
                f"DeepSpeed config {str(self.path)!r}: '{name}.type' is {kind!r}; xdist needs {allowed!r} ({why})"
            )


def _leftover_autos(node: Any, where: str = "") -> list[str]:
    if isinstance(node, dict):
        return [p for k, v in node.items() for p in _leftover_autos(v, f"{where}.{k}" if where else k)]
    if isinstance(node, list):
        return [p for i, v in enumerate(node) for p in _leftover_autos(v, f"{where}[{i}]")]
    return [where] if node == AUTO else []


def warmup_steps(train: TrainConfig, total_steps: int) -> int:
    """Optimizer steps of linear warm-up: ``round(warmup_ratio x total_steps)``, at most ``total_steps - 1``."""
    return max(0, min(round(train.warmup_ratio * total_steps), total_steps - 1))


def linear_schedule(warmup: int, total: int) -> Callable[[int], float]:
    """LR multiplier for optimizer step index ``k`` (0-based): ``k / warmup`` while ``k < warmup``, then
    ``(total - k) / (total - warmup)`` down to 0 at ``total`` (the Hugging Face linear schedule).

    The step with index 0 thus runs at the full rate when ``warmup`` is 0, and the last one
    (``k = total - 1``) at ``1 / (total - warmup)`` of it.
    """
    if not 0 <= warmup < total:
        raise ValueError(f"need 0 <= warmup ({warmup}) < total ({total})")

    def factor(k: int) -> float:
        if k < warmup:
            return k / warmup
        return max(0.0, (total - k) / (total - warmup))

    return factor


def _resolve_warmup_decay(r: _Resolver, train: TrainConfig, total_steps: int) -> None:
    """Fill a ``scheduler`` block the JSON file chose to keep (DeepSpeed's own ``WarmupDecayLR``).

    The shipped files have no block: :meth:`Engine.create` then gives DeepSpeed :func:`linear_schedule`.
    Measured with DeepSpeed 0.19.8, ``WarmupDecayLR`` runs its first *two* optimizer steps at
    ``warmup_min_lr`` (its initial value, then iteration 0 of the ramp), forces at least 2 warm-up steps,
    and refuses ``warmup_num_steps = 0`` -- one step behind the linear schedule, and no way to say "no
    warm-up".
    """
    scheduler = r.section("scheduler")
    r.check_type(scheduler, "scheduler", "WarmupDecayLR", "train.warmup_ratio and train.lr describe a linear "
                 "warm-up then linear decay to zero; or delete the block to get xdist's own linear schedule")
    params = scheduler.setdefault("params", {})
    warmup = warmup_steps(train, total_steps)
    if warmup == 0 and params.get("warmup_num_steps", AUTO) == AUTO:
        raise ConfigError(
            f"DeepSpeed config {str(r.path)!r}: 'scheduler' WarmupDecayLR cannot run without warm-up "
            f"(train.warmup_ratio={train.warmup_ratio} gives 0 steps, DeepSpeed requires >= 1); delete the "
            "'scheduler' block (xdist then applies its own linear schedule) or raise train.warmup_ratio"
        )
    r.fill(params, "warmup_max_lr", "scheduler.params.warmup_max_lr", train.lr, "'train.lr'")
    r.fill(params, "total_num_steps", "scheduler.params.total_num_steps", total_steps, "total optimizer steps")
    r.fill(
        params, "warmup_num_steps", "scheduler.params.warmup_num_steps", warmup,
        f"'train.warmup_ratio' x {total_steps} total steps",
    )
    r.fill(params, "warmup_min_lr", "scheduler.params.warmup_min_lr", 0.0, "the linear schedule (starts at 0)")
    r.fill(params, "warmup_type", "scheduler.params.warmup_type", "linear", "the linear schedule")


def resolve_deepspeed_config(train: TrainConfig, *, world_size: int, total_steps: int, device_type: str) -> dict:
    """Load ``train.deepspeed`` and fill every ``"auto"`` from ``train``; return the dict for DeepSpeed.

    ========================================  ===================================================
    DeepSpeed key                             filled from
    ========================================  ===================================================
    ``train_micro_batch_size_per_gpu``        ``train.micro_batch_size``
    ``gradient_accumulation_steps``           ``train.gradient_accumulation_steps``
    ``train_batch_size``                      micro x accumulation x ``world_size``
    ``gradient_clipping``                     ``train.max_grad_norm`` (0 = off)
    ``optimizer`` AdamW ``lr/betas/eps/       ``train.lr/adam_betas/adam_eps/weight_decay``;
    weight_decay``, ``torch_adam``            ``torch_adam`` true (no FusedAdam/CPUAdam JIT build)
    ``scheduler`` (optional) WarmupDecayLR    ``warmup_max_lr`` = ``train.lr``, ``warmup_num_steps`` =
                                              :func:`warmup_steps`, ``total_num_steps`` =
                                              ``total_steps``, ``warmup_min_lr`` 0, linear warm-up
    ``bf16.enabled`` / ``fp16.enabled``       ``train.precision``
    ========================================  ===================================================

    Without a ``scheduler`` block (the shipped files) :meth:`Engine.create` hands DeepSpeed the exact
    :func:`linear_schedule`; see :func:`_resolve_warmup_decay` for why DeepSpeed's own is not the default.
    Absent keys (and absent ``optimizer``/``bf16`` sections) are added. An explicit value
    that contradicts ``train`` raises :class:`ConfigError` naming the file, the key and the field; so
    does any ``"auto"`` xdist does not own, fp16 on CPU (DeepSpeed's CPU accelerator refuses it) and a
    malformed file (with its line).
    """
    path = Path(train.deepspeed)
    config = _load_json(path)
    if total_steps <= 0:
        raise ValueError(f"total_steps must be positive, got {total_steps}")
    if world_size <= 0:
        raise ValueError(f"world_size must be positive, got {world_size}")
    if train.precision == "fp16" and device_type == "cpu":
        raise ConfigError(
            "config field 'train.precision': fp16 is not supported on CPU (DeepSpeed's CPU accelerator "
            "refuses it); use bf16 or fp32"
        )
    r = _Resolver(path, config)
    micro, accumulation = train.micro_batch_size, train.gradient_accumulation_steps
    r.fill(
        config, "train_micro_batch_size_per_gpu", "train_micro_batch_size_per_gpu", micro,
        "'train.micro_batch_size'",
    )
    r.fill(
        config, "gradient_accumulation_steps", "gradient_accumulation_steps", accumulation,
        "'train.gradient_accumulation_steps'",
    )
    r.fill(
        config, "train_batch_size", "train_batch_size", micro * accumulation * world_size,
        f"'train.micro_batch_size' x 'train.gradient_accumulation_steps' x world size {world_size}",
    )
    r.fill(config, "gradient_clipping", "gradient_clipping", train.max_grad_norm, "'train.max_grad_norm'")

    optimizer = r.section("optimizer")
    r.check_type(optimizer, "optimizer", "AdamW", "train.lr/adam_betas/adam_eps/weight_decay describe AdamW")
    params = optimizer.setdefault("params", {})
    r.fill(params, "lr", "optimizer.params.lr", train.lr, "'train.lr'")
    r.fill(params, "betas", "optimizer.params.betas", list(train.adam_betas), "'train.adam_betas'")
    r.fill(params, "eps", "optimizer.params.eps", train.adam_eps, "'train.adam_eps'")
    r.fill(params, "weight_decay", "optimizer.params.weight_decay", train.weight_decay, "'train.weight_decay'")
    # torch.optim.AdamW: without it DeepSpeed JIT-compiles FusedAdam (or CPUAdam under offload), about a
    # minute of C++ build on a fresh machine. A GPU user may write "torch_adam": false explicitly.
    if params.get("torch_adam", AUTO) == AUTO:
        params["torch_adam"] = True

    if "scheduler" in config:
        _resolve_warmup_decay(r, train, total_steps)

    for name, wanted in (("bf16", train.precision == "bf16"), ("fp16", train.precision == "fp16")):
        aliases = [k for k in (name, "bfloat16" if name == "bf16" else "") if k and k in config]
        if not aliases:
            if wanted:
                config[name] = {"enabled": True}
            continue
        for key in aliases:
            r.fill(r.section(key), "enabled", f"{key}.enabled", wanted, f"'train.precision' ({train.precision!r})")

    leftover = _leftover_autos(config)
    if leftover:
        raise ConfigError(
            f"DeepSpeed config {str(path)!r}: '{leftover[0]}' is \"auto\", but xdist does not fill it; "
            "write a value"
        )
    return config


# What a partitioned teacher's DeepSpeed engine takes from the student's resolved config: everything that
# decides how parameters are partitioned, stored and computed (the whole zero_optimization block but the
# optimizer offload, so the persistence threshold, parameter offload, hpZ and buckets are the student's and
# both models are partitioned alike), the dtype sections, and the batch sizes DeepSpeed validates.
_TEACHER_CONFIG_KEYS = (
    "train_batch_size", "train_micro_batch_size_per_gpu", "gradient_accumulation_steps", "bf16", "bfloat16",
    "fp16", "zero_optimization", "communication_data_type", "steps_per_print",
)


def teacher_inference_config(ds_config: dict) -> dict:
    """DeepSpeed config for a frozen ZeRO-3-partitioned teacher, derived from the student's resolved config.

    TRL's ``prepare_deepspeed`` pattern for a reference model: the student's config without optimizer,
    scheduler, optimizer offload, gradient clipping or monitors (the teacher never steps or logs). Unlike
    TRL it keeps the student's ``stage3_param_persistence_threshold``, so that the two models are
    partitioned identically (:func:`xdist.weights.copy_partitions_into`). Raises :class:`ConfigError`
    unless ``ds_config`` is ZeRO stage 3 (the teacher shares the student's partitioning).
    """
    stage = int((ds_config.get("zero_optimization") or {}).get("stage", 0))
    if stage != 3:
        raise ConfigError(
            f"config field 'method.teacher_partition': 'zero3' partitions the teacher like a ZeRO-3 student, but "
            f"train.deepspeed gives ZeRO stage {stage}; use a stage-3 file (configs/deepspeed/zero3.json) or "
            "method.teacher_partition: replicated"
        )
    config = {key: copy.deepcopy(ds_config[key]) for key in _TEACHER_CONFIG_KEYS if key in ds_config}
    config["zero_optimization"].pop("offload_optimizer", None)
    return config
