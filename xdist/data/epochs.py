"""The index of per-epoch shard sets (``epochs.json``).

With cross-lingual sampling re-drawn every epoch (``per_epoch: true``), ``xdist prepare`` writes one
complete shard set per epoch (``epoch-000/``, ``epoch-001/``, ...) and this index beside them; the
training stream reads set ``epoch mod len(sets)`` in epoch ``epoch``.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from xdist.data.shards import ShardError, json_field, read_json
from xdist.fileio import write_text_atomic

EPOCH_INDEX_NAME = "epochs.json"
"""Top-level index of a shard directory holding one shard set per epoch (``per_epoch`` sampling)."""

EPOCH_INDEX_KIND = "xdist-epoch-shard-sets"
EPOCH_INDEX_VERSION = 1


def epoch_set_name(epoch: int) -> str:
    """Sub-directory of epoch ``epoch``'s shard set: ``epoch-000``, ``epoch-001``, ..."""
    return f"epoch-{epoch:03d}"


@dataclass
class EpochIndex:
    """Contents of ``epochs.json``: the per-epoch shard sets of one ``xdist prepare`` run."""

    sets: list[str]
    """Sub-directories, one per epoch, in epoch order (each a complete shard set with its manifest)."""
    config_fingerprint: str
    """Fingerprint of the prepare config (with the number of sets) that wrote them."""
    tokenizer_fingerprint: str
    config: dict[str, Any]
    samples: list[int]
    """Features per set."""
    sampling: list[dict[str, Any]]
    """Per set: the sampling report of every sampled source (by source name)."""
    kind: str = EPOCH_INDEX_KIND
    format_version: int = EPOCH_INDEX_VERSION

    def set_dir(self, root: str | os.PathLike, epoch: int) -> Path:
        """The shard-set directory epoch ``epoch`` reads: set ``epoch mod len(sets)``."""
        return Path(root) / self.sets[epoch % len(self.sets)]


def write_epoch_index(root: str | os.PathLike, index: EpochIndex) -> Path:
    """Write ``<root>/epochs.json`` atomically (temporary file, then rename); return its path."""
    path = Path(root) / EPOCH_INDEX_NAME
    write_text_atomic(path, json.dumps(asdict(index), indent=2, sort_keys=True, ensure_ascii=False) + "\n")
    return path


def load_epoch_index(root: str | os.PathLike) -> EpochIndex | None:
    """``<root>/epochs.json``, checked; None when the directory has no such index (a single shard set).

    Raises :class:`xdist.data.shards.ShardError` naming the file and the field when it is malformed.
    """
    path = Path(root) / EPOCH_INDEX_NAME
    if not path.is_file():
        return None
    data = read_json(path)
    if not isinstance(data, dict) or data.get("kind") != EPOCH_INDEX_KIND:
        raise ShardError(f"{path}: not an index of per-epoch shard sets (expected kind {EPOCH_INDEX_KIND!r})")
    if data.get("format_version") != EPOCH_INDEX_VERSION:
        raise ShardError(
            f"{path}: format version {data.get('format_version')!r}, this xdist reads {EPOCH_INDEX_VERSION}; "
            "re-run `xdist prepare --overwrite`"
        )
    expected = {"sets": list, "config_fingerprint": str, "tokenizer_fingerprint": str, "config": dict,
                "samples": list, "sampling": list}
    index = EpochIndex(**{name: json_field(str(path), data, name, kind) for name, kind in expected.items()})
    if not index.sets:
        raise ShardError(f"{path}: lists no shard sets")
    if index.sets != [epoch_set_name(e) for e in range(len(index.sets))]:
        raise ShardError(f"{path}: sets {index.sets} are not epoch-000, epoch-001, ... in order")
    if len(index.samples) != len(index.sets) or len(index.sampling) != len(index.sets):
        raise ShardError(f"{path}: 'samples' and 'sampling' must have one entry per set ({len(index.sets)})")
    return index
