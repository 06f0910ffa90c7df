"""The training stream: plan, determinism, equal batches per rank, exact resume, refusals, real 2-rank run."""

from __future__ import annotations

import itertools
import json
import logging
import math
import os
import signal
import subprocess
import sys
import textwrap
from collections import Counter
from dataclasses import replace
from pathlib import Path

import pytest
import torch

from tests.data.test_shards import make_features, qa_records
from xdist.config import DataConfig
from xdist.data.shards import MANIFEST_NAME, ShardError, ShardMeta, load_manifest, sample_key, write_shards
from xdist.data.stream import StreamError, TrainStream, make_plan

REPO = Path(__file__).resolve().parents[2]
LENGTH = 16


def _write(directory: Path, n_examples: int, per_shard: int, seed: int = 0):
    features = make_features(n_examples, LENGTH, seed=seed, max_windows=1)
    manifest = write_shards(qa_records(features), directory, per_shard, shuffle_seed=seed)
    return manifest, {sample_key(f.example_uid, f.window): f for f in features}


@pytest.fixture(scope="module")
def even(tmp_path_factory):
    """8 shards of 6 samples: 2 ranks x 2 workers get 12 samples each, 4 full batches of 3."""
    return _write(tmp_path_factory.mktemp("even"), 48, 6)


@pytest.fixture(scope="module")
def uneven(tmp_path_factory):
    """7 shards (6 x 6 + 1 x 5 samples): 2 ranks x 2 workers cannot be equal without repeats."""
    return _write(tmp_path_factory.mktemp("uneven"), 41, 6, seed=1)


def _cfg(**kw) -> DataConfig:
    return DataConfig(**{"num_workers": 2, "shuffle_buffer": 5, **kw})


def _epoch(stream: TrainStream, epoch: int, start: int = 0) -> list[dict]:
    return list(stream.iter_epoch(epoch, start))


def _keys(batches: list[dict]) -> list[tuple[str, ...]]:
    return [tuple(b["keys"]) for b in batches]


def _all_ranks(directory, world, batch, cfg, seed=7, epoch=0, workers=0):
    return [
        _epoch(TrainStream(directory, rank, world, batch, cfg, seed, num_workers=workers), epoch)
        for rank in range(world)
    ]


# --------------------------------------------------------------------------------------------------
# The plan
# --------------------------------------------------------------------------------------------------


def test_plan_assigns_every_shard_once_with_epoch_invariant_loads(uneven):
    manifest, _ = uneven
    plan = make_plan(manifest, world_size=2, micro_batch_size=4, data=_cfg(), seed=3)
    sizes = {s.name: s.samples for s in manifest.shards}
    assert plan.num_slots == 4 and plan.slots_per_rank == 2
    assignments = [plan.assignment(epoch) for epoch in range(6)]
    for slots in assignments:
        assert sorted(name for slot in slots for name in slot) == sorted(sizes)
        assert [sum(sizes[n] for n in slot) for slot in slots] == list(plan.slot_samples)
    assert len({str(a) for a in assignments}) > 1  # the shard permutation changes with the epoch
    assert plan.batches_per_slot == math.ceil(max(plan.slot_samples) / 4)
    assert plan.epoch_batches == 2 * plan.batches_per_slot
    assert plan.repeated_samples == 4 * plan.batches_per_slot * 4 - manifest.total_samples > 0


def test_batches_have_the_training_layout(even):
    manifest, features = even
    batches = _epoch(TrainStream(manifest.directory, 0, 1, 5, _cfg(num_workers=1), seed=0), 0)
    for batch in batches:
        for name in ("input_ids", "attention_mask", "token_type_ids"):
            assert batch[name].dtype == torch.long and batch[name].shape == (5, LENGTH)
        assert batch["start_positions"].dtype == torch.long and batch["start_positions"].shape == (5,)
        assert len(batch["keys"]) == len(batch["groups"]) == 5
        assert set(batch) == {"input_ids", "attention_mask", "token_type_ids", "start_positions", "end_positions",
                              "keys", "groups"}
        for row, key in enumerate(batch["keys"]):
            feature = features[key]
            assert batch["input_ids"][row].tolist() == feature.input_ids
            assert batch["attention_mask"][row].tolist() == feature.attention_mask
            assert batch["token_type_ids"][row].tolist() == feature.token_type_ids
            assert batch["start_positions"][row] == feature.start_position
            assert batch["end_positions"][row] == feature.end_position
            assert batch["groups"][row] == f"{feature.question_lang}-{feature.context_lang}"


# --------------------------------------------------------------------------------------------------
# Determinism and coverage
# --------------------------------------------------------------------------------------------------


def test_same_seed_and_epoch_give_identical_batches(even):
    manifest, _ = even
    first = _all_ranks(manifest.directory, 2, 3, _cfg())
    again = _all_ranks(manifest.directory, 2, 3, _cfg())
    assert [_keys(r) for r in first] == [_keys(r) for r in again]
    for a, b in zip(first[0], again[0], strict=True):
        assert torch.equal(a["input_ids"], b["input_ids"]) and torch.equal(a["end_positions"], b["end_positions"])
    other_epoch = _all_ranks(manifest.directory, 2, 3, _cfg(), epoch=1)
    other_seed = _all_ranks(manifest.directory, 2, 3, _cfg(), seed=8)
    assert [_keys(r) for r in other_epoch] != [_keys(r) for r in first]
    assert [_keys(r) for r in other_seed] != [_keys(r) for r in first]


def test_even_data_every_sample_exactly_once_per_epoch(even):
    manifest, features = even
    for epoch in (0, 1):
        ranks = _all_ranks(manifest.directory, 2, 3, _cfg(), epoch=epoch)
        assert [len(r) for r in ranks] == [4 * 2, 4 * 2]
        seen = Counter(k for r in ranks for b in r for k in b["keys"])
        assert set(seen) == set(features) and set(seen.values()) == {1}
    assert TrainStream(manifest.directory, 0, 2, 3, _cfg(), 7).plan.repeated_samples == 0


def test_uneven_data_equal_batches_every_sample_at_least_once(uneven):
    manifest, features = uneven
    for world, workers, batch in ((2, 2, 4), (3, 2, 5), (1, 2, 3), (7, 1, 2)):
        cfg = _cfg(num_workers=workers)
        streams = [TrainStream(manifest.directory, r, world, batch, cfg, seed=1) for r in range(world)]
        ranks = [_epoch(s, 0) for s in streams]
        assert {len(r) for r in ranks} == {streams[0].epoch_batches}, (world, workers, batch)
        assert all(len(b["keys"]) == batch for r in ranks for b in r)
        seen = Counter(k for r in ranks for b in r for k in b["keys"])
        assert set(seen) == set(features)
        assert sum(seen.values()) - len(features) == streams[0].plan.repeated_samples


def test_num_workers_zero_and_two_give_the_same_batches(uneven):
    manifest, _ = uneven
    in_process = _all_ranks(manifest.directory, 2, 4, _cfg(), workers=0)
    loaders = _all_ranks(manifest.directory, 2, 4, _cfg(), workers=2)
    assert [_keys(r) for r in in_process] == [_keys(r) for r in loaders]


# --------------------------------------------------------------------------------------------------
# Resume
# --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("workers", [0, 2])
def test_resume_continues_with_exactly_the_next_batch(uneven, workers):
    manifest, _ = uneven
    cfg = _cfg()
    full = _keys(_epoch(TrainStream(manifest.directory, 1, 2, 4, cfg, seed=5), 2))
    steps = range(len(full) + 1) if workers == 0 else (1, 3, len(full) - 1)
    for k in steps:
        first = TrainStream(manifest.directory, 1, 2, 4, cfg, seed=5, num_workers=workers)
        # Take k batches without pulling a (k+1)-th: the position counts delivered batches.
        head = _keys(list(itertools.islice(first.iter_epoch(2), k)))
        state = json.loads(json.dumps(first.state_dict()))  # it must survive a checkpoint's serialisation
        resumed = TrainStream(manifest.directory, 1, 2, 4, cfg, seed=5, num_workers=workers)
        resumed.load_state_dict(state)
        if k == len(full):
            assert resumed.position == (3, 0)  # a finished epoch rolls over
            continue
        assert resumed.position == (2, k)
        tail = _keys(list(resumed))
        assert head + tail == full, k
        assert resumed.position == (3, 0)


def test_resume_under_a_different_plan_is_refused(uneven):
    manifest, _ = uneven
    saved = TrainStream(manifest.directory, 0, 2, 4, _cfg(), seed=5)
    next(saved.iter_epoch(0))
    state = saved.state_dict()
    with pytest.raises(StreamError, match=r"world_size 2 -> 1.*resume with the values"):
        TrainStream(manifest.directory, 0, 1, 4, _cfg(), seed=5).load_state_dict(state)
    with pytest.raises(StreamError, match=r"micro_batch_size 4 -> 8"):
        TrainStream(manifest.directory, 0, 2, 8, _cfg(), seed=5).load_state_dict(state)
    with pytest.raises(StreamError, match=r"slots_per_rank 2 -> 1.*data\.num_workers"):
        TrainStream(manifest.directory, 0, 2, 4, _cfg(num_workers=1), seed=5).load_state_dict(state)
    with pytest.raises(StreamError, match="lacks or mistypes"):
        saved.load_state_dict({"epoch": 0})


def test_resume_on_rewritten_shards_is_refused(tmp_path):
    features = make_features(41, LENGTH, seed=1, max_windows=1)
    write_shards(qa_records(features), tmp_path / "a", 6, shuffle_seed=0)
    write_shards(qa_records(features), tmp_path / "b", 6, shuffle_seed=1)  # same counts, other content per shard
    state = TrainStream(tmp_path / "a", 0, 2, 4, _cfg(), seed=5).state_dict()
    with pytest.raises(StreamError, match=r"cannot resume the data stream exactly: .*shards '"):
        TrainStream(tmp_path / "b", 0, 2, 4, _cfg(), seed=5).load_state_dict(state)


# --------------------------------------------------------------------------------------------------
# Refusals and validation at start
# --------------------------------------------------------------------------------------------------


def test_too_few_shards_for_the_ranks_is_refused(tmp_path):
    manifest, _ = _write(tmp_path, 10, 100)
    assert len(manifest.shards) == 1
    with pytest.raises(StreamError, match=r"1 shards .* cannot feed 2 ranks.*data\.samples_per_shard <= 2 "):
        TrainStream(tmp_path, 0, 2, 2, _cfg(), seed=0)


def test_fewer_shards_than_slots_reduces_workers(tmp_path, caplog):
    manifest, _ = _write(tmp_path, 18, 6)
    assert len(manifest.shards) == 3
    with caplog.at_level(logging.INFO, logger="xdist.data.stream"):
        stream = TrainStream(tmp_path, 0, 2, 2, _cfg(num_workers=2), seed=0)
    assert stream.plan.slots_per_rank == 1 and stream.num_workers == 1
    assert "reduced from 2" in caplog.text


def test_uneven_refuse(uneven, even):
    manifest, _ = uneven
    with pytest.raises(StreamError, match=r"data\.uneven=refuse: .* would repeat \d+ samples"):
        TrainStream(manifest.directory, 0, 2, 4, _cfg(uneven="refuse"), seed=0)
    # Balanced slots whose last batch is partial only are accepted (12 samples per slot, batch 5).
    even_manifest, _ = even
    stream = TrainStream(even_manifest.directory, 0, 2, 5, _cfg(uneven="refuse"), seed=0)
    assert stream.plan.repeated_samples == 4 * (15 - 12)


def test_start_checks_tokenizer_and_max_length(tmp_path):
    tok = tmp_path / "tok"
    tok.mkdir()
    (tok / "tokenizer.json").write_text("{}")
    shards = tmp_path / "shards"
    write_shards(qa_records(make_features(8, LENGTH)), shards, 4, shuffle_seed=0,
                 meta=ShardMeta(tokenizer_fingerprint="0" * 64))
    with pytest.raises(ShardError, match="re-run `xdist prepare` with this tokenizer"):
        TrainStream(shards, 0, 1, 2, _cfg(), 0, tokenizer_path=tok)
    with pytest.raises(StreamError, match="max_length 16, but this run expects 32"):
        TrainStream(shards, 0, 1, 2, _cfg(), 0, max_length=32)
    with pytest.raises(StreamError, match=r"rank 2 is outside \[0, world_size=2\)"):
        TrainStream(shards, 2, 2, 2, _cfg(), 0)


def test_missing_manifest_or_shard_at_start(tmp_path):
    with pytest.raises(ShardError, match="no shard manifest here"):
        TrainStream(tmp_path, 0, 1, 2, _cfg(), 0)
    manifest, _ = _write(tmp_path / "s", 8, 4)
    (tmp_path / "s" / manifest.shards[1].name).unlink()
    with pytest.raises(ShardError, match="does not exist"):
        TrainStream(tmp_path / "s", 0, 1, 2, _cfg(), 0)


def test_shard_count_changed_behind_the_manifest_is_an_error(tmp_path):
    manifest, _ = _write(tmp_path, 12, 6)
    data = json.loads((tmp_path / MANIFEST_NAME).read_text())
    shard = data["shards"][0]
    cell = next(iter(shard["groups"]))
    shard["samples"] += 1
    shard["groups"][cell] += 1
    data["total_samples"] += 1
    (tmp_path / MANIFEST_NAME).write_text(json.dumps(data))
    load_manifest(tmp_path)  # sizes still match: only reading can tell
    stream = TrainStream(tmp_path, 0, 1, 2, _cfg(num_workers=0), 0)
    with pytest.raises(ShardError, match=r"train-000000\.tar: holds 6 samples, the manifest says 7"):
        _epoch(stream, 0)


# --------------------------------------------------------------------------------------------------
# Two real ranks (gloo), DataLoader workers, an all_reduce per batch: a hang fails the test by timeout
# --------------------------------------------------------------------------------------------------

RANK_SCRIPT = textwrap.dedent(
    """
    import json, os, sys
    from datetime import timedelta
    import torch
    import torch.distributed as dist
    from xdist.config import DataConfig
    from xdist.data.stream import TrainStream

    # A rank left waiting in a collective fails after 60 s instead of hanging (the test also times out).
    dist.init_process_group("gloo", timeout=timedelta(seconds=60))
    rank, world = dist.get_rank(), dist.get_world_size()
    results = {}
    for name in sys.argv[2:]:
        stream = TrainStream(name, rank, world, 3, DataConfig(num_workers=2, shuffle_buffer=4), seed=11)
        keys, batches = [], 0
        for epoch in range(2):
            for batch in stream.iter_epoch(epoch):
                total = torch.tensor([float(batch["input_ids"].shape[0])])
                dist.all_reduce(total)  # a rank with fewer batches would leave the others waiting here
                batches += 1
                keys += batch["keys"]
        gathered = [None] * world
        dist.all_gather_object(gathered, {"batches": batches, "keys": keys, "epoch_batches": stream.epoch_batches,
                                          "workers": stream.num_workers})
        results[name] = gathered
    dist.barrier()
    if rank == 0:
        with open(sys.argv[1], "w") as f:
            json.dump(results, f)
    dist.destroy_process_group()
    """
)


def test_two_ranks_with_dataloader_workers_take_equal_steps(tmp_path):
    three, features_three = _write(tmp_path / "three", 17, 6)  # 3 shards (6, 6, 5) on 2 ranks x 2 workers
    five, features_five = _write(tmp_path / "five", 27, 6, seed=2)  # 5 shards on 4 slots: one slot doubled
    assert len(three.shards) == 3 and len(five.shards) == 5
    script = tmp_path / "ranks.py"
    script.write_text(RANK_SCRIPT)
    out = tmp_path / "result.json"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore::FutureWarning"}
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", str(script),
               str(out), str(three.directory), str(five.directory)]
    # Own session, so that on a timeout the launcher *and* its ranks (and their DataLoader workers) are
    # killed together; killing only the launcher would leave hung ranks behind.
    launcher = subprocess.Popen(command, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                text=True, start_new_session=True)
    try:
        output, _ = launcher.communicate(timeout=120)
    except subprocess.TimeoutExpired:
        os.killpg(launcher.pid, signal.SIGKILL)
        launcher.communicate()
        pytest.fail("2-rank stream run did not finish in 120 s: a rank is waiting for a batch that never comes")
    assert launcher.returncode == 0, output[-3000:]
    results = json.loads(out.read_text())
    for manifest, features in ((three, features_three), (five, features_five)):
        ranks = results[str(manifest.directory)]
        epoch_batches = ranks[0]["epoch_batches"]
        assert [r["batches"] for r in ranks] == [2 * epoch_batches] * 2
        assert set(k for r in ranks for k in r["keys"]) == set(features)
    assert [r["workers"] for r in results[str(three.directory)]] == [1, 1]  # 3 shards: 1 reader per rank
    assert [r["workers"] for r in results[str(five.directory)]] == [2, 2]


def test_default_worker_count_follows_the_config(even):
    manifest, _ = even
    assert TrainStream(manifest.directory, 0, 2, 3, _cfg(num_workers=0), 0).plan.slots_per_rank == 1
    assert TrainStream(manifest.directory, 0, 2, 3, replace(_cfg(), num_workers=4), 0).num_workers == 4
    with pytest.raises(StreamError, match="must be 0 or 4"):
        TrainStream(manifest.directory, 0, 2, 3, _cfg(num_workers=4), 0, num_workers=3)
