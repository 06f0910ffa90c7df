"""``xdist bench CONFIG``: stream throughput and training throughput of a job, printed as a table.

A benchmark, not a test: it measures on whatever machine it runs and asserts nothing.
- stream: features/s of one reader process (rank 0 of 1, no DataLoader workers) over one epoch of
  the prepared shards, including tar reading, decoding, shuffling, collation and the shards' sha256
  verification (``data.verify_checksums``); the verification's own cost is timed apart (hashing every
  shard once, best of 3) and reported as a share of the epoch's stream time, because the difference of
  two throughput runs drowns in noise on a busy machine;
- training: samples/s over all ranks of ``--nproc`` ranks running the config's training (steps after
  the first few, so start-up and the first iterations' allocations are excluded).
"""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

from xdist.config import JobConfig


def stream_throughput(cfg: JobConfig, *, verify_checksums: bool | None = None) -> tuple[float, int]:
    """(features/s, features) for one epoch read by a single in-process reader."""
    from xdist.data.stream import TrainStream

    data = replace(cfg.data, num_workers=0)
    if verify_checksums is not None:
        data = replace(data, verify_checksums=verify_checksums)
    stream = TrainStream(
        cfg.data.shards, rank=0, world_size=1, micro_batch_size=cfg.train.micro_batch_size, data=data,
        seed=cfg.train.seed,
    )
    start, rows = time.perf_counter(), 0
    for batch in stream.iter_epoch(0):
        rows += batch["input_ids"].shape[0]
    return rows / (time.perf_counter() - start), rows


def checksum_seconds(cfg: JobConfig) -> tuple[float, int]:
    """(seconds, bytes): hashing every training shard once (sha256, what the stream's verification adds to
    reading them; the bytes are read first, so this is the hash alone), best of 3."""
    import hashlib

    from xdist.data.stream import TrainStream

    stream = TrainStream(cfg.data.shards, rank=0, world_size=1, micro_batch_size=cfg.train.micro_batch_size,
                         data=replace(cfg.data, num_workers=0), seed=cfg.train.seed)
    blobs = [m.shard_path(s).read_bytes() for m in stream.manifests for s in m.shards]
    best = float("inf")
    for _ in range(3):
        start = time.perf_counter()
        for blob in blobs:
            hashlib.sha256(blob).hexdigest()
        best = min(best, time.perf_counter() - start)
    return best, sum(len(b) for b in blobs)


def training_throughput(config_path: str, overrides: list[str], nproc: int, steps: int) -> dict:
    """Run ``xdist train`` for ``steps`` optimizer steps on ``nproc`` ranks; samples/s from its step log."""
    with tempfile.TemporaryDirectory() as tmp:
        command = [
            sys.executable, "-m", "xdist.cli", "train", config_path, *sum((["--set", o] for o in overrides), []),
            "--set", f"train.max_steps={steps}", "--set", f"train.output_dir={tmp}", "--set", "train.export=false",
            "--set", "train.checkpoint_every=null", "--set", "train.eval_every=null", "--set", "eval.sets=[]",
            "--set", "train.log_every=1", "--nproc", str(nproc),
        ]
        start = time.perf_counter()
        subprocess.run(command, check=True)
        wall = time.perf_counter() - start
        records = [json.loads(line) for line in (Path(tmp) / "train_log.jsonl").read_text().splitlines()]
    if len(records) < 3:
        raise ValueError(f"--steps {steps}: need at least 3 logged steps to time, got {len(records)}")
    skip = min(3, len(records) - 2)  # the first steps pay for allocations and warm-up
    timed = records[skip:]
    elapsed = timed[-1]["time"] - records[skip - 1]["time"]
    return {"steps_timed": len(timed), "seconds": elapsed, "wall_s": wall, "records": records}


def run_bench(cfg: JobConfig, config_path: str, overrides: list[str], *, nproc: int, steps: int) -> None:
    features_s, n = stream_throughput(cfg)
    hash_s, shard_bytes = checksum_seconds(cfg)
    epoch_s = n / features_s
    train = training_throughput(config_path, overrides, nproc, steps)
    global_batch = cfg.train.micro_batch_size * cfg.train.gradient_accumulation_steps * nproc
    samples_s = train["steps_timed"] * global_batch / train["seconds"]
    rows = [
        ("stream: features/s (1 reader process)", f"{features_s:,.0f}", f"{n} features, L={cfg.features.max_length}"),
        ("stream: sha256 of the shards (MB/s)", f"{shard_bytes / hash_s / 1e6:,.0f}",
         f"{hash_s * 1e3:.1f} ms per epoch = {100 * hash_s / epoch_s:.2f}% of its stream time "
         f"({shard_bytes / 1e6:.1f} MB)"),
        (f"train: samples/s ({nproc} ranks)", f"{samples_s:,.1f}",
         f"{train['steps_timed']} steps x global batch {global_batch}, {cfg.train.precision}"),
        ("train: launch wall time (s)", f"{train['wall_s']:.1f}", f"{steps} steps incl. start-up"),
    ]
    width = max(len(r[0]) for r in rows)
    print(f"\nxdist bench — {platform.node()} ({os.cpu_count()} CPUs), {time.strftime('%Y-%m-%d')}")
    print(f"{'measure'.ljust(width)} | {'value':>10} | notes")
    print(f"{'-' * width}-|-{'-' * 10}-|------")
    for name, value, note in rows:
        print(f"{name.ljust(width)} | {value:>10} | {note}")
