"""Teacher-logit cache: run the teacher once per generation over the training shards, keep its logits.

Beyond the paper (Carrino et al. run the teacher online on every batch). With a cache the student's
epoch needs no teacher forward pass; the teacher pass itself runs in inference mode with large batches,
and a fixed teacher's cache serves every epoch (and every run that shares the shards and the teacher).

Layout: ``<dir>/rank<r>-of-<R>.npz`` per rank (each rank computes the logits of its share: the shards
with index ``r mod R``, or items ``r, r+R, ...``) and ``<dir>/COMPLETE`` once all ranks are done. Files
hold plain arrays (``np.load`` without pickle): ``keys`` (str), and either

- ``full``: ``logits`` [N, *S, L] float32 — the teacher's logits exactly (a bf16 teacher's values are
  representable in float32, so the loss equals the online teacher's bit for bit), or
- ``topk``: ``values`` [N, *S, K] float32, ``indices`` [N, *S, K] int32 and ``rest_lse`` [N, *S] float32,
  the log-sum-exp of ``t/T`` over the positions outside the top K (of the last axis).

Any logits shape works: SKD's span logits are [2, L] per feature (start/end), a classifier's [C].

**Several teachers, raw texts** (:func:`build_text_teacher_cache`, :class:`MultiTeacherCache`; MBLM's
monolingual teachers): each teacher has its own directory and its own items, keyed by example uid; the
teacher is loaded, computes the logits of its items from their raw inputs (its own tokenizer, through the
``compute`` function it is given) and is released before the next one is loaded, so at most one teacher
is resident while the cache is built and none during the student's epochs.

**The top-k approximation.** The dense logits are rebuilt with the top-K values in place and every
other position set to ``T·(rest_lse − log(L − K))``: the teacher's probability mass outside the top K
is exact in total but spread uniformly over those positions. The KD term is therefore exact on the top
K and approximate on the tail (its entropy is overestimated); the ranking — hence the mAP@k/AP@k/MRR
coefficient, for k ≤ K — is unchanged, because the filled value ``T·log(mean exp(t/T))`` over the tail
is at most the tail's maximum, which is at most the K-th largest value. Cached logits are only valid
for the temperature they were built with (``rest_lse`` depends on T).

A ZeRO-3-partitioned teacher (``method.teacher_partition: zero3``) gathers its parameters in every
forward, a collective: every rank must run the same number of forwards, but the ranks' shard subsets
differ in size. The builder then keeps them in step (one tiny all-reduce per batch: does any rank still
have a batch?): a rank that has run out runs a one-row dummy batch and discards its output.

Memory: every rank loads the whole cache (``full``: 8·L bytes per feature and head pair, e.g. 132 MB
for 43k features at L = 384); use ``topk`` at larger scale.
"""

from __future__ import annotations

import gc
import logging
import math
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from xdist.data.shards import ArraySpec, Manifest, decode_sample, raw_samples
from xdist.data.stream import Batch, collate
from xdist.distributed import DistEnv, barrier
from xdist.errors import UserError
from xdist.monitor import show_progress
from xdist.weights import is_partitioned

log = logging.getLogger("xdist.cache")


class CacheError(UserError, ValueError):
    """A cache directory does not fit the run (built for another teacher/data) or the items are unusable."""


class TeacherCache:
    """One teacher's logits [*S, L] for every key (a training sample of one shard set and one generation,
    or an example uid)."""

    def __init__(self, keys: list[str], mode: str, length: int, temperature: float, arrays: dict[str, np.ndarray]):
        self.mode = mode
        self.length = length
        self.temperature = temperature
        self.index = {key: i for i, key in enumerate(keys)}
        self.arrays = arrays

    def __len__(self) -> int:
        return len(self.index)

    def logits(self, keys: list[str], device: torch.device) -> torch.Tensor:
        """Teacher logits [B, *S, L] (float32) for the samples ``keys`` (dense; rebuilt for ``topk``)."""
        try:
            rows = np.asarray([self.index[k] for k in keys])
        except KeyError as err:
            raise KeyError(f"teacher cache has no logits for sample {err}; rebuild it (delete the cache dir)") from None
        if self.mode == "full":
            return torch.from_numpy(self.arrays["logits"][rows]).to(device)
        values = torch.from_numpy(self.arrays["values"][rows])  # [B, *S, K]
        indices = torch.from_numpy(self.arrays["indices"][rows].astype(np.int64))  # [B, *S, K]
        rest_lse = torch.from_numpy(self.arrays["rest_lse"][rows])  # [B, *S]
        rest = self.length - values.shape[-1]
        fill = self.temperature * (rest_lse - math.log(rest)) if rest > 0 else rest_lse * 0
        # At most the tail's maximum, hence the K-th value (``values`` is sorted), in exact arithmetic; float32
        # rounding can lift it an ulp above when the tail is constant, which would rank the tail first.
        fill = torch.minimum(fill, values[..., -1])
        dense = fill.unsqueeze(-1).expand(*fill.shape, self.length).clone()
        dense.scatter_(-1, indices, values)
        return dense.to(device)


def _compress(logits: torch.Tensor, topk: int, temperature: float) -> dict[str, np.ndarray]:
    """Top-k values/indices per head and the log-sum-exp of ``t/T`` over the rest."""
    k = min(topk, logits.shape[-1])
    values, indices = torch.topk(logits, k, dim=-1)
    scaled = logits / temperature
    in_top = torch.zeros_like(logits, dtype=torch.bool).scatter_(-1, indices, True)
    rest_lse = torch.logsumexp(scaled.masked_fill(in_top, -math.inf), dim=-1)
    return {"values": values.numpy(), "indices": indices.to(torch.int32).numpy(), "rest_lse": rest_lse.numpy()}


@torch.no_grad()
def build_teacher_cache(
    task: Any,
    teacher: torch.nn.Module,
    manifest: Manifest,
    directory: Path,
    dist: DistEnv,
    *,
    mode: str,
    topk: int,
    temperature: float,
    batch_size: int,
) -> TeacherCache:
    """Compute (or reuse, if complete) the cache of ``teacher`` over ``manifest``'s shards; load it.

    Collective: every rank calls it (each computes a share of the shards, then all load everything). With
    a ZeRO-3-partitioned teacher the ranks also run equally many forwards (padding passes; see above).
    ``task`` gives the logits (:meth:`xdist.tasks.base.Task.logits`).
    """
    directory.mkdir(parents=True, exist_ok=True)
    if not (directory / "COMPLETE").is_file():
        shards = manifest.shards[dist.rank :: dist.world_size]
        keys: list[str] = []
        parts: list[dict[str, np.ndarray]] = []
        device = next(teacher.parameters()).device
        batches = _batches(raw_samples([str(manifest.shard_path(s)) for s in shards]), manifest.fields, batch_size)
        collective = is_partitioned(teacher) and dist.world_size > 1
        padding = 0
        with tqdm(total=sum(s.samples for s in shards), desc="teacher cache", disable=not show_progress(dist.is_main),
                  leave=False) as bar:
            for batch in (_in_step(batches, dist) if collective else batches):
                if batch is None:  # this rank is done, another is not: a forward for the collective only
                    task.logits(teacher, _dummy_batch(manifest.fields, task.model_inputs), device)
                    padding += 1
                    continue
                logits = task.logits(teacher, batch, device).float().cpu()  # [B, 2, L]
                parts.append({"logits": logits.numpy()} if mode == "full" else _compress(logits, topk, temperature))
                keys.extend(batch["keys"])
                bar.update(len(batch["keys"]))
        if padding:
            log.info("teacher cache: rank %d ran %d padding forwards to keep the partitioned teacher in step",
                     dist.rank, padding)
        _write_part(directory, dist, keys, parts, f"{mode} topk={topk} T={temperature}")
    return load_teacher_cache(directory, dist.world_size, mode=mode, length=manifest.max_length,
                              temperature=temperature)


def _write_part(directory: Path, dist: DistEnv, keys: list[str], parts: list[dict[str, np.ndarray]],
                note: str, length: int | None = None) -> None:
    """Write this rank's part, then (rank 0, once every rank has) ``COMPLETE`` holding ``note``. Collective.
    ``length``: the logits' last axis, recorded for readers that do not know it beforehand."""
    mine = directory / f"rank{dist.rank}-of-{dist.world_size}.npz"
    arrays = {name: np.concatenate([p[name] for p in parts]) for name in parts[0]} if parts else {}
    if length is not None:
        arrays["length"] = np.asarray(length, dtype=np.int64)
    tmp = mine.with_suffix(".tmp.npz")
    np.savez(tmp, keys=np.asarray(keys, dtype=str), **arrays)
    tmp.rename(mine)
    barrier()
    if dist.is_main:
        (directory / "COMPLETE").write_text(note + "\n")
    barrier()


def _batches(raws: Iterator, fields: dict[str, ArraySpec], batch_size: int) -> Iterator[Batch]:
    """Batches of ``batch_size`` samples (the last one shorter), collated like the training stream's."""
    samples: list = []
    for raw in raws:
        samples.append(decode_sample(raw, fields))
        if len(samples) == batch_size:
            yield collate(samples)
            samples = []
    if samples:
        yield collate(samples)


def _in_step(batches: Iterator[Batch], dist: DistEnv) -> Iterator[Batch | None]:
    """``batches``, then ``None`` until every rank has run out of batches (collective: all ranks iterate)."""
    pending = iter(batches)
    while True:
        batch = next(pending, None)
        more = torch.tensor([int(batch is not None)], device=dist.device)
        torch.distributed.all_reduce(more, op=torch.distributed.ReduceOp.MAX)
        if not more.item():
            return
        yield batch


def _dummy_batch(fields: dict[str, ArraySpec], model_inputs: tuple[str, ...]) -> Batch:
    """A one-row input of zeros with one visible position, for a padding forward (output discarded)."""
    batch = {name: torch.zeros(1, *fields[name].shape, dtype=torch.long) for name in model_inputs if name in fields}
    if "attention_mask" in batch:
        batch["attention_mask"].view(-1)[0] = 1
    return batch


def load_teacher_cache(directory: Path, world_size: int, *, mode: str, length: int, temperature: float) -> TeacherCache:
    """Load every rank's part of a complete cache directory."""
    keys: list[str] = []
    parts: dict[str, list[np.ndarray]] = {}
    for rank in range(world_size):
        path = directory / f"rank{rank}-of-{world_size}.npz"
        if not path.is_file():
            raise FileNotFoundError(f"teacher cache {directory} lacks {path.name}; delete the directory to rebuild it")
        with np.load(path, allow_pickle=False) as data:
            keys.extend(data["keys"].tolist())
            for name in data.files:
                if name not in ("keys", "length"):
                    parts.setdefault(name, []).append(data[name])
    arrays = {name: np.concatenate(chunks) for name, chunks in parts.items()}
    expected = {"full": {"logits"}, "topk": {"values", "indices", "rest_lse"}}[mode]
    if keys and set(arrays) != expected:
        raise ValueError(f"teacher cache {directory} holds {sorted(arrays)}, expected {sorted(expected)} ({mode})")
    log.info("teacher cache %s: %d samples (%s)", directory, len(keys), mode)
    return TeacherCache(keys, mode, length, temperature, arrays)


# --------------------------------------------------------------------------------------------------
# Several teachers over raw examples (MBLM)
# --------------------------------------------------------------------------------------------------

Compute = Callable[[list[Any]], torch.Tensor]
"""Logits [n, *S, L] of a list of n raw items (the teacher tokenises them itself), under no_grad."""


@torch.no_grad()
def build_text_teacher_cache(
    load_teacher: Callable[[], Compute],
    items: Sequence[tuple[str, Any]],
    directory: Path,
    dist: DistEnv,
    *,
    fingerprint: str,
    batch_size: int,
    mode: str = "full",
    topk: int = 20,
    temperature: float = 1.0,
) -> TeacherCache:
    """Compute (or reuse) one teacher's logits of ``items`` — ``(uid, raw item)`` pairs, the same list in
    the same order on every rank — and load them, keyed by uid.

    ``load_teacher()`` is called only when the cache has to be computed; it returns the ``compute``
    function (which holds the teacher); both are dropped before this returns, so the teacher does not
    outlive the build. Rank r computes items ``r, r+R, ...`` (a replicated teacher: no collective
    forward). ``fingerprint`` (teacher, tokenizer, data, length...) is written into ``COMPLETE``; a complete
    cache with another fingerprint is an error, never silently reused. Collective: every rank calls it.
    """
    seen: set[str] = set()
    for uid, _ in items:
        if uid in seen:
            raise CacheError(f"teacher cache {directory}: uid {uid!r} occurs twice; one teacher needs unique uids")
        seen.add(uid)
    note = f"{mode} topk={topk} T={temperature} {fingerprint}"
    complete = directory / "COMPLETE"
    if complete.is_file():
        found = complete.read_text().strip()
        if found != note:
            raise CacheError(f"teacher cache {directory} was built for {found!r}, not {note!r}; delete the directory "
                             "to rebuild it")
    else:
        directory.mkdir(parents=True, exist_ok=True)
        mine = items[dist.rank :: dist.world_size]
        keys: list[str] = []
        parts: list[dict[str, np.ndarray]] = []
        length = None
        if mine:
            compute = load_teacher()
            with tqdm(total=len(mine), desc=f"teacher cache {directory.name}", disable=not show_progress(dist.is_main),
                      leave=False) as bar:
                for start in range(0, len(mine), batch_size):
                    chunk = mine[start : start + batch_size]
                    logits = compute([item for _, item in chunk]).detach().float().cpu()
                    if logits.shape[0] != len(chunk):
                        raise ValueError(f"teacher cache {directory}: {len(chunk)} items gave {logits.shape[0]} rows")
                    parts.append({"logits": logits.numpy()} if mode == "full" else _compress(logits, topk, temperature))
                    keys.extend(uid for uid, _ in chunk)
                    length = logits.shape[-1]
                    bar.update(len(chunk))
            del compute  # the teacher goes with it (see MultiTeacherCache.build)
        _write_part(directory, dist, keys, parts, note, length)
    length = _stored_length(directory, dist.world_size)
    return load_teacher_cache(directory, dist.world_size, mode=mode, length=length, temperature=temperature)


def _stored_length(directory: Path, world_size: int) -> int:
    """L, the last axis of the stored logits, as recorded by the ranks that computed any (0 if none did)."""
    for rank in range(world_size):
        path = directory / f"rank{rank}-of-{world_size}.npz"
        if not path.is_file():
            raise FileNotFoundError(f"teacher cache {directory} lacks {path.name}; delete the directory to rebuild it")
        with np.load(path, allow_pickle=False) as data:
            if "length" in data.files:
                return int(data["length"])
    return 0


class MultiTeacherCache:
    """Several teachers' logits, each keyed by example uid: the teacher of each row is named per row."""

    def __init__(self, caches: dict[str, TeacherCache]) -> None:
        self.caches = caches

    def logits(self, teachers: Sequence[str], keys: Sequence[str], device: torch.device) -> torch.Tensor:
        """Row b: teacher ``teachers[b]``'s logits of example ``keys[b]`` -> [B, *S, L] float32."""
        if len(teachers) != len(keys):
            raise ValueError(f"{len(teachers)} teacher names for {len(keys)} keys")
        rows: dict[str, list[int]] = {}
        for b, name in enumerate(teachers):
            if name not in self.caches:
                raise KeyError(f"no teacher for {name!r} in the cache (teachers: {sorted(self.caches)})")
            rows.setdefault(name, []).append(b)
        out: torch.Tensor | None = None
        for name, index in rows.items():
            part = self.caches[name].logits([keys[b] for b in index], torch.device("cpu"))
            if out is None:
                out = part.new_empty((len(keys), *part.shape[1:]))
            out[index] = part
        if out is None:
            raise ValueError("MultiTeacherCache.logits: no rows")
        return out.to(device)

    @staticmethod
    def build(
        teachers: dict[str, Callable[[], Compute]],
        items: dict[str, Sequence[tuple[str, Any]]],
        directory: Path,
        dist: DistEnv,
        *,
        fingerprints: dict[str, str],
        batch_size: int,
        mode: str = "full",
        topk: int = 20,
        temperature: float = 1.0,
    ) -> MultiTeacherCache:
        """Each teacher's cache under ``directory/<name>``, built one teacher at a time (each loaded, used and
        released before the next: :func:`build_text_teacher_cache`). Collective."""
        missing = sorted(set(teachers) ^ set(items))
        if missing:
            raise CacheError(f"teachers and items name different languages: {missing}")
        caches = {}
        for name, load in teachers.items():
            caches[name] = build_text_teacher_cache(
                load, items[name], directory / name, dist, fingerprint=fingerprints[name], batch_size=batch_size,
                mode=mode, topk=topk, temperature=temperature)
            gc.collect()  # the teacher's last references go now, not at some later collection
        return MultiTeacherCache(caches)
