"""The DeepSpeed engine: config resolution, step, checkpoints, export and teacher snapshots.

Config
    ``train.deepspeed`` names a standard DeepSpeed JSON file. Every value our :class:`TrainConfig` owns
    is written there as ``"auto"`` and filled by :func:`resolve_deepspeed_config` (the Hugging Face
    Trainer convention); an explicit value that disagrees with our config is an error, never silently
    overridden. The file itself keeps what only DeepSpeed knows: the ZeRO stage, buckets, overlap,
    offload.

Loss normalisation under gradient accumulation (GA) and data parallelism
    ``Engine.backward(loss)`` divides ``loss`` by GA (DeepSpeed's ``scale_wrt_gas``), and DeepSpeed
    *averages* gradients over the ``world_size`` ranks. Accumulating GA micro-batches on each rank
    therefore yields the gradient of

        mean over ranks r and micro-steps m of loss[r, m].

    * If every micro-batch holds the same number of rows (our stream gives every rank equal, full
      batches) and the loss is a per-micro-batch **mean**, this is exactly the mean over the whole global
      batch: pass the mean, nothing else to do.
    * If the number of contributing rows varies (masked rows, a KD term only on some rows), a per-batch
      mean weights rows unequally. Then compute the **sum** over the micro-batch's rows and divide by
      the global count ``N`` of contributing rows in the whole accumulation window on all ranks (count it
      up front, e.g. an all-reduce of the window's counts), times GA x world_size to cancel DeepSpeed's
      two averages: :func:`normalize_summed_loss`. The result is the exact global mean.

    Never divide by GA yourself as well. tests/test_engine.py checks both cases against plain torch on
    the whole global batch.
"""

from __future__ import annotations

import copy
import json
import math
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import nn

from xdist import checkpoint, models
from xdist.config import ConfigError, TrainConfig
from xdist.distributed import DistEnv

AUTO = "auto"
_CLIENT_STATE_KEY = checkpoint.CLIENT_KEY


# --------------------------------------------------------------------------------------------------
# DeepSpeed config
# --------------------------------------------------------------------------------------------------


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
    partitioned identically (:func:`xdist.models.copy_partitions_into`). Raises :class:`ConfigError`
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


def normalize_summed_loss(
    loss_sum: torch.Tensor,
    global_count: int | float | torch.Tensor,
    *,
    gradient_accumulation_steps: int,
    world_size: int,
) -> torch.Tensor:
    """Scale a micro-batch's *summed* loss so that DeepSpeed's 1/GA and rank averaging give the global mean.

    ``global_count`` is the number of contributing rows in the whole accumulation window on all ranks.
    See the module docstring.
    """
    return loss_sum * (gradient_accumulation_steps * world_size) / global_count


# --------------------------------------------------------------------------------------------------
# Engine
# --------------------------------------------------------------------------------------------------


def _is_norm_module(module: nn.Module) -> bool:
    name = type(module).__name__
    return isinstance(module, nn.LayerNorm | nn.GroupNorm) or "LayerNorm" in name or "RMSNorm" in name


def param_groups(model: nn.Module, weight_decay: float) -> list[dict]:
    """AdamW groups: weight decay on weight matrices/embeddings, none on biases and normalisation weights.

    Decided by module type and parameter name, not by ``ndim`` (ZeRO-3 flattens partitioned params).
    """
    no_decay: set[str] = set()
    for module_name, module in model.named_modules():
        for param_name, _ in module.named_parameters(recurse=False):
            full = f"{module_name}.{param_name}" if module_name else param_name
            if param_name == "bias" or _is_norm_module(module):
                no_decay.add(full)
    decay_params, no_decay_params = [], []
    for name, param in model.named_parameters():
        if param.requires_grad:
            (no_decay_params if name in no_decay else decay_params).append(param)
    return [
        {"params": decay_params, "weight_decay": weight_decay},
        {"params": no_decay_params, "weight_decay": 0.0},
    ]


class Engine:
    """A DeepSpeed engine with the few operations the training loop needs.

    Loop per micro-batch: ``out = engine.forward(**batch)``; ``engine.backward(loss)`` (scales by
    1/GA, see the module docstring); ``engine.step()`` (applies the optimizer and LR schedule only at
    accumulation boundaries, which DeepSpeed tracks). ``forward`` moves tensors to this rank's device;
    under bf16 the module's weights are bf16 (DeepSpeed casts them) and integer ids need no cast.
    """

    def __init__(self, ds_engine: Any, config: dict, dist: DistEnv) -> None:
        self._engine = ds_engine
        self.config = config
        """The resolved DeepSpeed config."""
        self.dist = dist
        self._grad_norm: float | None = None
        self._lr = float(ds_engine.get_lr()[0])

    @classmethod
    def create(
        cls,
        model: nn.Module,
        train_cfg: TrainConfig,
        dist: DistEnv,
        total_steps: int,
        *,
        ds_config: dict | None = None,
    ) -> Engine:
        """Wrap ``model`` with ``deepspeed.initialize``: AdamW (no decay on biases/norms) and the schedule.

        ``ds_config`` is the already resolved config (pass the one given to
        :func:`xdist.models.build_qa_model` for ZeRO-3); by default it is resolved from ``train_cfg``.
        """
        import deepspeed

        if ds_config is None:
            ds_config = resolve_deepspeed_config(
                train_cfg, world_size=dist.world_size, total_steps=total_steps, device_type=dist.device_type
            )
        groups = param_groups(model, train_cfg.weight_decay)
        scheduler = None
        if "scheduler" not in ds_config:
            factor = linear_schedule(warmup_steps(train_cfg, total_steps), total_steps)
            # DeepSpeed calls this with its torch optimizer, steps it once per optimizer step and saves
            # its position in checkpoints. factor is a plain function, so on resume LambdaLR restores only
            # the step count and the *current* config's schedule applies.
            scheduler = lambda optimizer: torch.optim.lr_scheduler.LambdaLR(optimizer, factor)
        ds_engine, _, _, _ = deepspeed.initialize(
            model=model, model_parameters=groups, config=ds_config, lr_scheduler=scheduler, dist_init_required=False
        )
        return cls(ds_engine, ds_config, dist)

    # ------------------------------------------------------------------ training
    def forward(self, **inputs: Any) -> Any:
        """The model's outputs for one micro-batch (tensors are moved to this rank's device)."""
        device = self.dist.device
        moved = {k: v.to(device, non_blocking=True) if torch.is_tensor(v) else v for k, v in inputs.items()}
        return self._engine(**moved)

    __call__ = forward

    def backward(self, loss: torch.Tensor) -> None:
        """Backpropagate ``loss``; DeepSpeed divides it by the accumulation steps first."""
        self._engine.backward(loss)

    def step(self) -> bool:
        """End a micro-batch; at an accumulation boundary, clip, update and advance the LR schedule.

        Returns whether an optimizer step happened (then :attr:`grad_norm` and :attr:`lr` describe it).
        """
        boundary = self._engine.is_gradient_accumulation_boundary()
        lr = float(self._engine.get_lr()[0])
        self._engine.step()
        if boundary:
            norm = self._engine.get_global_grad_norm()
            self._grad_norm = None if norm is None else float(norm)
            self._lr = lr
        else:
            self._grad_norm = None
        return boundary

    @property
    def global_steps(self) -> int:
        """Optimizer steps taken so far (restored by :meth:`load_checkpoint`)."""
        return int(self._engine.global_steps)

    @property
    def lr(self) -> float:
        """Learning rate of the latest optimizer step (before the first step: the current optimizer value)."""
        return self._lr

    @property
    def grad_norm(self) -> float | None:
        """Global gradient norm (before clipping) of the optimizer step the last ``step()`` took; None if
        that call was not a boundary."""
        return self._grad_norm

    @property
    def module(self) -> nn.Module:
        """The unwrapped model (under ZeRO-3 its parameters are partitioned: use the gathering helpers)."""
        return self._engine.module

    @property
    def ds_engine(self) -> Any:
        """The underlying ``deepspeed.DeepSpeedEngine``."""
        return self._engine

    @property
    def zero_stage(self) -> int:
        """The ZeRO stage (0-3)."""
        return int(self._engine.zero_optimization_stage())

    def train(self) -> Engine:
        """Training mode (dropout on)."""
        self._engine.train()
        return self

    def eval(self) -> Engine:
        """Evaluation mode (dropout off)."""
        self._engine.eval()
        return self

    # ------------------------------------------------------------------ checkpoints
    def save_checkpoint(
        self,
        directory: str | os.PathLike,
        step: int,
        client_state: dict | None = None,
        keep_last: int | None = None,
        *,
        run_id: str = "",
    ) -> str:
        """Commit model, optimizer, scheduler and ``client_state`` as ``<directory>/step<step>``; all ranks call it.

        Atomic and verified (:func:`xdist.checkpoint.save`): written under a temporary name, fsynced,
        hashed into a manifest, renamed, then the ``latest`` file is replaced and the run's (``run_id``)
        older checkpoints are pruned to ``keep_last``. Assumes ``directory`` is shared by all ranks.
        Returns the tag.
        """
        parameters = sum(getattr(p, "ds_numel", p.numel()) for p in self.module.parameters())
        # Under one key: DeepSpeed hands back its own extra keys (param_shapes, ds_config, ...) mixed
        # with the client's on load.
        state = {_CLIENT_STATE_KEY: dict(client_state or {})}
        return checkpoint.save(self._engine, directory, step=step, client_state=state, keep_last=keep_last,
                               run_id=run_id, parameters=parameters)

    def load_checkpoint(self, directory: str | os.PathLike, tag: str | None = None) -> dict:
        """Restore a checkpoint saved by :meth:`save_checkpoint`; all ranks call it.

        ``tag`` None = the newest verified one (:func:`xdist.checkpoint.choose`: ``latest`` if it verifies,
        else a fallback, with warnings naming what was skipped). Returns the ``client_state`` saved with it.
        DeepSpeed unpickles its checkpoint files (``torch.load(weights_only=False)``): load only checkpoints
        this project wrote.
        """
        directory = Path(directory)
        if tag is None:
            tag = checkpoint.choose(directory)
            if tag is None:
                raise FileNotFoundError(f"no verified checkpoint in {str(directory)!r}")
        if not checkpoint.is_step_tag(tag):
            raise ValueError(f"checkpoint tag {tag!r} is not a plain checkpoint name of the form step<N>")
        if not (directory / tag).is_dir():
            found = sorted(p.name for p in directory.iterdir() if p.is_dir()) if directory.is_dir() else []
            raise FileNotFoundError(f"checkpoint tag {tag!r} not found in {str(directory)!r} (found {found})")
        load_path, state = self._engine.load_checkpoint(str(directory), tag=tag)
        if load_path is None:
            raise RuntimeError(f"DeepSpeed could not load checkpoint {tag!r} from {str(directory)!r}")
        if _CLIENT_STATE_KEY not in (state or {}):
            raise RuntimeError(
                f"checkpoint {tag!r} in {str(directory)!r} was not written by xdist (no {_CLIENT_STATE_KEY!r}); "
                "its weights and optimizer state are loaded but there is no training-loop state to resume"
            )
        self._grad_norm = None
        self._lr = float(self._engine.get_lr()[0])
        return dict(state[_CLIENT_STATE_KEY])

    # ------------------------------------------------------------------ export and teachers
    def export_pretrained(self, out_dir: str | os.PathLike, tokenizer: Any = None) -> None:
        """Hugging Face checkpoint of the current weights (see :func:`xdist.models.export_pretrained`)."""
        models.export_pretrained(self, out_dir, tokenizer)

    def frozen_copy(self) -> nn.Module:
        """Full frozen eval-mode copy of the current weights on every rank (see :func:`xdist.models.frozen_copy`)."""
        return models.frozen_copy(self, device=self.dist.device)

    def copy_weights_into(self, teacher: nn.Module) -> None:
        """Refresh a teacher made by :meth:`frozen_copy` in place (collective under ZeRO-3)."""
        models.copy_weights_into(self, teacher)

    def partitioned_teacher(self, checkpoint: str | os.PathLike | None = None) -> Any:
        """A frozen teacher ZeRO-3-partitioned like the student, in its own DeepSpeed inference engine.

        Built under ``deepspeed.zero.Init`` (through transformers' ``HfDeepSpeedConfig`` path, so no rank
        ever holds the whole model) from the student's architecture, or loaded from ``checkpoint`` (a
        ``save_pretrained`` directory), then wrapped by ``deepspeed.initialize`` with
        :func:`teacher_inference_config` (no optimizer: DeepSpeed installs only its parameter-fetching
        hooks). Without ``checkpoint`` it starts as a copy of the student's current weights
        (:meth:`refresh_partitioned_teacher`). Returns the ``DeepSpeedEngine``: run ``.module`` (eval mode,
        ``requires_grad`` off) for inference, and keep the engine alive as long as the module is used,
        because destroying it removes the module's hooks. Collective: all ranks call it, and every forward
        of the teacher is collective too.
        """
        import deepspeed
        from transformers import AutoModelForQuestionAnswering

        config = teacher_inference_config(self.config)
        devices = [self.dist.device.index or 0] if self.dist.device.type == "cuda" else []
        # Random init (overwritten right after) must not advance the training's RNG: dropout masks stay those
        # of a run with a replicated teacher, and a resumed run (which reloads the teacher) stays exact.
        with torch.random.fork_rng(devices=devices), models._zero3_construction(config):
            if checkpoint is None:
                teacher = AutoModelForQuestionAnswering.from_config(copy.deepcopy(self.module.config))
            else:
                teacher = AutoModelForQuestionAnswering.from_pretrained(checkpoint, local_files_only=True)
            teacher.requires_grad_(False)
            ds_teacher, _, _, _ = deepspeed.initialize(model=teacher, config=config, dist_init_required=False)
        ds_teacher.module.eval()
        if checkpoint is None:
            self.refresh_partitioned_teacher(ds_teacher.module)
        return ds_teacher

    def refresh_partitioned_teacher(self, teacher: nn.Module) -> str:
        """Copy the student's weights into a :meth:`partitioned_teacher`, partition by partition (collective).

        Returns the path taken (see :func:`xdist.models.copy_partitions_into`)."""
        return models.copy_partitions_into(self, teacher)
