"""The output directory of a training run: never silently overwritten.

``xdist train`` into a directory that already holds a run is refused unless the user says what to do
with it: ``--resume`` continues it, ``--overwrite`` replaces it. Light on purpose (no torch import): the
CLI checks before it starts any rank, and every rank checks again in :func:`xdist.train.train`.
"""

from __future__ import annotations

import logging
import shutil
from pathlib import Path

from xdist.errors import ConfigValueError, MissingPathError, RunExistsError

log = logging.getLogger("xdist.train")

RUN_FILES = ("train_log.jsonl", "config.yaml", "ds_config.json", "git_commit.txt", "checkpoints", "tensorboard",
             "export", "eval", "teachers")
"""What a training run writes into its output directory (shards may live there too and are not part of it)."""


def claim_output_dir(out: Path, *, resume: bool, overwrite: bool, rank: int) -> None:
    """Refuse to train into a directory holding another run, unless resuming it or told to overwrite it.

    Called on every rank before the process group exists: ``init_process_group`` waits for all ranks,
    so no rank writes before every rank has looked. With ``overwrite`` rank 0 deletes the old run's
    files (only those of :data:`RUN_FILES`) before it joins.
    """
    found = [name for name in RUN_FILES if (out / name).exists()]
    if resume and overwrite:
        raise ConfigValueError("--resume and --overwrite contradict each other: give one of them")
    if resume:
        if not (out / "checkpoints" / "latest").is_file():
            raise MissingPathError(
                f"--resume: {str(out / 'checkpoints')!r} holds no checkpoint to resume from (train.output_dir "
                f"{str(out)!r}); check train.output_dir, or drop --resume to start a new run"
            )
        return
    if not found:
        return
    if not overwrite:
        raise RunExistsError(
            f"train.output_dir {str(out)!r} already holds a run ({', '.join(found)}); nothing was changed. "
            "Continue it with --resume, replace it with --overwrite, or set another train.output_dir "
            "(e.g. --set train.output_dir=runs/new)"
        )
    if rank == 0:
        for name in found:
            path = out / name
            shutil.rmtree(path) if path.is_dir() else path.unlink()
        log.info("--overwrite: removed the previous run's %s from %s", ", ".join(found), out)
