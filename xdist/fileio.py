"""Durable file writes and file checksums, shared by shard manifests, epoch indexes, checkpoints and logs.

Written by hand because the standard library has no atomic-replace-with-fsync helper: a reader (a resumed
run, a second rank, a crashed job's successor) must see either the old file or the complete new one.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

_CHUNK = 1 << 22  # 4 MiB reads: large enough that hashing a shard or checkpoint is disk-bound, not call-bound


def fsync_dir(path: Path) -> None:
    """Flush a directory entry (a rename or a new file inside it) to disk."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def file_sha256(path: Path) -> str:
    """Hex sha256 of a file's bytes, read in chunks (shards and checkpoints can be gigabytes)."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(_CHUNK), b""):
            digest.update(chunk)
    return digest.hexdigest()


def write_text_atomic(path: Path, text: str) -> None:
    """Write ``text`` via a temporary file, fsync, rename over ``path`` and fsync the directory, so readers
    never see a half-written manifest, index, tag or log."""
    tmp = path.with_name(f".{path.name}.tmp")
    with open(tmp, "w", encoding="utf-8") as handle:
        handle.write(text)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(tmp, path)
    fsync_dir(path.parent)
