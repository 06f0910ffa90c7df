"""``xdist prepare``: raw sources → examples → features → webdataset shards + manifest.

Every source of ``data.train`` is read (:func:`xdist.data.readers.read_source`), featurised with the
configured tokenizer (:mod:`xdist.data.features`) and written to ``data.shards``
(:func:`xdist.data.shards.write_shards`). The manifest records two fingerprints: the tokenizer's files
and the part of the config that decides the shards' content. A shard directory whose manifest carries
the same fingerprints is up to date and left alone; one with different fingerprints, or with files of
an interrupted run, is only replaced when asked (``overwrite=True``, ``xdist prepare --overwrite``).
"""

from __future__ import annotations

import dataclasses
import logging
from pathlib import Path
from typing import Any

from tqdm.auto import tqdm

from xdist.config import JobConfig
from xdist.data.features import FeatureStats, iter_features, load_tokenizer
from xdist.data.readers import SkipReport, read_source
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
    data, features = cfg.data, cfg.features
    return {
        "format_version": FORMAT_VERSION,
        "shuffle_seed": WRITE_SHUFFLE_SEED,
        "data": {
            "train": [dataclasses.asdict(source) for source in data.train],
            "title_split": dataclasses.asdict(data.title_split),
            "samples_per_shard": data.samples_per_shard,
            "bad_records": data.bad_records,
        },
        "features": {
            "max_length": features.max_length,
            "doc_stride": features.doc_stride,
            "max_query_length": features.max_query_length,
        },
    }


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


def _existing_manifest(
    out_dir: Path, config: dict, config_fp: str, tokenizer_fp: str, overwrite: bool
) -> Manifest | None:
    """The manifest of an up-to-date shard directory, or None when shards must be (re)written.

    Raises :class:`ShardError` when the directory holds other shards and ``overwrite`` is False.
    """
    ours = existing_shard_files(out_dir)
    if not ours:
        return None
    try:
        manifest = load_manifest(out_dir)
    except ShardError as err:
        if overwrite:
            return None
        raise ShardError(
            f"{out_dir} holds shards that cannot be used ({err}); run prepare with overwrite=True "
            "(xdist prepare --overwrite) to rebuild them"
        ) from None
    same_config = manifest.config_fingerprint == config_fp
    same_tokenizer = manifest.tokenizer_fingerprint == tokenizer_fp
    if same_config and same_tokenizer and not overwrite:
        log.info("%s is up to date (%d samples in %d shards); nothing to do", out_dir, manifest.total_samples,
                 len(manifest.shards))
        return manifest
    if not overwrite:
        reasons = []
        if not same_config:
            reasons.append(f"config changed ({_config_changes(manifest.config, config) or 'fingerprint differs'})")
        if not same_tokenizer:
            reasons.append("the tokenizer's files changed")
        raise ShardError(
            f"{out_dir} holds shards written from a different setup: {', '.join(reasons)}; run prepare with "
            "overwrite=True (xdist prepare --overwrite) to replace them, or set data.shards to a new directory"
        )
    return None


def _clear(out_dir: Path) -> None:
    """Remove our shard and manifest files (never anything else) before rewriting."""
    removed = 0
    for path in existing_shard_files(out_dir):
        path.unlink()
        removed += 1
    tmp = out_dir / (MANIFEST_NAME + ".tmp")
    if tmp.exists():
        tmp.unlink()
    log.info("removed %d old shard/manifest files from %s", removed, out_dir)


def prepare(cfg: JobConfig, *, overwrite: bool = False, progress: bool = True) -> Manifest:
    """Read, featurise and shard ``cfg.data.train`` into ``cfg.data.shards``; return the manifest.

    If the directory already holds shards of the same config and tokenizer, nothing is done (unless
    ``overwrite``). Raises :class:`ShardError` when it holds different shards and ``overwrite`` is
    False, and the readers' ``DataError`` for bad sources.
    """
    if not cfg.data.train:
        raise ShardError("config field 'data.train': no training sources listed; nothing to prepare")
    out_dir = Path(cfg.data.shards)
    config = shards_config(cfg)
    config_fp = json_fingerprint(config)
    tokenizer_fp = tokenizer_fingerprint(cfg.features.tokenizer)
    manifest = _existing_manifest(out_dir, config, config_fp, tokenizer_fp, overwrite)
    if manifest is not None:
        return manifest
    if out_dir.is_dir():
        foreign = [p.name for p in out_dir.iterdir()
                   if not (SHARD_NAME_RE.fullmatch(p.name) or p.name.startswith(MANIFEST_NAME))]
        if foreign:
            log.warning("%s also holds files that are not shards (%s); they are left alone", out_dir, foreign[:3])
        _clear(out_dir)

    tokenizer = load_tokenizer(cfg.features.tokenizer)
    skipped_total, stats_total = SkipReport(), FeatureStats()
    meta = ShardMeta(tokenizer_fingerprint=tokenizer_fp, config_fingerprint=config_fp, config=config)
    meta.skipped = {"per_source": {}, "notes": []}
    meta.feature_stats = {"per_source": {}}

    def features():
        # A generator, so features stream into write_shards (which keeps them only encoded). It fills
        # ``meta`` as it goes; write_shards drains it before building the manifest, so meta is complete.
        for source in cfg.data.train:
            result = read_source(source, cfg.data)
            skipped_total.merge(result.skipped)
            meta.skipped["per_source"][source.name] = result.skipped.to_dict()
            meta.skipped["notes"] += [f"{source.name}: {note}" for note in result.notes]
            stats = FeatureStats()
            examples = tqdm(result.examples, desc=f"featurising {source.name}", unit="example", disable=not progress)
            yield from iter_features(examples, tokenizer, cfg.features, stats)
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
        "prepared %d features in %d shards at %s\n  per pair: %s\n  per source: %s\n  skipped: %s\n  features: %s",
        manifest.total_samples, len(manifest.shards), out_dir,
        ", ".join(f"{cell} {n}" for cell, n in manifest.pairs.items()),
        ", ".join(f"{name} {n}" for name, n in manifest.sources.items()),
        skipped_total.summary(), stats_total.summary(),
    )
    return manifest
