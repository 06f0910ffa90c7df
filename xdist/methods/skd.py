"""Self-knowledge distillation for G-XLT QA (Carrino et al.): generations, mAP@k-weighted span KD.

Loss per micro-batch (``kernels.span_kd``; Triton on CUDA, the PyTorch reference elsewhere)::

    L = alpha_ce * (CE(s_start, a_start) + CE(s_end, a_end)) / 2
      + alpha_kl * c * T^2 * (KL_start + KL_end) / 2,   KL_h = mean_b KL(softmax(t_h/T) || softmax(s_h/T))

over all sequence positions (as the authors' code), with ``c = 1`` or the teacher's mAP@k coefficient
(``method.coefficient``), computed per micro-batch from the teacher's logits and the gold positions,
with no gradient.

Generations (``method.teacher: self``): epoch 0's teacher is the generation-0 model
(``method.teacher_checkpoint``, default the student's initial weights = the stage-1 model); at the start
of every later epoch the teacher becomes a frozen copy of the student at that moment (eval mode, no
gradient, no optimizer state; gathered from ZeRO-3 partitions). The student, its optimizer and the LR
schedule carry on across generations. ``teacher: fixed`` keeps generation 0 for the whole run.

Each generation's teacher is saved under ``<output_dir>/teachers/gen<g>`` (safetensors) when it is
created, so that ``--resume`` in the middle of an epoch restores the very teacher that epoch used.

Where the teacher lives (``method.teacher_partition``): ``replicated`` keeps a full frozen copy on every
rank (:func:`xdist.weights.frozen_copy`). ``zero3`` keeps it ZeRO-3-partitioned like the student, in its
own DeepSpeed inference engine (:meth:`xdist.engine.Engine.partitioned_teacher`): each rank holds 1/world
of it, a refresh copies each rank's student partitions into the teacher's, a snapshot is gathered one
submodule at a time and written by rank 0, and loaded back partitioned. Its forward passes are collective:
the training loop runs one per micro-batch on every rank, and the cache builder keeps the ranks in step.
"""

from __future__ import annotations

import logging
import shutil
from pathlib import Path
from typing import Any

import torch

from kernels.span_kd import span_kd_loss
from xdist.data.shards import Manifest
from xdist.distributed import barrier
from xdist.methods.base import MethodContext, StepOutput
from xdist.methods.teacher_cache import TeacherCache, build_teacher_cache
from xdist.weights import export_pretrained, partition_footprint

log = logging.getLogger("xdist.skd")


class SelfDistillation:
    """CE + (mAP@k-weighted) KD from a frozen teacher that is refreshed every epoch."""

    name = "skd"
    tasks = ("qa",)  # span KD over start/end logits

    def __init__(self, context: MethodContext):
        self.cfg = context.cfg.method
        self.model_cfg = context.cfg.model
        self.task = context.task
        self.dist = context.dist
        self.teachers_dir = Path(context.output_dir) / "teachers"
        self.manifest_for_epoch = context.manifest_for_epoch
        self.cache_batch_size = context.cfg.eval.batch_size  # inference batches, as large as evaluation's
        self.teacher: torch.nn.Module | None = None
        # teacher_partition zero3: the DeepSpeed engine around self.teacher. Kept alive on purpose:
        # destroying it would remove the hooks that gather the teacher's partitions in forward.
        self.teacher_engine: Any = None
        self.generation: int | None = None
        self.cache: TeacherCache | None = None
        self.cache_key: tuple | None = None
        self.resumed = False

    # ---- generations ----------------------------------------------------------------------------

    def generation_of(self, epoch: int) -> int:
        return epoch if self.cfg.teacher == "self" else 0

    def on_epoch_start(self, epoch: int, engine: Any) -> None:
        generation = self.generation_of(epoch)
        if generation != self.generation:
            self._set_teacher(generation, engine)
        if self.cfg.teacher_cache != "online":
            self._ensure_cache(epoch)

    @property
    def partitioned(self) -> bool:
        return self.cfg.teacher_partition == "zero3"

    def _set_teacher(self, generation: int, engine: Any) -> None:
        snapshot = self.teachers_dir / f"gen{generation}"
        resuming, self.resumed = self.resumed, False
        from_checkpoint = generation == 0 and self.cfg.teacher_checkpoint
        if resuming and (snapshot / "COMPLETE").is_file():
            # Resuming inside this generation: the teacher is the snapshot taken when it began.
            self.teacher = self._load_snapshot(snapshot, engine)
            source = f"snapshot {snapshot}"
        elif resuming and not from_checkpoint:
            raise FileNotFoundError(
                f"resuming in generation {generation} needs its teacher snapshot {snapshot} (with COMPLETE), "
                "written when the generation began; it is missing, so the teacher cannot be restored"
            )
        else:
            if from_checkpoint:
                self.teacher = self._load_snapshot(Path(self.cfg.teacher_checkpoint), engine)
                source = f"checkpoint {self.cfg.teacher_checkpoint}"
            elif self.teacher is None:
                self.teacher = self._new_copy(engine)
                source = "a frozen copy of the student"
            elif self.partitioned:  # refreshed in place: no re-allocation per generation
                source = f"the student (refreshed in place, {engine.refresh_partitioned_teacher(self.teacher)})"
            else:
                engine.copy_weights_into(self.teacher)
                source = "the student (refreshed in place)"
            self._save_snapshot(snapshot)
        self.teacher.eval().requires_grad_(False)
        self.generation = generation
        self.cache, self.cache_key = None, None
        if self.partitioned:
            footprint = partition_footprint(self.teacher)
            source += (f"; ZeRO-3-partitioned: {footprint.local:,} of {footprint.full:,} parameter elements on "
                       f"this rank (+{footprint.persistent:,} kept whole: persistent)")
        log.info("generation %d: teacher = %s", generation, source)

    def _new_copy(self, engine: Any) -> torch.nn.Module:
        if not self.partitioned:
            return engine.frozen_copy()
        self.teacher_engine = engine.partitioned_teacher()
        return self.teacher_engine.module

    def _load_snapshot(self, path: Path, engine: Any) -> torch.nn.Module:
        if not (path / "config.json").is_file():
            raise FileNotFoundError(f"teacher {path}: expected a save_pretrained directory with config.json")
        if self.partitioned:  # loaded straight into partitions (zero.Init): no rank holds the whole model
            self.teacher_engine = engine.partitioned_teacher(checkpoint=path)
            return self.teacher_engine.module
        return self.task.build_model(self.model_cfg, checkpoint=path).to(device=self.dist.device)

    def _save_snapshot(self, snapshot: Path) -> None:
        if self.dist.is_main and snapshot.exists():
            shutil.rmtree(snapshot)  # a stale generation of an earlier run (and its caches)
        # Collective, written by rank 0; a partitioned teacher is gathered one submodule at a time.
        export_pretrained(self.teacher, snapshot)
        if self.dist.is_main:
            (snapshot / "COMPLETE").write_text("ok\n")
        barrier()

    # ---- teacher-logit cache --------------------------------------------------------------------

    def _ensure_cache(self, epoch: int) -> None:
        manifest: Manifest = self.manifest_for_epoch(epoch)
        key = (self.generation, manifest.directory, manifest.config_fingerprint)
        if self.cache is not None and self.cache_key == key:
            return
        cfg = self.cfg
        name = f"cache-{cfg.teacher_cache}-k{cfg.cache_topk}-T{cfg.temperature:g}-{manifest.config_fingerprint[:12]}"
        if manifest.directory.name.startswith("epoch-"):
            name += f"-{manifest.directory.name}"
        self.cache = build_teacher_cache(
            self.task, self.teacher, manifest, self.teachers_dir / f"gen{self.generation}" / name, self.dist,
            mode=cfg.teacher_cache, topk=cfg.cache_topk, temperature=cfg.temperature,
            batch_size=self.cache_batch_size,
        )
        self.cache_key = key

    # ---- the loss -------------------------------------------------------------------------------

    @torch.no_grad()
    def teacher_logits(self, batch: dict[str, Any]) -> torch.Tensor:
        """Teacher start/end logits [B, 2, L] for ``batch``: from the cache, or a forward pass."""
        if self.cache is not None:
            return self.cache.logits(batch["keys"], self.dist.device)
        return self.task.logits(self.teacher, batch, self.dist.device)

    def step(self, engine: Any, batch: dict[str, Any]) -> StepOutput:
        if self.teacher is None:
            raise RuntimeError("SelfDistillation.step before on_epoch_start: no teacher yet")
        student = self.task.logits(engine.forward, batch)  # [B, 2, L]
        teacher = self.teacher_logits(batch).to(student.dtype)
        gold = torch.stack([batch["start_positions"], batch["end_positions"]], dim=1).to(student.device)
        cfg = self.cfg
        result = span_kd_loss(
            student, teacher, gold, temperature=cfg.temperature, k=cfg.k, window=cfg.window,
            direction=cfg.direction, alpha_ce=cfg.alpha_ce, alpha_kl=cfg.alpha_kl, coef=cfg.coefficient,
            scope=cfg.coefficient_scope, t2_scaling=cfg.t2_scaling,
        )
        values = {
            "loss/kd": result.kl_rows.float().mean(),
            "kd/weight": result.coef.float(),  # what multiplied the KD term
        }
        if result.coef_rows is not None:  # the teacher's mean rank score (the paper's diagnostic)
            values["kd/coefficient"] = result.coef_rows.float().mean()
        if result.ce_rows is not None:
            values["loss/ce"] = result.ce_rows.float().mean()
        # Left on the device: the loop reads the logs back once per optimizer step, not per micro-batch.
        return StepOutput(loss=result.loss, logs={**values, "kd/generation": float(self.generation)})

    # ---- checkpoint state -----------------------------------------------------------------------

    def state_dict(self) -> dict[str, Any]:
        return {"generation": self.generation}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        # The teacher itself is restored from its snapshot at the next on_epoch_start.
        self.resumed = True
