"""Training shards: a task's samples written as webdataset ``.tar`` files, described by ``manifest.json``.

Layout of a shard directory::

    train-000000.tar  train-000001.tar  ...  manifest.json

The schema is the same for every task. A task turns each feature into a :class:`ShardRecord`: named
numeric arrays (token ids, masks, and the labels too: QA's ``start_positions``/``end_positions``, a
classification label) plus a little JSON. Each sample in a shard has a stable key (see
:func:`sample_key`) and one member per array, ``<key>.<name>.npy``, plus ``<key>.meta.json`` (example
uid, part, group, source and the task's extra fields); none of them is pickled. Every sample of a set has
the same arrays with the same dtypes and shapes; the manifest lists them (``fields``), the decoder
accepts exactly those members, and one collate (:func:`xdist.data.stream.collate`) stacks them all.

The manifest is written last, atomically, so a directory with a manifest always holds a complete set of
shards. It records the task, per-shard sample counts (the stream plans every epoch from these counts
alone, without opening a tar), per group (QA: the (question, context) language cell) and per source
counts, and fingerprints of the tokenizer and of the config that produced the shards, so a training run
can refuse shards that do not match its tokenizer or config.

webdataset does the tar writing (``ShardWriter``) and reading (``tarfile_to_samples``); what it does not
do, and this module adds: deterministic pre-shuffling, key sanitising, strict no-pickle decoding and the
manifest with its checks.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import io
import json
import logging
import math
import os
import random
import re
from collections import Counter
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import webdataset as wds
from tqdm.auto import tqdm

from xdist.data.tokenizer import tokenizer_directory
from xdist.errors import UserError
from xdist.fileio import file_sha256, write_text_atomic

log = logging.getLogger(__name__)

FORMAT_VERSION = 2
"""Version of the shard layout and manifest schema; bumped on any incompatible change (2: generic arrays,
labels included, listed in the manifest's ``fields``; ``groups`` instead of QA's ``pairs``)."""

MANIFEST_NAME = "manifest.json"
SHARD_PATTERN = "train-%06d.tar"
SHARD_NAME_RE = re.compile(r"train-\d{6}\.tar")
META_MEMBER = "meta.json"
META_FIELDS = ("example_uid", "part", "group", "source")
"""Keys every sample's ``meta.json`` holds (a task's extra meta fields come beside them)."""
BATCH_KEYS = ("keys", "groups")
"""Names :func:`xdist.data.stream.collate` gives the per-row key and group lists; no array may use them."""
_FIELD_NAME_RE = re.compile(r"[A-Za-z][A-Za-z0-9_]*")

TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "added_tokens.json")
"""Files of a Hugging Face tokenizer directory that determine its output; hashed into its fingerprint."""

_KEY_SAFE = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-")
_KEY_MAX_ESCAPED = 120


class ShardError(UserError, ValueError):
    """Shards or their manifest are missing, malformed or do not match what the caller expects."""


@dataclass(frozen=True)
class ArraySpec:
    """Dtype and per-sample shape of one array field of a shard set (``()`` for a scalar such as a label)."""

    dtype: str
    """numpy dtype name (``int32``, ``uint8``, ``float32``, ...)."""

    shape: tuple[int, ...]

    @classmethod
    def of(cls, array: np.ndarray) -> ArraySpec:
        return cls(array.dtype.name, tuple(int(n) for n in array.shape))

    def to_json(self) -> dict[str, Any]:
        return {"dtype": self.dtype, "shape": list(self.shape)}


@dataclass
class ShardRecord:
    """One sample as a task hands it to :func:`write_shards`."""

    uid: str
    """The stable uid of the example this sample comes from (QA: ``<question id>/<q>-<c>``)."""

    part: int
    """Index of this sample among its example's samples (QA: the sliding window; 0 when an example gives one
    sample). ``(uid, part)`` is unique in a shard set and gives the sample's key."""

    arrays: dict[str, np.ndarray]
    """Every array the model and the loss need, labels included: plain numeric numpy arrays, the same names,
    dtypes and shapes in every record of a set. The training batch holds exactly these names."""

    group: str
    """What the manifest counts samples by, and what the batch's ``groups`` list holds (QA: the ``q-c``
    language cell; classification: the language)."""

    source: str
    """``<source name>:<file or detail>``; the manifest counts samples per source name."""

    meta: dict[str, Any] = field(default_factory=dict)
    """Extra JSON-serialisable fields the task wants back when it reads a sample (QA: the languages)."""


@dataclass
class ShardInfo:
    """One ``.tar`` shard as recorded in the manifest."""

    name: str
    samples: int
    bytes: int
    sha256: str
    groups: dict[str, int]
    """Samples per group (:attr:`ShardRecord.group`) in this shard."""


@dataclass
class ShardMeta:
    """What :func:`write_shards` records in the manifest beside the counts it computes itself."""

    tokenizer_fingerprint: str = ""
    config_fingerprint: str = ""
    config: dict[str, Any] = field(default_factory=dict)
    """The config values behind ``config_fingerprint`` (kept so a mismatch can say what changed)."""
    skipped: dict[str, Any] = field(default_factory=dict)
    """The readers' skipped-record report (counts per reason)."""
    feature_stats: dict[str, Any] = field(default_factory=dict)
    """Featurisation statistics (windows per example, answers lost to truncation, ...)."""

    task: str = "qa"
    """The task (``JobConfig.task``) whose samples these are."""


@dataclass
class Manifest:
    """Contents of ``manifest.json``. ``directory`` is where it was loaded from (not serialised)."""

    format_version: int
    task: str
    """The task whose samples the shards hold (``JobConfig.task``)."""
    fields: dict[str, ArraySpec]
    """Every array of a sample: name → dtype and per-sample shape."""
    shards: list[ShardInfo]
    total_samples: int
    groups: dict[str, int]
    """Samples per group (QA: per ``q-c`` language cell)."""
    sources: dict[str, int]
    max_length: int
    """Token sequence length: the last axis of ``input_ids`` (every task writes ``input_ids``)."""
    samples_per_shard: int
    shuffle_seed: int
    tokenizer_fingerprint: str
    config_fingerprint: str
    config: dict[str, Any]
    skipped: dict[str, Any]
    feature_stats: dict[str, Any]
    created_at: str
    xdist_version: str
    directory: Path = field(default=Path("."), compare=False)

    def shard_path(self, shard: ShardInfo | str) -> Path:
        """Absolute path of a shard of this manifest."""
        return self.directory / (shard if isinstance(shard, str) else shard.name)

    def to_json(self) -> str:
        data = dataclasses.asdict(self)
        data.pop("directory")
        data["fields"] = {name: spec.to_json() for name, spec in self.fields.items()}
        return json.dumps(data, indent=2, sort_keys=True, ensure_ascii=False) + "\n"


# --------------------------------------------------------------------------------------------------
# Writing
# --------------------------------------------------------------------------------------------------


def sample_key(example_uid: str, part: int) -> str:
    """Stable webdataset key of a sample (``part``: :attr:`ShardRecord.part`): readable, unique, and free of
    dots and slashes.

    webdataset splits a member name at its first dot into key and extension, and a slash would make a
    tar directory, so neither may appear in a key. Every character outside ``[A-Za-z0-9-]`` (``_``
    included) is escaped as ``_`` plus its UTF-8 bytes in hex, which keeps the mapping one-to-one:
    ``56be.../en-de`` window 0 becomes ``56be..._2fen-de-w0``. Very long uids are cut and completed with
    a hash of the whole uid, so tar member names stay short.
    """
    escaped = "".join(
        char if char in _KEY_SAFE else "".join(f"_{byte:02x}" for byte in char.encode("utf-8"))
        for char in example_uid
    )
    if len(escaped) > _KEY_MAX_ESCAPED:
        digest = hashlib.sha256(example_uid.encode("utf-8")).hexdigest()[:16]
        escaped = f"{escaped[: _KEY_MAX_ESCAPED - 17]}~{digest}"
    return f"{escaped}-w{part}"


def _npy_bytes(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    # Not np.ascontiguousarray: it turns a 0-d array (a scalar label) into shape (1,).
    np.lib.format.write_array(buffer, np.asarray(array, order="C"), allow_pickle=False)
    return buffer.getvalue()


def source_name(source: str) -> str:
    """Source name of a feature's ``source`` (``"xquad:xquad.de.json"`` → ``"xquad"``)."""
    return source.split(":", 1)[0] or "(unknown)"


def _check_record(where: str, record: ShardRecord, fields: dict[str, ArraySpec]) -> None:
    """``record`` against the set's fields (those of the first record)."""
    if not record.uid:
        raise ShardError(f"{where}: example uid is empty")
    if record.part < 0:
        raise ShardError(f"{where}: part={record.part} is negative")
    if not record.group:
        raise ShardError(f"{where}: group is empty")
    if set(record.arrays) != set(fields):
        raise ShardError(f"{where}: arrays {sorted(record.arrays)}, but the first sample has {sorted(fields)} "
                         "(every sample of a set has the same arrays)")
    for name, spec in fields.items():
        array = record.arrays[name]
        if array.dtype.name != spec.dtype:
            raise ShardError(f"{where}: {name} has dtype {array.dtype.name}, expected {spec.dtype}")
        if tuple(array.shape) != spec.shape:
            raise ShardError(
                f"{where}: {name} has shape {tuple(array.shape)}, expected {spec.shape} (every sample's arrays "
                "have the shapes of the first: features must be padded to the same max_length)"
            )


def _record_fields(where: str, record: ShardRecord) -> dict[str, ArraySpec]:
    """The fields of a set, from its first record (names, numeric dtypes, ``input_ids`` present)."""
    fields = {}
    for name, array in record.arrays.items():
        if not _FIELD_NAME_RE.fullmatch(name) or name in BATCH_KEYS:
            raise ShardError(f"{where}: array name {name!r} is not allowed (letters, digits and '_'; not "
                             f"{list(BATCH_KEYS)})")
        if not isinstance(array, np.ndarray) or array.dtype.kind not in "biuf":
            raise ShardError(f"{where}: {name} must be a numeric numpy array, got {type(array).__name__} "
                             f"{getattr(array, 'dtype', '')}")
        fields[name] = ArraySpec.of(array)
    # Token ids are [L], or [..., L] with leading axes (ALSACE's pair samples: [2, L], one row per language).
    if "input_ids" not in fields or len(fields["input_ids"].shape) < 1 or fields["input_ids"].shape[-1] <= 0:
        raise ShardError(f"{where}: input_ids is missing or empty (every task writes token ids of shape [L] "
                         "or [..., L])")
    return fields


def _record_sample(key: str, record: ShardRecord) -> dict[str, Any]:
    meta = {**record.meta, "example_uid": record.uid, "part": record.part, "group": record.group,
            "source": record.source}
    sample = {"__key__": key}
    for name, array in record.arrays.items():
        sample[f"{name}.npy"] = _npy_bytes(array)
    sample[META_MEMBER] = json.dumps(meta, sort_keys=True, ensure_ascii=False).encode("utf-8")
    return sample


def existing_shard_files(directory: str | os.PathLike) -> list[Path]:
    """Shard files (``train-NNNNNN.tar``) and a manifest already present in ``directory``."""
    directory = Path(directory)
    if not directory.is_dir():
        return []
    return sorted(
        p for p in directory.iterdir() if SHARD_NAME_RE.fullmatch(p.name) or p.name == MANIFEST_NAME
    )


def write_shards(
    records: Iterable[ShardRecord],
    out_dir: str | os.PathLike,
    samples_per_shard: int,
    *,
    shuffle_seed: int,
    meta: ShardMeta | None = None,
    progress: bool = False,
) -> Manifest:
    """Shuffle ``records`` deterministically, write them as webdataset shards, then the manifest.

    The shuffle (by ``shuffle_seed``) mixes sources and groups across shards, so every reader slot of the
    stream sees a mixture. Records are consumed one at a time and kept only in their encoded form (about
    3 KB each for QA at max_length 384) until the shuffle, so a generator of features for the whole G-XLT
    matrix fits in memory. ``out_dir`` must not already hold shards or a manifest (stale
    shards would silently join the new set); :func:`xdist.data.prepare.prepare` clears it on request.
    Raises :class:`ShardError` on empty input, arrays that differ from the first record's (names, dtypes,
    shapes), duplicate keys, or a task's own check (raised while its generator runs).
    """
    if samples_per_shard <= 0:
        raise ShardError(f"samples_per_shard must be positive, got {samples_per_shard}")
    meta = meta or ShardMeta()
    out_dir = Path(out_dir)
    stale = existing_shard_files(out_dir)
    if stale:
        raise ShardError(
            f"{out_dir} already holds {stale[0].name} (and {len(stale) - 1} more shard/manifest files); "
            "remove them or run prepare with overwrite=True"
        )
    encoded: list[tuple[dict[str, Any], str, str]] = []  # (sample, group, source name)
    origin: dict[str, tuple[int, str, int]] = {}  # key -> (record index, example uid, part)
    fields: dict[str, ArraySpec] = {}
    for index, record in enumerate(records):
        where = f"feature #{index} (example {record.uid!r}, part {record.part})"
        fields = fields or _record_fields(where, record)
        _check_record(where, record, fields)
        key = sample_key(record.uid, record.part)
        if key in origin:
            first, uid, part = origin[key]
            raise ShardError(
                f"{where} has the same key {key!r} as feature #{first} (example {uid!r}, part {part}): "
                "duplicate (example, part) in the input (is a source listed twice in data.train?)"
            )
        origin[key] = (index, record.uid, record.part)
        encoded.append((_record_sample(key, record), record.group, source_name(record.source)))
    if not encoded:
        raise ShardError("no features to write: every source was empty or every record was skipped")
    random.Random(f"xdist-shards/{shuffle_seed}").shuffle(encoded)

    out_dir.mkdir(parents=True, exist_ok=True)
    written: list[str] = []
    shard_groups: list[Counter] = []
    pattern = str(out_dir).replace("%", "%%") + "/" + SHARD_PATTERN
    # maxsize is unbounded so that shard boundaries depend on sample counts only (the manifest, the
    # stream plan and the user's samples_per_shard all reason in samples); mtime is fixed so the same
    # input gives byte-identical shards.
    with wds.ShardWriter(
        pattern,
        maxcount=samples_per_shard,
        maxsize=float("inf"),
        post=written.append,
        verbose=0,
        encoder=False,
        mtime=0,
        format="PAX_FORMAT",
    ) as writer:
        bar = tqdm(encoded, desc=f"writing shards to {out_dir}", unit="feature", disable=None if progress else True)
        for position, (sample, group, _) in enumerate(bar):
            if position % samples_per_shard == 0:
                shard_groups.append(Counter())
            shard_groups[-1][group] += 1
            writer.write(sample)
    if len(written) != len(shard_groups):
        raise ShardError(f"webdataset wrote {len(written)} shards, expected {len(shard_groups)}")

    shards = []
    for path, groups in zip(written, shard_groups, strict=True):
        path = Path(path)
        shards.append(
            ShardInfo(
                name=path.name,
                samples=sum(groups.values()),
                bytes=path.stat().st_size,
                sha256=file_sha256(path),
                groups=dict(sorted(groups.items())),
            )
        )
    manifest = Manifest(
        format_version=FORMAT_VERSION,
        task=meta.task,
        fields=fields,
        shards=shards,
        total_samples=len(encoded),
        groups=dict(sorted(Counter(group for _, group, _ in encoded).items())),
        sources=dict(sorted(Counter(source for _, _, source in encoded).items())),
        max_length=fields["input_ids"].shape[-1],
        samples_per_shard=samples_per_shard,
        shuffle_seed=shuffle_seed,
        tokenizer_fingerprint=meta.tokenizer_fingerprint,
        config_fingerprint=meta.config_fingerprint,
        config=meta.config,
        skipped=meta.skipped,
        feature_stats=meta.feature_stats,
        created_at=datetime.now(UTC).isoformat(timespec="seconds"),
        xdist_version=_xdist_version(),
        directory=out_dir,
    )
    write_text_atomic(out_dir / MANIFEST_NAME, manifest.to_json())
    log.info("wrote %d samples in %d shards to %s", manifest.total_samples, len(shards), out_dir)
    return manifest


def _xdist_version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("xdist")
    except PackageNotFoundError:
        return "unknown"


# --------------------------------------------------------------------------------------------------
# Fingerprints
# --------------------------------------------------------------------------------------------------


def tokenizer_fingerprint(path: str | os.PathLike) -> str:
    """sha256 over the files of a tokenizer directory that define its behaviour (names and contents)."""
    path = tokenizer_directory(path)
    if not path.is_dir():
        raise ShardError(f"tokenizer directory {str(path)!r} does not exist")
    present = [name for name in TOKENIZER_FILES if (path / name).is_file()]
    if "tokenizer.json" not in present:
        raise ShardError(f"tokenizer directory {str(path)!r} has no tokenizer.json (a fast tokenizer is required)")
    digest = hashlib.sha256()
    for name in present:
        digest.update(name.encode("utf-8") + b"\0")
        digest.update(hashlib.sha256((path / name).read_bytes()).digest())
    return digest.hexdigest()


def json_fingerprint(data: Any) -> str:
    """sha256 of the canonical JSON (sorted keys, no whitespace) of ``data``."""
    text = json.dumps(data, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


# --------------------------------------------------------------------------------------------------
# Loading
# --------------------------------------------------------------------------------------------------

_MANIFEST_FIELDS: dict[str, type | tuple[type, ...]] = {
    "format_version": int,
    "task": str,
    "fields": dict,
    "shards": list,
    "total_samples": int,
    "groups": dict,
    "sources": dict,
    "max_length": int,
    "samples_per_shard": int,
    "shuffle_seed": int,
    "tokenizer_fingerprint": str,
    "config_fingerprint": str,
    "config": dict,
    "skipped": dict,
    "feature_stats": dict,
    "created_at": str,
    "xdist_version": str,
}
_SHARD_FIELDS: dict[str, type] = {"name": str, "samples": int, "bytes": int, "sha256": str, "groups": dict}


def json_field(where: str, data: dict, name: str, expected: type | tuple[type, ...]) -> Any:
    """``data[name]``, which must be present and a(n) ``expected`` (never a bool for int); else a ShardError."""
    if name not in data:
        raise ShardError(f"{where}: missing field '{name}'")
    value = data[name]
    if isinstance(value, bool) or not isinstance(value, expected):
        kind = expected.__name__ if isinstance(expected, type) else "/".join(t.__name__ for t in expected)
        raise ShardError(f"{where}: field '{name}' should be {kind}, got {value!r}")
    return value


def read_json(path: Path) -> Any:
    """The JSON value in ``path``; malformed JSON raises :class:`ShardError` naming file, line and column."""
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as err:
        raise ShardError(f"{path}:{err.lineno}:{err.colno}: invalid JSON: {err.msg}") from None


def load_manifest(
    directory: str | os.PathLike,
    *,
    tokenizer: str | os.PathLike | None = None,
    verify_checksums: bool = False,
) -> Manifest:
    """Load and check ``<directory>/manifest.json``.

    Checks: the file exists and is valid JSON of this format version; every field has its type; every
    listed shard exists with the recorded size (and sha256 when ``verify_checksums``); the counts add
    up; and, when ``tokenizer`` (a tokenizer directory) is given, that it is the tokenizer the shards
    were written with. Each failure raises :class:`ShardError` naming the file and what was expected.
    """
    directory = Path(directory)
    path = directory / MANIFEST_NAME
    if not path.is_file():
        hint = " (shards are present: an interrupted prepare?)" if any(
            SHARD_NAME_RE.fullmatch(p.name) for p in existing_shard_files(directory)
        ) else ""
        raise ShardError(f"{path}: no shard manifest here{hint}; run `xdist prepare` to write the shards")
    data = read_json(path)
    if not isinstance(data, dict):
        raise ShardError(f"{path}: expected a JSON object at top level")
    version = data.get("format_version")
    if version != FORMAT_VERSION:
        raise ShardError(
            f"{path}: shard format version {version!r}, this xdist reads version {FORMAT_VERSION}; "
            "re-run `xdist prepare` to rewrite the shards"
        )
    values = {name: json_field(str(path), data, name, kind) for name, kind in _MANIFEST_FIELDS.items()}
    shards = []
    for i, raw in enumerate(values["shards"]):
        where = f"{path}: shards[{i}]"
        if not isinstance(raw, dict):
            raise ShardError(f"{where}: expected an object, got {raw!r}")
        shard = ShardInfo(**{name: json_field(where, raw, name, kind) for name, kind in _SHARD_FIELDS.items()})
        if not SHARD_NAME_RE.fullmatch(shard.name):
            raise ShardError(f"{where}: shard name {shard.name!r} is not of the form train-NNNNNN.tar")
        if shard.samples <= 0:
            raise ShardError(f"{where}: shard {shard.name} has {shard.samples} samples, expected at least 1")
        if sum(shard.groups.values()) != shard.samples:
            raise ShardError(f"{where}: per-group counts of {shard.name} do not add up to its {shard.samples} samples")
        shards.append(shard)
    if not shards:
        raise ShardError(f"{path}: lists no shards")
    values["shards"] = shards
    values["fields"] = _manifest_fields(path, values["fields"])
    total = sum(s.samples for s in shards)
    if total != values["total_samples"]:
        raise ShardError(f"{path}: total_samples is {values['total_samples']} but the shards hold {total}")
    if values["max_length"] <= 0:
        raise ShardError(f"{path}: max_length must be positive, got {values['max_length']}")
    manifest = Manifest(**values, directory=directory)

    for shard in shards:
        shard_path = manifest.shard_path(shard)
        if not shard_path.is_file():
            raise ShardError(f"{path}: lists shard {shard.name}, but {shard_path} does not exist")
        size = shard_path.stat().st_size
        if size != shard.bytes:
            raise ShardError(
                f"{shard_path}: {size} bytes, the manifest recorded {shard.bytes}; the shard was changed "
                "or truncated after prepare"
            )
        if verify_checksums and file_sha256(shard_path) != shard.sha256:
            raise ShardError(f"{shard_path}: sha256 differs from the manifest; the shard is corrupt")
    if tokenizer is not None:
        check_tokenizer(manifest, tokenizer)
    return manifest


def _manifest_fields(path: Path, raw: dict) -> dict[str, ArraySpec]:
    fields = {}
    for name, spec in raw.items():
        where = f"{path}: fields.{name}"
        dtype = json_field(where, spec, "dtype", str) if isinstance(spec, dict) else None
        shape = json_field(where, spec, "shape", list) if isinstance(spec, dict) else None
        try:
            kind = np.dtype(dtype).kind if dtype else ""
        except TypeError:
            kind = ""
        if not _FIELD_NAME_RE.fullmatch(name) or kind not in tuple("biuf") or shape is None or not all(
                isinstance(n, int) and not isinstance(n, bool) and n >= 0 for n in shape):
            raise ShardError(f"{where}: expected {{\"dtype\": <numeric numpy dtype>, \"shape\": [ints]}}, got {spec!r}")
        fields[name] = ArraySpec(dtype, tuple(shape))
    if "input_ids" not in fields:
        raise ShardError(f"{path}: fields lists no input_ids")
    return fields


def check_tokenizer(manifest: Manifest, tokenizer: str | os.PathLike, fingerprint: str | None = None) -> None:
    """Raise :class:`ShardError` unless ``tokenizer`` is the tokenizer the shards were written with.

    ``fingerprint`` is ``tokenizer_fingerprint(tokenizer)`` when the caller already has it (several shard
    sets checked against one tokenizer hash its files once).
    """
    actual = tokenizer_fingerprint(tokenizer) if fingerprint is None else fingerprint
    if manifest.tokenizer_fingerprint != actual:
        raise ShardError(
            f"{manifest.directory / MANIFEST_NAME}: shards were tokenized with a tokenizer of fingerprint "
            f"{manifest.tokenizer_fingerprint[:12] or '(none recorded)'}, but {tokenizer} has fingerprint "
            f"{actual[:12]}; re-run `xdist prepare` with this tokenizer or point features.tokenizer at the "
            "original one"
        )


# --------------------------------------------------------------------------------------------------
# Reading
# --------------------------------------------------------------------------------------------------


@dataclass
class ShardSample:
    """One decoded training sample: its key, its arrays (by field name) and its meta JSON."""

    key: str
    arrays: dict[str, np.ndarray]
    meta: dict[str, Any]

    @property
    def example_uid(self) -> str:
        return self.meta["example_uid"]

    @property
    def part(self) -> int:
        return self.meta["part"]

    @property
    def group(self) -> str:
        return self.meta["group"]

    @property
    def source(self) -> str:
        return self.meta["source"]


@functools.lru_cache(maxsize=64)
def _npy_header(header: bytes) -> tuple[tuple[int, ...], np.dtype]:
    """Shape and dtype of a version-1 .npy header, parsed by numpy; object dtypes are refused."""
    stream = io.BytesIO(header)
    np.lib.format.read_magic(stream)
    shape, fortran_order, dtype = np.lib.format.read_array_header_1_0(stream)
    if dtype.hasobject or fortran_order:
        raise ValueError(f"dtype {dtype} (fortran order {fortran_order}) is not a plain C-order numeric array")
    return shape, dtype


def _load_npy(data: bytes) -> np.ndarray:
    """Decode .npy bytes, never unpickling (an object array in a shard would run code on load).

    Why not just ``np.load``: numpy re-parses the header text with ``ast.literal_eval`` for every array,
    about a third of the stream's read time with three small arrays per sample. All arrays of a shard
    set share a handful of headers, so the header is parsed by numpy once (cached) and the payload is a
    ``frombuffer`` view; anything unusual (another .npy version) takes the plain ``np.load`` path.
    """
    if data[:6] == b"\x93NUMPY" and data[6:7] == b"\x01":
        end = 10 + int.from_bytes(data[8:10], "little")
        shape, dtype = _npy_header(bytes(data[:end]))
        count = math.prod(shape)
        if len(data) - end != count * dtype.itemsize:
            raise ValueError(f"payload of {len(data) - end} bytes does not match shape {shape} of {dtype}")
        return np.frombuffer(data, dtype=dtype, count=count, offset=end).reshape(shape)
    return np.load(io.BytesIO(data), allow_pickle=False)


def decode_sample(
    raw: dict[str, Any], fields: dict[str, ArraySpec], bounds: dict[str, tuple[int, int]] | None = None
) -> ShardSample:
    """Decode a raw webdataset sample (member bytes by extension) into a :class:`ShardSample`.

    ``fields`` is the set's :attr:`Manifest.fields`. Exactly one ``<name>.npy`` member per field plus
    ``meta.json`` are accepted, each array with its field's dtype and shape; anything else (a ``.pyd`` or
    ``.pth`` member, say) is an error rather than something to unpickle. ``bounds`` (field → half-open
    ``[low, high)``, :func:`xdist.data.stream.value_bounds`) refuses values that would train silently wrong
    or crash a later step (a token id outside the vocabulary, an answer position outside the sequence),
    naming shard, sample, field and position.
    """
    key = raw.get("__key__", "?")
    where = f"{raw.get('__url__', '?')}: sample {key!r}"
    members = {k for k in raw if not k.startswith("__")}
    expected = _member_set(tuple(fields))
    if members != expected:
        raise ShardError(f"{where}: members {sorted(members)}, expected exactly {sorted(expected)}")
    arrays = {}
    for name, spec in fields.items():
        member = f"{name}.npy"
        try:
            array = _load_npy(raw[member])
        except ValueError as err:
            raise ShardError(f"{where}: {member} is not a plain .npy array: {err}") from None
        if array.shape != spec.shape:
            raise ShardError(f"{where}: {member} has shape {array.shape}, expected {spec.shape}")
        if array.dtype.name != spec.dtype:
            raise ShardError(f"{where}: {member} has dtype {array.dtype.name}, expected {spec.dtype}")
        arrays[name] = array
    try:
        meta = json.loads(raw[META_MEMBER])
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise ShardError(f"{where}: {META_MEMBER} is not valid JSON: {err}") from None
    missing = [name for name in META_FIELDS if name not in meta] if isinstance(meta, dict) else list(META_FIELDS)
    if missing:
        raise ShardError(f"{where}: {META_MEMBER} lacks field {missing[0]!r}")
    for name, (low, high) in (bounds or {}).items():
        _check_range(where, name, arrays[name], low, high)
    return ShardSample(key=key, arrays=arrays, meta=meta)


@functools.lru_cache(maxsize=16)
def _member_set(names: tuple[str, ...]) -> frozenset[str]:
    return frozenset({*(f"{name}.npy" for name in names), META_MEMBER})


def _check_range(where: str, name: str, values: np.ndarray, low: int, high: int) -> None:
    if values.size == 0:
        return
    least, most = int(values.min()), int(values.max())
    if least >= low and most < high:
        return
    bad = least if least < low else most
    position = int(np.flatnonzero(values.reshape(-1) == bad)[0])
    at = f" at position {position}" if values.ndim else ""
    raise ShardError(
        f"{where}: {name} value {bad}{at} is outside [{low}, {high}) (the vocabulary of features.tokenizer for "
        "token ids, the sequence for positions); the shard is corrupt or was written differently: re-run "
        "`xdist prepare --overwrite`"
    )


def raw_samples(urls: list[str], checksums: dict[str, str] | None = None) -> Iterator[dict[str, Any]]:
    """Undecoded samples (member bytes) of the given shard files, in file order, via webdataset.

    With ``checksums`` (url → the manifest's sha256) every shard is read whole, hashed and refused on a
    mismatch before any of its samples is yielded (:func:`verified_shard_streams`): a corrupt shard never
    reaches a training step, at the cost of one shard's bytes in memory per reader.
    """
    if checksums is None:
        return iter(wds.DataPipeline(wds.SimpleShardList(urls), wds.tarfile_to_samples()))
    files = wds.tariterators.tar_file_expander(verified_shard_streams(urls, checksums))
    return wds.tariterators.group_by_keys(files)


def verified_shard_streams(urls: list[str], checksums: dict[str, str]) -> Iterator[dict[str, Any]]:
    """``{"url", "stream"}`` of each shard, read whole and checked against its sha256 (webdataset's
    ``url_opener`` contract)."""
    for url in urls:
        data = Path(url).read_bytes()
        actual = hashlib.sha256(data).hexdigest()
        if actual != checksums[url]:
            raise ShardError(
                f"{url}: sha256 {actual[:16]}... differs from the manifest's {checksums[url][:16]}...: the shard "
                "is corrupt or was changed after prepare; re-run `xdist prepare --overwrite`"
            )
        yield {"url": url, "stream": io.BytesIO(data)}


def iter_samples(manifest: Manifest) -> Iterator[ShardSample]:
    """Every sample of every shard, decoded, in manifest order (for tests, inspection and caches)."""
    urls = [str(manifest.shard_path(s)) for s in manifest.shards]
    for raw in raw_samples(urls):
        yield decode_sample(raw, manifest.fields)
