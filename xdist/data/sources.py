"""Task-agnostic handling of raw sources: the data error type, the report of skipped records, and paths.

Every task's readers share these: a :class:`DataError` names the file and record or field that is wrong;
:class:`SkipReport` counts what ``data.bad_records: skip`` dropped (logged and written into the shard
manifest); :func:`resolve_path` turns ``data.root``-relative paths and URLs into local files (downloads are
cached once).
"""

from __future__ import annotations

import hashlib
import logging
import os
import shutil
import tempfile
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from xdist.errors import UserError

log = logging.getLogger(__name__)


class DataError(UserError, ValueError):
    """Raw data is missing, malformed or inconsistent; the message names the file and the record or field."""


MAX_SKIP_MESSAGES = 10
"""How many individual skip messages a :class:`SkipReport` keeps (counts are always complete)."""


@dataclass
class SkipReport:
    """Records that were skipped: a count per reason and the first few messages (file, record id, field)."""

    counts: dict[str, int] = field(default_factory=dict)
    """Number of skipped records per reason (``answer_offset_mismatch``, ``no_answers``, ...)."""

    messages: list[str] = field(default_factory=list)
    """The first :data:`MAX_SKIP_MESSAGES` messages, each naming the file and the record."""

    def add(self, reason: str, message: str) -> None:
        """Count one skipped record under ``reason``; keep ``message`` if fewer than the limit are kept."""
        self.counts[reason] = self.counts.get(reason, 0) + 1
        if len(self.messages) < MAX_SKIP_MESSAGES:
            self.messages.append(message)

    def merge(self, other: SkipReport) -> SkipReport:
        """Add ``other``'s counts and (up to the limit) messages into this report; returns ``self``."""
        for reason, count in other.counts.items():
            self.counts[reason] = self.counts.get(reason, 0) + count
        room = MAX_SKIP_MESSAGES - len(self.messages)
        self.messages.extend(other.messages[: max(room, 0)])
        return self

    @property
    def total(self) -> int:
        """Number of skipped records, all reasons together."""
        return sum(self.counts.values())

    def summary(self) -> str:
        """One human-readable paragraph: total, counts per reason, and the kept messages."""
        if not self.total:
            return "no records skipped"
        reasons = ", ".join(f"{reason}: {count}" for reason, count in sorted(self.counts.items()))
        lines = [f"{self.total} records skipped ({reasons})"]
        lines += [f"  - {message}" for message in self.messages]
        if self.total > len(self.messages):
            lines.append(f"  ... and {self.total - len(self.messages)} more")
        return "\n".join(lines)

    def to_dict(self) -> dict[str, Any]:
        """Plain data for manifests."""
        return {"total": self.total, "counts": dict(self.counts), "messages": list(self.messages)}


# --------------------------------------------------------------------------------------------------
# Paths and downloads
# --------------------------------------------------------------------------------------------------

_URL_SCHEMES = ("http", "https")


def is_url(path: str) -> bool:
    """An http(s) or file URL."""
    return urllib.parse.urlparse(path).scheme in (*_URL_SCHEMES, "file")


def is_remote(path: str) -> bool:
    """An http(s) URL: downloaded, and not listable as a directory."""
    return urllib.parse.urlparse(path).scheme in _URL_SCHEMES


def download_cache_dir() -> Path:
    """Where downloaded files are kept: ``$XDIST_CACHE/downloads``, default ``~/.cache/xdist/downloads``."""
    base = os.environ.get("XDIST_CACHE")
    return (Path(base).expanduser() if base else Path.home() / ".cache" / "xdist") / "downloads"


def _download(url: str) -> Path:
    """Fetch ``url`` once into the download cache and return the cached file."""
    name = Path(urllib.parse.urlparse(url).path).name or "download"
    # One folder per URL hash keeps same-named files from different places apart, and the file keeps its
    # name (formats read languages from file names).
    target = download_cache_dir() / hashlib.sha256(url.encode()).hexdigest()[:16] / name
    if target.is_file():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    # Download to a temporary name and rename, so an interrupted download never looks complete.
    handle, partial = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".part")
    try:
        with os.fdopen(handle, "wb") as out, urllib.request.urlopen(url, timeout=60) as response:
            shutil.copyfileobj(response, out)
        os.replace(partial, target)
    except urllib.error.HTTPError as err:
        raise DataError(f"download of {url} failed: HTTP {err.code} {err.reason}") from None
    except (urllib.error.URLError, OSError) as err:
        reason = getattr(err, "reason", None) or err
        raise DataError(f"download of {url} failed: {reason}") from None
    finally:
        if os.path.exists(partial):
            os.unlink(partial)
    log.info("downloaded %s to %s", url, target)
    return target


def join_root(path: str, root: str | os.PathLike | None) -> str:
    """``path`` made absolute against ``root`` (a directory or URL prefix); URLs and absolute paths win."""
    path = os.path.expanduser(str(path))
    if is_url(path) or os.path.isabs(path) or root is None or str(root) == "":
        return path
    root = str(root)
    if is_url(root):
        return root.rstrip("/") + "/" + urllib.parse.quote(path)
    return os.path.join(os.path.expanduser(root), path)


def resolve_path(path: str | os.PathLike, root: str | os.PathLike | None = None) -> Path:
    """A local file path for ``path``, which may be absolute, relative to ``root``, or a URL.

    ``root`` is a directory or an http(s) URL prefix (``data.root``); relative local roots are relative
    to the working directory. ``http(s)://`` URLs are downloaded once into :func:`download_cache_dir`
    (later calls reuse the file); ``file://`` URLs map to the local path. Local paths are not checked for
    existence here: callers report what they looked for. A failed download raises :class:`DataError`.
    """
    joined = join_root(str(path), root)
    parsed = urllib.parse.urlparse(joined)
    if parsed.scheme in _URL_SCHEMES:
        return _download(joined)
    if parsed.scheme == "file":
        return Path(urllib.request.url2pathname(parsed.path))
    return Path(joined)
