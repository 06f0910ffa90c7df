"""Training checkpoints that commit atomically and are verified before a resume trusts them.

DeepSpeed's ``save_checkpoint`` writes every rank's files straight into ``<dir>/<tag>/`` and rank 0
writes the ``latest`` file in place before the other ranks have finished: a job killed in between
leaves ``latest`` naming a partial checkpoint, and a full disk leaves half-written files behind. Here
a checkpoint is committed in five steps, each safe to interrupt:

1. every rank writes its DeepSpeed files into a hidden temporary tag ``.partial-step<N>-<run>`` (never
   a resume candidate); a free-space check first refuses a save that cannot fit (:class:`DiskFullError`,
   partial files removed, the previous checkpoint untouched);
2. every rank fsyncs the files, then all ranks pass a barrier;
3. the ranks hash the files (sha256, the files dealt round-robin over ranks) and rank 0 writes
   ``MANIFEST`` (files, sizes, checksums, step, world size, run id) into the temporary directory;
4. rank 0 renames the directory to ``step<N>`` (atomic) and fsyncs the parent;
5. rank 0 replaces the tag file ``latest`` atomically (write, fsync, rename), then prunes.

:func:`find_resumable` trusts nothing it cannot verify: ``latest`` must name a plain ``step<N>`` (a
path such as ``../x`` is refused), and a candidate's every file must match its manifest. It falls back to
the newest verified checkpoint and says which ones it skipped and why. Pruning keeps the newest
verified checkpoint and counts only the current run's (``run_id``), so a fresh run in a reused directory
never counts, or resumes after a restart from, an older run's checkpoints as its own.
"""

from __future__ import annotations

import errno
import json
import logging
import os
import re
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from xdist import distributed
from xdist.errors import UserError
from xdist.fileio import file_sha256, fsync_dir, write_text_atomic

log = logging.getLogger(__name__)

CLIENT_KEY = "xdist_client_state"
"""Key of the training loop's state in DeepSpeed's client state (kept apart from DeepSpeed's own keys)."""
MANIFEST_NAME = "MANIFEST"
TAG_FILE = "latest"
PARTIAL_PREFIX = ".partial-"
_TRASH_PREFIX = ".trash-"
_STEP_TAG = re.compile(r"^step(\d+)$")
_FORMAT = 1
# A checkpoint of N parameters holds fp32 weights (or bf16 weights plus an fp32 master copy) and Adam's
# two fp32 moments: at most 16 bytes per parameter, plus a little for the client state.
_BYTES_PER_PARAM = 16
_MARGIN = 1 << 20


class CheckpointError(UserError, RuntimeError):
    """A checkpoint could not be written or no checkpoint can be resumed; the message says what to do."""


class DiskFullError(CheckpointError):
    """Not enough free space for a checkpoint (or an export); partial files were removed."""


@dataclass(frozen=True)
class Resumable:
    """What :func:`find_resumable` chose."""

    tag: str | None
    """``step<N>`` of the newest verified checkpoint, or None."""
    skipped: tuple[str, ...]
    """One line per checkpoint that was not used, saying why."""


def is_step_tag(name: str) -> bool:
    """True for a plain checkpoint name ``step<N>`` (no path separators, no dots)."""
    return _STEP_TAG.fullmatch(name) is not None


def fsync_tree(root: Path) -> None:
    for dirpath, _, filenames in os.walk(root):
        for name in filenames:
            fd = os.open(os.path.join(dirpath, name), os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
        fsync_dir(Path(dirpath))


def _files(root: Path) -> list[str]:
    """Relative paths of every file below ``root``, sorted (the manifest itself excluded)."""
    found = []
    for dirpath, _, filenames in os.walk(root):
        for name in filenames:
            rel = os.path.relpath(os.path.join(dirpath, name), root)
            if rel != MANIFEST_NAME:
                found.append(rel)
    return sorted(found)


def replace_dir(tmp: Path, final: Path) -> None:
    """Rename directory ``tmp`` to ``final`` atomically; an existing ``final`` is swapped out, then deleted."""
    trash = None
    if final.exists():
        trash = final.with_name(f"{_TRASH_PREFIX}{final.name}-{os.getpid()}")
        os.rename(final, trash)
    os.rename(tmp, final)
    fsync_dir(final.parent)
    if trash is not None:
        shutil.rmtree(trash, ignore_errors=True)


def is_disk_full(error: BaseException) -> bool:
    """Whether ``error`` (from torch.save, safetensors, plain IO) means the file system ran out of space."""
    if isinstance(error, OSError) and error.errno in (errno.ENOSPC, errno.EDQUOT):
        return True
    text = str(error)
    # torch.save's C++ writer reports ENOSPC only as a failed stream ("basic_ios::clear: iostream error",
    # "unexpected pos N vs M"); safetensors as "No space left on device".
    return any(s in text for s in ("No space left", "iostream error", "unexpected pos", "Disk quota"))


def disk_full_message(what: str, path: Path, needed: int, *, kept: str | None) -> str:
    """One paragraph: what did not fit where, bytes needed and free, what was removed and what is intact."""
    free = shutil.disk_usage(path if path.exists() else path.parent).free
    keep = f"; the previous {kept} is intact" if kept else ""
    return (
        f"{what}: not enough space in {path}: needs about {needed / 1e6:,.1f} MB, {free / 1e6:,.1f} MB free. "
        f"Removed the partial files{keep}. Free some space (or point train.output_dir elsewhere) and run "
        "again with --resume"
    )


# --------------------------------------------------------------------------------------------------
# Reading and verifying
# --------------------------------------------------------------------------------------------------


def read_manifest(path: Path) -> dict[str, Any]:
    data = json.loads((path / MANIFEST_NAME).read_text(encoding="utf-8"))
    if not isinstance(data, dict) or not isinstance(data.get("files"), dict):
        raise ValueError("manifest has no 'files' object")
    return data


def verify(path: Path) -> str | None:
    """None if the checkpoint at ``path`` matches its manifest, else why not (one line)."""
    if not (path / MANIFEST_NAME).is_file():
        return "no MANIFEST (an interrupted save, or written by another program)"
    try:
        manifest = read_manifest(path)
    except (ValueError, OSError) as err:
        return f"unreadable MANIFEST ({err})"
    files = manifest["files"]
    for rel, entry in sorted(files.items()):
        file = path / rel
        if not file.is_file():
            return f"{rel} is missing"
        size = file.stat().st_size
        if size != entry.get("bytes"):
            return f"{rel} is {size} bytes, the manifest says {entry.get('bytes')}"
        if file_sha256(file) != entry.get("sha256"):
            return f"{rel}: sha256 differs from the manifest (corrupt)"
    extra = sorted(set(_files(path)) - set(files))
    if extra:
        return f"{extra[0]} is not in the manifest"
    return None


def _candidates(directory: Path) -> list[tuple[float, int, str, dict | None]]:
    """(commit time, step, tag, manifest or None) of every ``step<N>`` directory, newest commit first."""
    found = []
    for entry in directory.iterdir() if directory.is_dir() else []:
        match = _STEP_TAG.fullmatch(entry.name)
        if not (match and entry.is_dir()):
            continue
        try:
            manifest = read_manifest(entry)
        except (ValueError, OSError):
            manifest = None
        committed = float(manifest.get("committed_at", 0.0)) if manifest else 0.0
        found.append((committed, int(match.group(1)), entry.name, manifest))
    found.sort(reverse=True)
    return found


def find_resumable(directory: str | os.PathLike, *, run_id: str | None = None) -> Resumable:
    """The newest verified checkpoint in ``directory`` (the tag file's first, if it verifies).

    ``run_id`` restricts the choice to checkpoints of that run (an automatic restart of a fresh run).
    Every checkpoint looked at and not chosen gets a line in ``skipped``.
    """
    directory = Path(directory)
    skipped: list[str] = []
    order = _candidates(directory)
    latest = directory / TAG_FILE
    if latest.is_file():
        named = latest.read_text(encoding="utf-8", errors="replace").strip()
        if not is_step_tag(named):
            skipped.append(f"{latest} names {named!r}, not a checkpoint name of the form step<N>: ignored")
        else:
            order.sort(key=lambda c: c[2] != named)  # stable: the named tag first, then newest commit first
            if named not in {c[2] for c in order}:
                skipped.append(f"{latest} names {named}, which does not exist")
    for _, _, tag, manifest in order:
        if run_id is not None and (manifest or {}).get("run_id") != run_id:
            continue
        problem = verify(directory / tag)
        if problem is None:
            return Resumable(tag, tuple(skipped))
        skipped.append(f"{tag}: {problem}")
    return Resumable(None, tuple(skipped))


# --------------------------------------------------------------------------------------------------
# Writing
# --------------------------------------------------------------------------------------------------


def needed_bytes(directory: Path, parameters: int) -> int:
    """Space a new checkpoint needs: the size of the newest committed one, else an estimate from ``parameters``."""
    for _, _, _, manifest in _candidates(directory):
        if manifest:
            return sum(int(e.get("bytes", 0)) for e in manifest["files"].values()) + _MARGIN
    return parameters * _BYTES_PER_PARAM + _MARGIN


def remove_partials(directory: str | os.PathLike) -> list[str]:
    """Delete leftovers of interrupted saves (``.partial-*``, ``.trash-*``); returns their names (rank 0 only)."""
    directory = Path(directory)
    removed = []
    for entry in directory.iterdir() if directory.is_dir() else []:
        if entry.name.startswith((PARTIAL_PREFIX, _TRASH_PREFIX)):
            shutil.rmtree(entry, ignore_errors=True) if entry.is_dir() else entry.unlink(missing_ok=True)
            removed.append(entry.name)
    return removed


def prune(directory: str | os.PathLike, *, keep_last: int, keep: str, run_id: str | None) -> list[str]:
    """Delete this run's ``step<N>`` checkpoints beyond the ``keep_last`` newest; never ``keep`` (the one just
    committed, the newest verified) nor another run's. Returns the deleted tags."""
    if keep_last < 1:
        raise ValueError(f"keep_last must be >= 1, got {keep_last}")
    directory = Path(directory)
    mine = [
        tag for _, _, tag, manifest in _candidates(directory)
        if tag != keep and manifest is not None and manifest.get("run_id") == run_id
    ]
    deleted = mine[keep_last - 1 :]
    for tag in deleted:
        shutil.rmtree(directory / tag)
    return deleted


def save(
    ds_engine: Any,
    directory: str | os.PathLike,
    *,
    step: int,
    client_state: dict,
    keep_last: int | None,
    run_id: str,
    parameters: int,
) -> str:
    """Commit a DeepSpeed checkpoint of ``ds_engine`` as ``<directory>/step<step>`` (all ranks call it).

    ``parameters`` (the model's full parameter count) sizes the free-space check of a first checkpoint.
    Raises :class:`DiskFullError` (on every rank, when the check fails; on the failing rank, when the disk
    fills up mid-write) after removing the partial files. Returns the tag.
    """
    directory = Path(directory)
    rank, world = _rank_world()
    tag = f"step{step}"
    tmp_tag = f"{PARTIAL_PREFIX}{tag}-{run_id[:12]}"
    tmp = directory / tmp_tag
    kept = find_latest_name(directory)
    kept = f"checkpoint {kept}" if kept else None

    verdict = None
    if rank == 0:
        directory.mkdir(parents=True, exist_ok=True)
        shutil.rmtree(tmp, ignore_errors=True)  # a leftover of the same save, interrupted
        need = needed_bytes(directory, parameters)
        free = shutil.disk_usage(directory).free
        if free < need:
            verdict = disk_full_message(f"checkpoint {tag}", directory, need, kept=kept)
    verdict = distributed.broadcast_object(verdict)
    if verdict is not None:
        raise DiskFullError(verdict)

    try:
        ds_engine.save_checkpoint(str(directory), tag=tmp_tag, client_state=client_state, save_latest=False)
        fsync_tree(tmp)
    except Exception as err:
        if not is_disk_full(err):
            raise
        shutil.rmtree(tmp, ignore_errors=True)
        raise DiskFullError(
            disk_full_message(f"checkpoint {tag} (rank {rank})", directory, needed_bytes(directory, parameters),
                              kept=kept)
        ) from None
    distributed.barrier()  # every rank's files are written and on disk

    files = _files(tmp)
    mine = {rel: {"bytes": (tmp / rel).stat().st_size, "sha256": file_sha256(tmp / rel)} for rel in files[rank::world]}
    gathered = distributed.all_gather_object(mine)
    if rank == 0:
        entries = {rel: entry for part in gathered for rel, entry in part.items()}
        commit(tmp, directory, step=step, world_size=world, run_id=run_id, entries=entries, keep_last=keep_last)
    distributed.barrier()
    return tag


def commit(
    tmp: Path, directory: Path, *, step: int, world_size: int, run_id: str, entries: dict[str, dict],
    keep_last: int | None,
) -> str:
    """Steps 3-5 of the protocol (rank 0): manifest into ``tmp``, rename to ``step<step>``, tag file, prune.

    ``entries`` maps every file below ``tmp`` to its ``{"bytes", "sha256"}``. Returns the tag."""
    tag = f"step{step}"
    manifest = {
        "format": _FORMAT, "tag": tag, "step": step, "world_size": world_size, "run_id": run_id,
        "committed_at": time.time(), "files": dict(sorted(entries.items())),
    }
    write_text_atomic(tmp / MANIFEST_NAME, json.dumps(manifest, indent=1) + "\n")
    replace_dir(tmp, directory / tag)
    write_text_atomic(directory / TAG_FILE, tag)
    if keep_last is not None:
        deleted = prune(directory, keep_last=keep_last, keep=tag, run_id=run_id)
        if deleted:
            log.debug("pruned checkpoints %s", deleted)
    return tag


def find_latest_name(directory: Path) -> str | None:
    """The plain tag the tag file names, if any (for messages; not verified)."""
    latest = directory / TAG_FILE
    if latest.is_file():
        named = latest.read_text(encoding="utf-8", errors="replace").strip()
        if is_step_tag(named) and (directory / named).is_dir():
            return named
    return None


def choose(directory: str | os.PathLike, *, run_id: str | None = None) -> str | None:
    """Rank 0 finds the checkpoint to resume (:func:`find_resumable`), logs what it skipped, and every rank
    gets the same answer (collective)."""
    chosen = None
    if _rank_world()[0] == 0:
        found = find_resumable(directory, run_id=run_id)
        for line in found.skipped:
            log.warning("resume: skipped checkpoint %s", line)
        chosen = found.tag
    return distributed.broadcast_object(chosen)


def _rank_world() -> tuple[int, int]:
    if not distributed.is_initialized():
        return 0, 1
    import torch.distributed as torch_dist

    return torch_dist.get_rank(), torch_dist.get_world_size()
