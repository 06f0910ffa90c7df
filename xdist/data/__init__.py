"""The task-agnostic data layer: sources (errors, skip reports, paths), the tokenizer, shards and their
manifest, the per-epoch shard-set index, the training stream and ``xdist prepare``.

What a source's records mean and how they become features is a task's business (:mod:`xdist.tasks`).
Importing this package is cheap: ``transformers`` is only imported when a tokenizer is loaded.
"""

from xdist.data.sources import DataError, SkipReport, resolve_path
from xdist.data.tokenizer import load_tokenizer

__all__ = ["DataError", "SkipReport", "load_tokenizer", "resolve_path"]
