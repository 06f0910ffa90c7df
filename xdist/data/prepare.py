"""``xdist prepare``: raw sources → examples → features → webdataset shards + manifest.

Every source of ``data.train`` is read by the job's task (:meth:`xdist.tasks.base.Task.read`; QA:
:func:`xdist.tasks.qa.readers.read_source`), featurised with the configured tokenizer
(:meth:`~xdist.tasks.base.Task.shard_records`; QA: :mod:`xdist.tasks.qa.features`) and written to
``data.shards`` (:func:`xdist.data.shards.write_shards`). The manifest records two fingerprints: the tokenizer's files
and the part of the config that decides the shards' content. A shard directory whose manifest carries
the same fingerprints is up to date and left alone; one with different fingerprints, or with files of
an interrupted run, is only replaced when asked (``overwrite=True``, ``xdist prepare --overwrite``).

Cross-lingual sampling (``sampling`` on a source, :mod:`xdist.tasks.qa.sampling`): the sampled examples go
through the same features/shards path; the manifest's ``groups`` counts features per cell as always, and
``feature_stats["sampling"]`` holds each sampled source's report (parameters, questions, examples, the
histogram of pairs per question, examples per cell and per language). With ``sampling.per_epoch`` on any
training source, one shard set is written per epoch (``train.epochs`` of them), each a complete shard
directory with its own manifest::

    <data.shards>/epoch-000/{train-*.tar, manifest.json}
    <data.shards>/epoch-001/...
    <data.shards>/epochs.json      (the index: sets, samples and sampling report per set, fingerprints)

Set ``e`` holds epoch ``e``'s draw of the per-epoch sources and the same examples of every other source.
The index is written last; an interrupted run keeps its completed sets and rewrites only the rest.
"""

from __future__ import annotations

import dataclasses
import functools
import logging
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

from tqdm.auto import tqdm

from xdist.config import JobConfig
from xdist.data.epochs import EPOCH_INDEX_NAME, EpochIndex, epoch_set_name, load_epoch_index, write_epoch_index
from xdist.data.shards import (
    FORMAT_VERSION,
    MANIFEST_NAME,
    SHARD_NAME_RE,
    Manifest,
    ShardError,
    ShardMeta,
    existing_shard_files,
    json_fingerprint,
    load_manifest,
    tokenizer_fingerprint,
    write_shards,
)
from xdist.data.sources import SkipReport
from xdist.data.tokenizer import load_tokenizer
from xdist.tasks import get_task

log = logging.getLogger(__name__)

WRITE_SHUFFLE_SEED = 0
"""Seed of the write-time shuffle. Fixed rather than ``train.seed``: it only mixes sources across shards
(the training order comes from the stream's per-epoch shuffle), and tying it to the training seed would
make every new seed rebuild identical-content shards."""


def shards_config(cfg: JobConfig) -> dict[str, Any]:
    """The config values that decide the shards' content, as plain data.

    Left out on purpose: where things are (``data.root``, ``data.shards``, the tokenizer *path*, whose
    files are fingerprinted separately), and how shards are read (``num_workers``, ``shuffle_buffer``,
    ``uneven``), none of which changes what is written.
    """
    data = cfg.data
    # Every feature setting but the tokenizer's location (its files are fingerprinted separately).
    features = {k: v for k, v in dataclasses.asdict(cfg.features).items() if k != "tokenizer"}
    config = {
        "format_version": FORMAT_VERSION,
        "task": cfg.task,
        "shuffle_seed": WRITE_SHUFFLE_SEED,
        "data": {
            "train": [_source_config(source) for source in data.train],
            "title_split": dataclasses.asdict(data.title_split),
            "samples_per_shard": data.samples_per_shard,
            "bad_records": data.bad_records,
        },
        "features": features,
    }
    if (sets := shard_sets_needed(cfg)) > 1:
        config["epoch_sets"] = sets
    hook = getattr(_method(cfg), "shards_config", None)
    if hook is not None:  # a method that shapes its own samples (ALSACE's pairs) adds what decides them
        config["method"] = hook(cfg)
    return config


def _method(cfg: JobConfig) -> type:
    """The job's method class (checked against the task). Imported here, at call time, because a method
    may shape its training samples: one with ``prepare_records`` (ALSACE: pairs of parallel rows) writes
    those instead of the task's one sample per feature, and its ``shards_config`` joins the fingerprint."""
    from xdist.methods import method_class

    return method_class(cfg.method.name, cfg.task)


def _source_config(source) -> dict[str, Any]:
    # ``sampling: None`` is left out so that shards written before sampling existed stay up to date.
    values = dataclasses.asdict(source)
    if values.get("sampling") is None:
        values.pop("sampling", None)
    return values


def shard_sets_needed(cfg: JobConfig) -> int:
    """Shard sets ``prepare`` writes: ``train.epochs`` when a training source samples per epoch, else 1."""
    per_epoch = any(source.sampling is not None and source.sampling.per_epoch for source in cfg.data.train)
    return cfg.train.epochs if per_epoch else 1


def _flatten(data: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(data, dict):
        flat: dict[str, Any] = {}
        for key, value in data.items():
            flat |= _flatten(value, f"{prefix}{key}.")
        return flat
    return {prefix.rstrip("."): data}


def _config_changes(old: dict[str, Any], new: dict[str, Any]) -> str:
    before, after = _flatten(old), _flatten(new)
    changed = [f"{k}: {before.get(k)!r} -> {after.get(k)!r}" for k in sorted(set(before) | set(after))
               if before.get(k) != after.get(k)]
    return "; ".join(changed[:5]) + (f"; and {len(changed) - 5} more" if len(changed) > 5 else "")


def _setup_changes(
    recorded: Manifest | EpochIndex, config: dict[str, Any], config_fp: str, tokenizer_fp: str
) -> list[str]:
    """What differs between the setup a manifest or epoch index records and this one (empty: up to date)."""
    reasons = []
    if recorded.config_fingerprint != config_fp:
        reasons.append(f"config changed ({_config_changes(recorded.config, config) or 'fingerprint differs'})")
    if recorded.tokenizer_fingerprint != tokenizer_fp:
        reasons.append("the tokenizer's files changed")
    return reasons


def _existing_manifest(
    out_dir: Path, config: dict, config_fp: str, tokenizer_fp: str, overwrite: bool
) -> Manifest | None:
    """The manifest of an up-to-date shard directory, or None when shards must be (re)written.

    Raises :class:`ShardError` when the directory holds other shards and ``overwrite`` is False.
    """
    if overwrite or not existing_shard_files(out_dir):
        return None
    try:
        manifest = load_manifest(out_dir)
    except ShardError as err:
        raise ShardError(
            f"{out_dir} holds shards that cannot be used ({err}); run prepare with overwrite=True "
            "(xdist prepare --overwrite) to rebuild them"
        ) from None
    reasons = _setup_changes(manifest, config, config_fp, tokenizer_fp)
    if not reasons:
        log.info("%s is up to date (%d samples in %d shards); nothing to do", out_dir, manifest.total_samples,
                 len(manifest.shards))
        return manifest
    raise ShardError(
        f"{out_dir} holds shards written from a different setup: {', '.join(reasons)}; run prepare with "
        "overwrite=True (xdist prepare --overwrite) to replace them, or set data.shards to a new directory"
    )


def _clear(out_dir: Path) -> None:
    """Remove our shard and manifest files (never anything else) before rewriting."""
    removed = 0
    for path in existing_shard_files(out_dir):
        path.unlink()
        removed += 1
    tmp = out_dir / f".{MANIFEST_NAME}.tmp"  # write_text_atomic's temporary name
    if tmp.exists():
        tmp.unlink()
    log.info("removed %d old shard/manifest files from %s", removed, out_dir)


_EPOCH_DIR_RE = re.compile(r"epoch-\d{3}")


def _epoch_dirs(out_dir: Path) -> list[Path]:
    """``epoch-NNN`` sub-directories of ``out_dir`` that hold our shard files."""
    if not out_dir.is_dir():
        return []
    return sorted(p for p in out_dir.iterdir() if p.is_dir() and _EPOCH_DIR_RE.fullmatch(p.name)
                  and existing_shard_files(p))


def _clear_epoch_layout(out_dir: Path) -> None:
    """Remove an epoch index and the shard files of every epoch set (never anything else)."""
    index = out_dir / EPOCH_INDEX_NAME
    if index.exists():
        index.unlink()
    for directory in _epoch_dirs(out_dir):
        _clear(directory)
        if not any(directory.iterdir()):
            directory.rmdir()


def prepare(cfg: JobConfig, *, overwrite: bool = False, progress: bool = True) -> Manifest:
    """Read, featurise and shard ``cfg.data.train`` into ``cfg.data.shards``; return the manifest.

    If the directory already holds shards of the same config and tokenizer, nothing is done (unless
    ``overwrite``). Raises :class:`ShardError` when it holds different shards and ``overwrite`` is
    False, and the readers' ``DataError`` for bad sources. With per-epoch sampling, several shard sets
    are written (see the module docstring) and the manifest of epoch 0's set is returned; use
    :func:`prepare_sets` for all of them.
    """
    return prepare_sets(cfg, overwrite=overwrite, progress=progress)[0]


def prepare_sets(cfg: JobConfig, *, overwrite: bool = False, progress: bool = True) -> list[Manifest]:
    """Like :func:`prepare`; returns the manifest of every shard set (one, or one per epoch)."""
    if not cfg.data.train:
        raise ShardError("config field 'data.train': no training sources listed; nothing to prepare")
    out_dir = Path(cfg.data.shards)
    config = shards_config(cfg)
    tokenizer_fp = tokenizer_fingerprint(cfg.features.tokenizer)
    tokenizer = functools.cache(lambda: load_tokenizer(cfg.features.tokenizer))
    n_sets = shard_sets_needed(cfg)
    layout = "per-epoch shard sets (epochs.json, epoch-NNN/)"
    if n_sets == 1:
        if (out_dir / EPOCH_INDEX_NAME).exists() or _epoch_dirs(out_dir):
            if not overwrite:
                raise ShardError(
                    f"{out_dir} holds {layout} of a per_epoch sampling config, this config writes one shard set; "
                    "run prepare with overwrite=True (xdist prepare --overwrite) or set data.shards to a new directory"
                )
            _clear_epoch_layout(out_dir)
        return [_prepare_set(cfg, out_dir, config, tokenizer_fp, tokenizer, overwrite, progress, epoch=0)]

    config_fp = json_fingerprint(config)
    try:
        index = load_epoch_index(out_dir)
    except ShardError:
        if not overwrite:
            raise
        index = None
    if index is not None and not overwrite and (reasons := _setup_changes(index, config, config_fp, tokenizer_fp)):
        raise ShardError(
            f"{out_dir} holds {layout} written from a different setup: {', '.join(reasons)}; run prepare with "
            "overwrite=True (xdist prepare --overwrite) to replace them, or set data.shards to a new directory"
        )
    if existing_shard_files(out_dir):
        if not overwrite:
            raise ShardError(
                f"{out_dir} holds a single shard set, this config (per_epoch sampling) writes {layout}; run "
                "prepare with overwrite=True (xdist prepare --overwrite) or set data.shards to a new directory"
            )
        _clear(out_dir)
    if overwrite:
        _clear_epoch_layout(out_dir)

    manifests = []
    for epoch in range(n_sets):
        set_config = {**config, "epoch_set": epoch}
        manifests.append(_prepare_set(
            cfg, out_dir / epoch_set_name(epoch), set_config, tokenizer_fp, tokenizer, overwrite, progress, epoch
        ))
    samples = [m.total_samples for m in manifests]
    if index is not None and not overwrite and index.samples == samples:
        log.info("%s: %d per-epoch shard sets are up to date; nothing to do", out_dir, n_sets)
        return manifests
    stale = [p.name for p in _epoch_dirs(out_dir) if int(p.name.split("-")[1]) >= n_sets]
    if stale:
        log.warning("%s also holds shard sets %s that this config does not use; they are left alone", out_dir, stale)
    index = EpochIndex(
        sets=[epoch_set_name(epoch) for epoch in range(n_sets)],
        config_fingerprint=config_fp,
        tokenizer_fingerprint=tokenizer_fp,
        config=config,
        samples=samples,
        sampling=[m.feature_stats.get("sampling", {}) for m in manifests],
    )
    write_epoch_index(out_dir, index)
    log.info(
        "prepared %d per-epoch shard sets at %s: %s features", n_sets, out_dir,
        ", ".join(f"epoch {e}: {n}" for e, n in enumerate(index.samples)),
    )
    return manifests


def _prepare_set(
    cfg: JobConfig, out_dir: Path, config: dict, tokenizer_fp: str, tokenizer: Callable[[], Any], overwrite: bool,
    progress: bool, epoch: int,
) -> Manifest:
    """Write one shard set (the sources' draw for ``epoch``) to ``out_dir``, or keep it if up to date."""
    config_fp = json_fingerprint(config)
    manifest = _existing_manifest(out_dir, config, config_fp, tokenizer_fp, overwrite)
    if manifest is not None:
        return manifest
    if out_dir.is_dir():
        foreign = [p.name for p in out_dir.iterdir()
                   if not (SHARD_NAME_RE.fullmatch(p.name) or p.name.startswith(MANIFEST_NAME))]
        if foreign:
            log.warning("%s also holds files that are not shards (%s); they are left alone", out_dir, foreign[:3])
        _clear(out_dir)

    task = get_task(cfg.task)
    skipped_total, stats_total = SkipReport(), task.new_feature_stats()
    meta = ShardMeta(task=task.name, tokenizer_fingerprint=tokenizer_fp, config_fingerprint=config_fp, config=config)
    meta.skipped = {"per_source": {}, "notes": []}
    meta.feature_stats = {"per_source": {}}

    method_records = getattr(_method(cfg), "prepare_records", None)

    def features():
        # A generator, so features stream into write_shards (which keeps them only encoded). It fills
        # ``meta`` as it goes; write_shards drains it before building the manifest, so meta is complete.
        for source in cfg.data.train:
            result = task.read(source, cfg.data, epoch=epoch)
            skipped_total.merge(result.skipped)
            meta.skipped["per_source"][source.name] = result.skipped.to_dict()
            meta.skipped["notes"] += [f"{source.name}: {note}" for note in result.notes]
            for kind, report in result.reports.items():
                meta.feature_stats.setdefault(kind, {})[source.name] = report
            stats = task.new_feature_stats()
            if method_records is not None:
                records, report = method_records(cfg, task, result, tokenizer(), stats)
                meta.feature_stats.setdefault(cfg.method.name, {})[source.name] = report
                yield from records
            else:
                # disable=None: no bar when stderr is not a terminal (a log file gets the summary lines only).
                examples = tqdm(result.examples, desc=f"featurising {source.name}", unit="example",
                                disable=None if progress else True)
                yield from task.shard_records(examples, tokenizer(), cfg, stats, source)
            stats_total.merge(stats)
            meta.feature_stats["per_source"][source.name] = stats.to_dict()
            log.info("source %s: %s", source.name, stats.summary())
        meta.skipped["total"] = skipped_total.to_dict()
        meta.feature_stats["total"] = stats_total.to_dict()

    manifest = write_shards(
        features(), out_dir, cfg.data.samples_per_shard, shuffle_seed=WRITE_SHUFFLE_SEED, meta=meta,
        progress=progress,
    )
    log.info(
        "prepared %d features in %d shards at %s\n  per group: %s\n  per source: %s\n  skipped: %s\n  features: %s",
        manifest.total_samples, len(manifest.shards), out_dir,
        ", ".join(f"{group} {n}" for group, n in manifest.groups.items()),
        ", ".join(f"{name} {n}" for name, n in manifest.sources.items()),
        skipped_total.summary(), stats_total.summary(),
    )
    return manifest
