"""The training stream: micro-batches from the webdataset shards, split across ranks and workers.

webdataset reads and shuffles tar shards well, but gives none of the three things a multi-rank run
needs (see docs/anchors.md §3): with uneven shards ranks receive different batch counts and DDP/ZeRO
hangs at the end of the epoch; its node/worker split has no notion of equal quotas; and it cannot resume
mid-epoch. This module adds them on top, planning every epoch from the manifest alone:

1. **Reader slots.** A rank is always ``W`` logical reader slots (``W = data.num_workers``, at least 1),
   slot ``rank * W + w``; the world has ``N = world_size * W`` slots. Fewer shards than ranks is refused
   at start; fewer shards than slots reduces ``W`` to ``shards // world_size`` (logged), never hangs.
2. **Per-epoch assignment.** Shards are permuted by ``(seed, epoch)``, stably sorted by size (largest
   first) and dealt greedily to the least-loaded slot (ties: lowest slot). For equal-size shards this is
   plain round-robin of the permutation; because the deal depends on sizes only, every slot's sample
   count is the same in every epoch, so the epoch length is a constant of the plan.
3. **Equal quotas.** Every slot yields exactly ``q = ceil(max_slot_samples / micro_batch_size)`` full
   micro-batches per epoch, so every rank takes ``W * q`` steps. A slot with fewer samples continues with
   re-shuffled passes over its own shards until it has ``q * micro_batch_size``; nothing is dropped and
   the number of repeated samples is known from the manifest (``plan.repeated_samples``).
   ``uneven: refuse`` turns any repeat beyond completing a last partial batch into an error at start.
4. **Deterministic order.** Within a slot a webdataset shuffle buffer runs on a ``random.Random`` seeded
   by ``(seed, epoch, slot, pass)``. The rank's batch ``i`` is local batch ``i // W`` of its logical slot
   ``i % W``: exactly the round-robin order in which a ``DataLoader`` with ``W`` workers returns batches,
   and the order the in-process reader (``num_workers=0``) reproduces, so both give the same batches.
5. **Exact resume.** ``state_dict()`` holds ``(epoch, step)`` plus the plan's parameters;
   ``iter_epoch(epoch, start_step)`` continues with exactly batch ``start_step``: each slot re-reads and
   re-shuffles its raw (undecoded) samples up to its position, skipping without decoding or collating,
   and DataLoader workers are rotated so that its round-robin starts at the right slot.
6. **Per-epoch shard sets.** A shard directory written for per-epoch cross-lingual sampling holds one
   shard set per epoch (``epochs.json`` + ``epoch-NNN/``, see :mod:`xdist.data.prepare`). Epoch ``e``
   reads set ``e mod n_sets`` (a warning when a run has more epochs than sets), with its own plan: every
   guarantee above holds per epoch, but the sets' sizes differ slightly (languages tokenise into
   different numbers of windows), so the epoch length is :meth:`TrainStream.batches_in_epoch`. A resume
   checks the plan of its epoch's set and the fingerprint of all the sets.
"""

from __future__ import annotations

import heapq
import itertools
import logging
import math
import os
import random
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import webdataset as wds
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from xdist.config import DataConfig
from xdist.data.epochs import EPOCH_INDEX_NAME, load_epoch_index
from xdist.data.shards import (
    MANIFEST_NAME,
    ArraySpec,
    Manifest,
    ShardError,
    ShardSample,
    check_tokenizer,
    decode_sample,
    json_fingerprint,
    load_manifest,
    raw_samples,
    tokenizer_fingerprint,
)
from xdist.errors import UserError

log = logging.getLogger(__name__)

Batch = dict[str, Any]
"""A micro-batch: one tensor per array field of the shards, stacked over the rows (integer fields as long:
QA's ``input_ids``, ``attention_mask``, ``token_type_ids`` [B, L] and ``start_positions``,
``end_positions`` [B]), plus ``keys`` and ``groups`` (lists of B strings: sample keys and groups)."""


class StreamError(UserError, ValueError):
    """The stream cannot be planned or resumed as asked; the message says why and what to change."""


# --------------------------------------------------------------------------------------------------
# The plan: everything decided from the manifest, before any tar is opened
# --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class StreamPlan:
    """Epoch-invariant plan of the stream for one world size and micro-batch size."""

    shards: tuple[tuple[str, int], ...]
    """(name, samples) of every shard, in manifest order."""
    world_size: int
    slots_per_rank: int
    """Logical reader slots per rank (= DataLoader workers per rank when they run as processes)."""
    requested_slots_per_rank: int
    """``max(1, data.num_workers)`` before any reduction for lack of shards."""
    micro_batch_size: int
    seed: int
    shuffle_buffer: int
    slot_samples: tuple[int, ...]
    """Distinct samples read by each slot per epoch (the same in every epoch, see module docstring)."""
    batches_per_slot: int
    """``q``: micro-batches every slot yields per epoch."""
    shard_set: str
    """Fingerprint of the shards' names, counts and sha256: a resume must read the very same shards."""
    checksums: dict[str, str] = field(default_factory=dict, compare=False)
    """sha256 of every shard (by name) to verify as it is read; empty when ``data.verify_checksums`` is off."""

    @property
    def num_slots(self) -> int:
        return self.world_size * self.slots_per_rank

    @property
    def epoch_batches(self) -> int:
        """Micro-batches per rank per epoch, identical on every rank."""
        return self.batches_per_slot * self.slots_per_rank

    @property
    def total_samples(self) -> int:
        return sum(samples for _, samples in self.shards)

    @property
    def repeated_samples(self) -> int:
        """Samples read a second (or later) time per epoch, over all ranks, to equalise the quotas."""
        quota = self.batches_per_slot * self.micro_batch_size
        return sum(quota - n for n in self.slot_samples)

    def parameters(self) -> dict[str, Any]:
        """What determines the batch order; saved with the position so a resume can be checked."""
        return {
            "world_size": self.world_size,
            "micro_batch_size": self.micro_batch_size,
            "slots_per_rank": self.slots_per_rank,
            "seed": self.seed,
            "shuffle_buffer": self.shuffle_buffer,
            "shards": self.shard_set,
        }

    @property
    def fingerprint(self) -> str:
        return json_fingerprint(self.parameters())

    def assignment(self, epoch: int) -> list[list[str]]:
        """Shard names of every slot (index ``rank * slots_per_rank + worker``) in ``epoch``."""
        order = list(self.shards)
        random.Random(f"xdist-stream/shards/{self.seed}/{epoch}").shuffle(order)
        # Stable sort by size: the permutation survives among equal-size shards (all but the last one
        # for shards written by write_shards), and the loads below depend on the sizes alone.
        order.sort(key=lambda shard: -shard[1])
        return [[name for name, _ in slot] for slot in _deal(order, self.num_slots)]

    def describe(self) -> str:
        quota = self.batches_per_slot * self.micro_batch_size
        reduced = (
            f" (reduced from {self.requested_slots_per_rank}: not enough shards)"
            if self.slots_per_rank < self.requested_slots_per_rank else ""
        )
        return (
            f"{len(self.shards)} shards, {self.total_samples} samples; {self.world_size} ranks x "
            f"{self.slots_per_rank} reader slots{reduced} = {self.num_slots} slots of {min(self.slot_samples)}"
            f"-{max(self.slot_samples)} samples; {self.epoch_batches} micro-batches of {self.micro_batch_size} "
            f"per rank per epoch ({quota} samples per slot); {self.repeated_samples} repeated samples per "
            f"epoch ({100.0 * self.repeated_samples / self.total_samples:.1f}%)"
        )


def _deal(shards: list[tuple[str, int]], num_slots: int) -> list[list[tuple[str, int]]]:
    """Deal shards, in the given order, each to the least-loaded slot (ties: the lowest slot index).

    Given shards sorted by size, the slot loads depend on the sizes alone, not on the order among
    equal sizes: that is what keeps every slot's sample count, and so the epoch length, epoch-invariant.
    """
    slots: list[list[tuple[str, int]]] = [[] for _ in range(num_slots)]
    heap = [(0, slot) for slot in range(num_slots)]
    for shard in shards:
        load, slot = heapq.heappop(heap)
        slots[slot].append(shard)
        heapq.heappush(heap, (load + shard[1], slot))
    return slots


def make_plan(
    manifest: Manifest, world_size: int, micro_batch_size: int, data: DataConfig, seed: int
) -> StreamPlan:
    """Plan the stream from the manifest; raise :class:`StreamError` if it cannot feed every rank."""
    if world_size <= 0:
        raise StreamError(f"world_size must be positive, got {world_size}")
    if micro_batch_size <= 0:
        raise StreamError(f"train.micro_batch_size must be positive, got {micro_batch_size}")
    shards = [(s.name, s.samples) for s in manifest.shards]
    total = manifest.total_samples
    requested = max(1, data.num_workers)
    if len(shards) < world_size:
        per_slot = total // (world_size * requested) or total // world_size
        fix = (
            f"re-run `xdist prepare` with data.samples_per_shard <= {per_slot} (now {manifest.samples_per_shard})"
            if per_slot > 0 else f"the data set has only {total} samples: fewer than one per rank"
        )
        raise StreamError(
            f"{len(shards)} shards in {manifest.directory} cannot feed {world_size} ranks (every rank needs at "
            f"least one shard, ideally data.num_workers={requested} of them); {fix}"
        )
    slots_per_rank = min(requested, len(shards) // world_size)
    by_size = sorted(shards, key=lambda shard: -shard[1])
    slot_samples = [sum(n for _, n in slot) for slot in _deal(by_size, world_size * slots_per_rank)]
    batches_per_slot = math.ceil(max(slot_samples) / micro_batch_size)
    plan = StreamPlan(
        shards=tuple(shards),
        world_size=world_size,
        slots_per_rank=slots_per_rank,
        requested_slots_per_rank=requested,
        micro_batch_size=micro_batch_size,
        seed=seed,
        shuffle_buffer=data.shuffle_buffer,
        slot_samples=tuple(slot_samples),
        batches_per_slot=batches_per_slot,
        shard_set=json_fingerprint([[s.name, s.samples, s.sha256] for s in manifest.shards]),
        checksums={s.name: s.sha256 for s in manifest.shards} if data.verify_checksums else {},
    )
    if data.uneven == "refuse":
        short = [(slot, n) for slot, n in enumerate(slot_samples) if math.ceil(n / micro_batch_size) < batches_per_slot]
        if short:
            slot, n = short[0]
            raise StreamError(
                f"data.uneven=refuse: the {plan.num_slots} reader slots ({world_size} ranks x {slots_per_rank}) "
                f"would hold {min(slot_samples)}-{max(slot_samples)} samples; slot {slot} has {n} samples "
                f"= {math.ceil(n / micro_batch_size)} micro-batches of {micro_batch_size}, but every slot must "
                f"yield {batches_per_slot} so that all ranks take the same number of steps. "
                f"Equalising would repeat {plan.repeated_samples} samples per epoch. Use data.uneven=repeat, or "
                f"re-run prepare so the shard count is a multiple of {plan.num_slots} with equal shards"
            )
    return plan


# --------------------------------------------------------------------------------------------------
# Reading one slot (runs inside a DataLoader worker, or in-process)
# --------------------------------------------------------------------------------------------------


def _checked_counts(raw: Iterator[dict[str, Any]], expected: dict[str, int]) -> Iterator[dict[str, Any]]:
    """Pass samples through, checking that each shard holds as many samples as the manifest says.

    A shard that changed on disk after planning would silently change a rank's batch count, which is
    exactly the hang this stream exists to prevent; so it is an error instead.
    """
    url, count = None, 0

    def check(url: str | None, count: int) -> None:
        if url is not None and count != expected[url]:
            raise ShardError(f"{url}: holds {count} samples, the manifest says {expected[url]}; re-run prepare")

    for sample in raw:
        if sample["__url__"] != url:
            check(url, count)
            url, count = sample["__url__"], 0
        count += 1
        yield sample
    check(url, count)


def _slot_raw_stream(plan: StreamPlan, directory: Path, epoch: int, slot: int) -> Iterator[dict[str, Any]]:
    """The slot's undecoded samples, shuffled: pass 0 over its shards, then re-shuffled repeat passes."""
    names = plan.assignment(epoch)[slot]
    sizes = dict(plan.shards)
    urls = [str(directory / name) for name in names]
    expected = {str(directory / name): sizes[name] for name in names}
    checksums = {str(directory / name): plan.checksums[name] for name in names} if plan.checksums else None
    for pass_index in itertools.count():
        rng = random.Random(f"xdist-stream/samples/{plan.seed}/{epoch}/{slot}/{pass_index}")
        order = list(urls)
        if pass_index > 0:
            rng.shuffle(order)
        shuffle = wds.shuffle(plan.shuffle_buffer, initial=plan.shuffle_buffer, rng=rng)
        yield from shuffle(_checked_counts(raw_samples(order, checksums), expected))


def collate(samples: list[ShardSample]) -> Batch:
    """Stack decoded samples into a micro-batch: every array field, whatever the task wrote, as a torch
    tensor ``[B, *shape]`` (integer and boolean fields as int64, float fields keep their dtype), plus the
    ``keys`` and ``groups`` lists."""
    batch: Batch = {}
    for name in samples[0].arrays:
        stacked = np.stack([s.arrays[name] for s in samples])
        if stacked.dtype.kind in "biu":
            stacked = stacked.astype(np.int64)
        batch[name] = torch.from_numpy(stacked)
    batch["keys"] = [s.key for s in samples]
    batch["groups"] = [s.group for s in samples]
    return batch


def value_bounds(fields: dict[str, ArraySpec], vocab_size: int | None) -> dict[str, tuple[int, int]]:
    """Half-open ranges that a set's integer fields must keep: token ids below ``vocab_size`` (when known),
    and positions (fields named ``*_positions``, QA's answer start/end) inside the sequence of ``input_ids``.

    A flipped bit in an id or a label would otherwise train silently or crash many steps later with an
    ``IndexError`` naming no file."""
    bounds = {}
    if "input_ids" in fields:
        if vocab_size is not None:
            bounds["input_ids"] = (0, vocab_size)
        length = fields["input_ids"].shape[-1] if fields["input_ids"].shape else None
        for name in fields:
            if name.endswith("_positions") and length is not None:
                bounds[name] = (0, length)
    return bounds


def slot_batches(
    plan: StreamPlan, directory: Path, fields: dict[str, ArraySpec], epoch: int, slot: int, skip_batches: int = 0,
    bounds: dict[str, tuple[int, int]] | None = None,
) -> Iterator[Batch]:
    """Exactly ``plan.batches_per_slot - skip_batches`` full micro-batches of one slot in ``epoch``.

    Every sample is range-checked as it is decoded (``bounds``, see :func:`value_bounds`): a corrupt value is
    refused naming shard and sample."""
    size = plan.micro_batch_size
    quota = plan.batches_per_slot * size
    raw = itertools.islice(_slot_raw_stream(plan, directory, epoch, slot), skip_batches * size, quota)
    while chunk := list(itertools.islice(raw, size)):
        if len(chunk) != size:  # cannot happen: the quota is a multiple of the batch size
            raise RuntimeError(f"slot {slot}: partial batch of {len(chunk)}")
        yield collate([decode_sample(sample, fields, bounds) for sample in chunk])


def _rank_workers(plan: StreamPlan, rank: int, start_step: int) -> list[tuple[int, int]]:
    """(slot, batches to skip) for each of the rank's W readers, rotated for a start at ``start_step``.

    The rank's batch ``i`` is local batch ``i // W`` of logical slot ``i % W``. A DataLoader always
    starts its round-robin at worker 0, so worker ``w`` reads logical slot ``(w + start_step) % W``
    from its local batch ``(w + start_step) // W``; then output ``t`` is rank batch ``start_step + t``.
    """
    width = plan.slots_per_rank
    return [(rank * width + (w + start_step) % width, (w + start_step) // width) for w in range(width)]


class _EpochDataset(IterableDataset):
    """One epoch of one rank, from ``start_step``; each DataLoader worker is one reader slot."""

    def __init__(self, plan: StreamPlan, directory: Path, fields: dict[str, ArraySpec], rank: int, epoch: int,
                 start_step: int, bounds: dict[str, tuple[int, int]] | None = None):
        super().__init__()
        self.plan, self.directory, self.fields, self.bounds = plan, directory, fields, bounds
        self.rank, self.epoch, self.start_step = rank, epoch, start_step

    def _reader(self, worker: int) -> Iterator[Batch]:
        slot, skip = _rank_workers(self.plan, self.rank, self.start_step)[worker]
        return slot_batches(self.plan, self.directory, self.fields, self.epoch, slot, skip, self.bounds)

    def __iter__(self) -> Iterator[Batch]:
        info = get_worker_info()
        if info is not None:
            if info.num_workers != self.plan.slots_per_rank:
                raise StreamError(
                    f"DataLoader has {info.num_workers} workers, the plan has {self.plan.slots_per_rank} slots"
                )
            return self._reader(info.id)
        return self._interleave()

    def _interleave(self) -> Iterator[Batch]:
        # In-process: the same round-robin over the same rotated readers as the DataLoader's workers.
        readers = [self._reader(w) for w in range(self.plan.slots_per_rank)]
        for step in range(self.start_step, self.plan.epoch_batches):
            yield next(readers[(step - self.start_step) % len(readers)])


# --------------------------------------------------------------------------------------------------
# The public stream
# --------------------------------------------------------------------------------------------------


class TrainStream:
    """Training micro-batches of one rank: equal count on every rank, deterministic, resumable.

    ``num_workers`` (default ``data.num_workers``) is how many DataLoader *processes* read: 0 (in this
    process) or the plan's ``slots_per_rank``; both give the same batches in the same order.
    ``tokenizer_path``, ``max_length`` and ``task``, when given, are checked against the manifest at start;
    ``vocab_size``, when given, bounds every token id read, and positions (fields named ``*_positions``) must
    index the sequence: a value outside is refused naming shard and sample (:func:`value_bounds`).
    ``manifest_dir`` is a shard directory, or the root of per-epoch shard sets (module docstring, item 6):
    then epoch ``e`` reads set ``e mod num_shard_sets`` and its length is :meth:`batches_in_epoch`.

    Typical loop (the position goes into the checkpoint's client state)::

        stream = TrainStream(cfg.data.shards, rank, world, cfg.train.micro_batch_size, cfg.data, cfg.train.seed)
        total_batches = stream.total_batches(cfg.train.epochs)  # per-epoch sets may differ in length
        if resuming:
            stream.load_state_dict(client_state["stream"])
        epoch, step = stream.position
        for epoch in range(epoch, cfg.train.epochs):
            for batch in stream.iter_epoch(epoch, step):
                ...  # client_state["stream"] = stream.state_dict() when checkpointing
            step = 0
    """

    def __init__(
        self,
        manifest_dir: str | os.PathLike,
        rank: int,
        world_size: int,
        micro_batch_size: int,
        data: DataConfig,
        seed: int,
        *,
        tokenizer_path: str | os.PathLike | None = None,
        max_length: int | None = None,
        task: str | None = None,
        num_workers: int | None = None,
        pin_memory: bool = False,
        vocab_size: int | None = None,
    ):
        if not 0 <= rank < world_size:
            raise StreamError(f"rank {rank} is outside [0, world_size={world_size})")
        index = load_epoch_index(manifest_dir)
        if index is None:
            self.manifests = [load_manifest(manifest_dir)]
        else:
            if (Path(manifest_dir) / MANIFEST_NAME).exists():
                raise StreamError(
                    f"{manifest_dir} holds both a shard manifest and per-epoch shard sets ({EPOCH_INDEX_NAME}); "
                    "re-run `xdist prepare --overwrite`"
                )
            self.manifests = [load_manifest(index.set_dir(manifest_dir, e)) for e in range(len(index.sets))]
        # Hashed once: a tokenizer.json is megabytes, and per-epoch runs check one shard set per epoch.
        fingerprint = None if tokenizer_path is None else tokenizer_fingerprint(tokenizer_path)
        for manifest in self.manifests:
            if tokenizer_path is not None:
                check_tokenizer(manifest, tokenizer_path, fingerprint)
            if task is not None and task != manifest.task:
                raise StreamError(
                    f"{manifest.directory}: shards hold samples of task {manifest.task!r}, but this run's task is "
                    f"{task!r} (config field 'task'); re-run `xdist prepare` or point data.shards elsewhere"
                )
            if max_length is not None and max_length != manifest.max_length:
                raise StreamError(
                    f"{manifest.directory}: shards hold features of max_length {manifest.max_length}, "
                    f"but this run expects {max_length} (features.max_length); re-run `xdist prepare`"
                )
        self.rank = rank
        self.plans = [make_plan(m, world_size, micro_batch_size, data, seed) for m in self.manifests]
        workers = data.num_workers if num_workers is None else num_workers
        if workers < 0:
            raise StreamError(f"num_workers must be >= 0, got {workers}")
        # Every set is planned with the same requested slots; a small set may reduce them (make_plan).
        slots = min(plan.slots_per_rank for plan in self.plans)
        self.num_workers = min(workers, slots)
        if 0 < self.num_workers < max(plan.slots_per_rank for plan in self.plans):
            raise StreamError(
                f"num_workers={workers}: must be 0 or {self.plan.slots_per_rank} (one process per reader slot)"
                + ("; the per-epoch shard sets allow different slot counts" if len(self.plans) > 1 else "")
            )
        self.pin_memory = pin_memory
        self.vocab_size = vocab_size
        self._epoch, self._step = 0, 0
        self._warned_wrap = False
        for number, plan in enumerate(self.plans):
            what = ""
            if len(self.plans) > 1:
                what = f"shard set {number} of {len(self.plans)} ({self.manifests[number].directory.name}), "
            (log.info if rank == 0 else log.debug)("train stream (rank %d): %s%s", rank, what, plan.describe())
            if rank == 0 and plan.repeated_samples > 0.1 * plan.total_samples:
                log.warning(
                    "%d of %d samples per epoch (%.0f%%) are repeats that equalise %d reader slots of %d-%d samples; "
                    "more, smaller shards (data.samples_per_shard) or fewer workers reduce them",
                    plan.repeated_samples, plan.total_samples, 100.0 * plan.repeated_samples / plan.total_samples,
                    plan.num_slots, min(plan.slot_samples), max(plan.slot_samples),
                )

    @property
    def manifest(self) -> Manifest:
        """The manifest of epoch 0's shard set (the only one without per-epoch sets); see :meth:`manifest_for`."""
        return self.manifests[0]

    @property
    def plan(self) -> StreamPlan:
        """The plan of epoch 0's shard set; see :meth:`plan_for`."""
        return self.plans[0]

    @property
    def num_shard_sets(self) -> int:
        """1, or the number of per-epoch shard sets."""
        return len(self.plans)

    def plan_for(self, epoch: int) -> StreamPlan:
        """The plan of the shard set that ``epoch`` reads (set ``epoch mod num_shard_sets``)."""
        return self.plans[epoch % len(self.plans)]

    def manifest_for(self, epoch: int) -> Manifest:
        """The manifest of the shard set that ``epoch`` reads (e.g. to cache a teacher's logits over it)."""
        return self.manifests[epoch % len(self.manifests)]

    def batches_in_epoch(self, epoch: int) -> int:
        """Micro-batches per rank in ``epoch``; the same on every rank."""
        return self.plan_for(epoch).epoch_batches

    def total_batches(self, epochs: int) -> int:
        """Micro-batches per rank in epochs ``0 .. epochs-1`` together."""
        return sum(self.batches_in_epoch(epoch) for epoch in range(epochs))

    @property
    def epoch_batches(self) -> int:
        """Micro-batches per epoch of epoch 0 (of every epoch with a single shard set; with per-epoch sets,
        use :meth:`batches_in_epoch`)."""
        return self.plan.epoch_batches

    @property
    def position(self) -> tuple[int, int]:
        """(epoch, step) of the next batch to be delivered; a finished epoch rolls over to (epoch+1, 0)."""
        if self._step >= self.batches_in_epoch(self._epoch):
            return self._epoch + 1, 0
        return self._epoch, self._step

    def iter_epoch(self, epoch: int, start_step: int = 0) -> Iterator[Batch]:
        """Batches ``start_step, ..., batches_in_epoch(epoch) - 1`` of ``epoch`` on this rank."""
        if epoch < 0 or not 0 <= start_step <= self.batches_in_epoch(epoch):
            raise StreamError(
                f"position (epoch {epoch}, step {start_step}) is outside [0, {self.batches_in_epoch(max(epoch, 0))}]"
            )
        if len(self.plans) > 1 and epoch >= len(self.plans) and not self._warned_wrap and self.rank == 0:
            log.warning(
                "epoch %d: only %d per-epoch shard sets were prepared (train.epochs when `xdist prepare` ran); "
                "epoch e reads set e mod %d, so draws repeat from here on", epoch, len(self.plans), len(self.plans),
            )
            self._warned_wrap = True
        self._epoch, self._step = epoch, start_step
        return self._deliver(epoch, start_step)

    def _deliver(self, epoch: int, start_step: int) -> Iterator[Batch]:
        plan, manifest = self.plan_for(epoch), self.manifest_for(epoch)
        dataset = _EpochDataset(plan, manifest.directory, manifest.fields, self.rank, epoch, start_step,
                                value_bounds(manifest.fields, self.vocab_size))
        source: Any = dataset
        if self.num_workers > 0 and start_step < plan.epoch_batches:
            # Our own generator: otherwise starting the workers draws their base seed from the global torch
            # RNG, which shifts dropout masks and breaks exact resume (a resumed run starts its loader at
            # a different point of the RNG stream than the uninterrupted run did).
            seeds = torch.Generator().manual_seed(plan.seed * 1_000_003 + epoch)
            source = DataLoader(
                dataset, batch_size=None, num_workers=self.num_workers, persistent_workers=False,
                pin_memory=self.pin_memory, generator=seeds,
            )
        delivered = start_step
        for batch in source:
            delivered += 1
            self._epoch, self._step = epoch, delivered
            yield batch
        if delivered != plan.epoch_batches:
            raise RuntimeError(
                f"rank {self.rank} epoch {epoch}: delivered {delivered} batches, planned {plan.epoch_batches}"
            )

    def __iter__(self) -> Iterator[Batch]:
        """Continue from the current position to the end of its epoch."""
        epoch, step = self.position
        return self.iter_epoch(epoch, step)

    def _sets_fingerprint(self) -> str | None:
        """Fingerprint of every per-epoch shard set (None with a single set, keeping its state unchanged)."""
        if len(self.plans) == 1:
            return None
        return json_fingerprint([plan.shard_set for plan in self.plans])

    def state_dict(self) -> dict[str, Any]:
        """Position and plan parameters (of the position's shard set), for DeepSpeed's ``client_state``."""
        epoch, step = self.position
        plan = self.plan_for(epoch)
        state = {
            "epoch": epoch,
            "step": step,
            "seed": plan.seed,
            "plan": plan.parameters(),
            "plan_fingerprint": plan.fingerprint,
        }
        if len(self.plans) > 1:
            state["shard_sets"] = self._sets_fingerprint()
        return state

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore a position saved by :meth:`state_dict`; refuse if the plan changed since."""
        try:
            epoch, step, saved = int(state["epoch"]), int(state["step"]), dict(state["plan"])
            fingerprint = state["plan_fingerprint"]
        except (KeyError, TypeError, ValueError) as err:
            raise StreamError(f"stream state {state!r} lacks or mistypes {err}") from None
        if state.get("shard_sets") != self._sets_fingerprint():
            raise StreamError(
                "cannot resume the data stream exactly: the checkpoint was saved with "
                f"{'different per-epoch shard sets' if state.get('shard_sets') else 'a single shard set'}, "
                f"the shard directory now holds {len(self.plans)} set(s); resume with the shards it was saved with"
            )
        plan = self.plan_for(epoch)
        if fingerprint != plan.fingerprint:
            now = plan.parameters()
            changed = ", ".join(f"{k} {saved.get(k)!r} -> {v!r}" for k, v in now.items() if saved.get(k) != v)
            raise StreamError(
                "cannot resume the data stream exactly: the checkpoint's position was saved under a different "
                f"plan ({changed or 'plan fingerprint differs'}). The shard-to-rank assignment and the batches "
                "per epoch depend on world size, micro-batch size, reader slots (data.num_workers), seed, "
                "shuffle buffer and the shards; resume with the values the checkpoint was saved with"
            )
        if not 0 <= step <= plan.epoch_batches:
            raise StreamError(f"stream state step {step} is outside [0, {plan.epoch_batches}]")
        self._epoch, self._step = epoch, step
