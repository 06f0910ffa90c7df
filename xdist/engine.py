"""The DeepSpeed engine: step, checkpoints, export and teacher snapshots.

Config
    The resolved DeepSpeed config comes from :func:`xdist.deepspeed_config.resolve_deepspeed_config`.

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
import os
from pathlib import Path
from typing import Any

import torch
from torch import nn

from xdist import checkpoint as checkpoints
from xdist import models, weights
from xdist.config import TrainConfig
from xdist.deepspeed_config import linear_schedule, resolve_deepspeed_config, teacher_inference_config, warmup_steps
from xdist.distributed import DistEnv

_CLIENT_STATE_KEY = checkpoints.CLIENT_KEY


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
        :meth:`xdist.tasks.base.Task.build_model` for ZeRO-3); by default it is resolved from ``train_cfg``.
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
        return checkpoints.save(self._engine, directory, step=step, client_state=state, keep_last=keep_last,
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
            tag = checkpoints.choose(directory)
            if tag is None:
                raise FileNotFoundError(f"no verified checkpoint in {str(directory)!r}")
        if not checkpoints.is_step_tag(tag):
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
        """Hugging Face checkpoint of the current weights (see :func:`xdist.weights.export_pretrained`)."""
        weights.export_pretrained(self, out_dir, tokenizer)

    def frozen_copy(self) -> nn.Module:
        """Full frozen eval-mode copy of the current weights on every rank (see :func:`xdist.weights.frozen_copy`)."""
        return weights.frozen_copy(self, device=self.dist.device)

    def copy_weights_into(self, teacher: nn.Module) -> None:
        """Refresh a teacher made by :meth:`frozen_copy` in place (collective under ZeRO-3)."""
        weights.copy_weights_into(self, teacher)

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

        # The student's own class (the task's AutoModelFor* resolved it): the teacher has the same head.
        model_class = type(self.module)
        config = teacher_inference_config(self.config)
        devices = [self.dist.device.index or 0] if self.dist.device.type == "cuda" else []
        # Random init (overwritten right after) must not advance the training's RNG: dropout masks stay those
        # of a run with a replicated teacher, and a resumed run (which reloads the teacher) stays exact.
        with torch.random.fork_rng(devices=devices), models.zero3_construction(config):
            if checkpoint is None:
                teacher = model_class._from_config(copy.deepcopy(self.module.config))
            else:
                teacher = model_class.from_pretrained(checkpoint, local_files_only=True)
            teacher.requires_grad_(False)
            ds_teacher, _, _, _ = deepspeed.initialize(model=teacher, config=config, dist_init_required=False)
        ds_teacher.module.eval()
        if checkpoint is None:
            self.refresh_partitioned_teacher(ds_teacher.module)
        return ds_teacher

    def refresh_partitioned_teacher(self, teacher: nn.Module) -> str:
        """Copy the student's weights into a :meth:`partitioned_teacher`, partition by partition (collective).

        Returns the path taken (see :func:`xdist.weights.copy_partitions_into`)."""
        return weights.copy_partitions_into(self, teacher)
