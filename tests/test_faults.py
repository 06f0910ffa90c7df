"""Faults never cost a run (issue 11): checkpoints commit atomically and are verified, corrupt shards and
non-finite losses are caught, signals reach every rank, hung collectives time out, failed jobs restart.

In process (fast): the checkpoint protocol at every point an interruption can leave it, shard checks,
the non-finite policy, validation. Slow: a fault-injection suite of real 2-rank jobs through the CLI on
the tiny job of ``tests/cli_helpers.py`` — each job checks several things.
"""

from __future__ import annotations

import io
import json
import math
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from tests.cli_helpers import ENV, HAS_DATA, REPO, step_losses, xdist
from tests.conftest import DATA_DIR
from tests.data.test_shards import make_features, qa_records
from xdist import checkpoint
from xdist.config import ConfigError, DataConfig, TrainConfig, load_config
from xdist.data.shards import ShardError, decode_sample, load_manifest, raw_samples, write_shards
from xdist.data.stream import TrainStream, value_bounds
from xdist.errors import EXIT_USER_ERROR
from xdist.faults import WATCHDOG_EXIT_CODE, NonFiniteError, NonFiniteGuard, die_with_parent, json_safe

# --------------------------------------------------------------------------------------------------
# checkpoints: the commit protocol, in process
# --------------------------------------------------------------------------------------------------


def fake_save(directory: Path, step: int, run_id: str, *, keep_last: int | None = None, commit: bool = True) -> Path:
    """What checkpoint.save leaves after DeepSpeed wrote two ranks' files into the temporary directory, then
    (``commit``) the real commit: manifest, rename, tag file, prune."""
    tmp = directory / f"{checkpoint.PARTIAL_PREFIX}step{step}-{run_id}"
    tmp.mkdir(parents=True)
    rng = np.random.default_rng(step)
    entries = {}
    for name in ("mp_rank_00_model_states.pt", "zero_pp_rank_1_mp_rank_00_optim_states.pt"):
        (tmp / name).write_bytes(rng.bytes(1000 + step))
        entries[name] = {"bytes": 1000 + step, "sha256": checkpoint.file_sha256(tmp / name)}
    if commit:
        checkpoint.commit(tmp, directory, step=step, world_size=2, run_id=run_id, entries=entries,
                          keep_last=keep_last)
    return tmp


def flip_byte(path: Path, offset: int | None = None) -> None:
    data = bytearray(path.read_bytes())
    offset = len(data) // 2 if offset is None else offset
    data[offset] ^= 0x40
    path.write_bytes(bytes(data))


def test_checkpoint_resume_falls_back_past_every_interruption(tmp_path):
    ckpt = tmp_path / "checkpoints"
    for step in (4, 8):
        fake_save(ckpt, step, "run-a")
        time.sleep(0.01)  # distinct commit times
    assert checkpoint.find_resumable(ckpt) == checkpoint.Resumable("step8", ())

    # Killed while DeepSpeed wrote step 12 (files but no manifest) or before the rename: never a candidate.
    partial = fake_save(ckpt, 12, "run-a", commit=False)
    assert checkpoint.find_resumable(ckpt).tag == "step8"
    assert checkpoint.remove_partials(ckpt) == [partial.name] and not partial.exists()

    # Committed but killed before the tag update: latest still names step8, both verify; step8 is used.
    fake_save(ckpt, 12, "run-a")
    (ckpt / "latest").write_text("step8")
    assert checkpoint.find_resumable(ckpt).tag == "step8"

    # A flipped byte (same size) in the tagged checkpoint: skipped with the reason, newest verified used.
    (ckpt / "latest").write_text("step12")
    flip_byte(ckpt / "step12" / "zero_pp_rank_1_mp_rank_00_optim_states.pt")
    found = checkpoint.find_resumable(ckpt)
    assert found.tag == "step8"
    assert found.skipped == ("step12: zero_pp_rank_1_mp_rank_00_optim_states.pt: sha256 differs from the manifest "
                             "(corrupt)",)

    # Truncated, missing, extra file; no manifest (DeepSpeed's own layout); unreadable manifest.
    (ckpt / "step8" / "mp_rank_00_model_states.pt").write_bytes(b"x" * 10)
    fake_save(ckpt, 16, "run-a")
    (ckpt / "step16" / "stray.pt").write_bytes(b"?")
    (ckpt / "step20").mkdir()
    (ckpt / "step20" / "mp_rank_00_model_states.pt").write_bytes(b"ds")
    found = checkpoint.find_resumable(ckpt)
    assert found.tag == "step4", found
    assert found.skipped == (
        "step16: stray.pt is not in the manifest",
        "step12: zero_pp_rank_1_mp_rank_00_optim_states.pt: sha256 differs from the manifest (corrupt)",
        "step8: mp_rank_00_model_states.pt is 10 bytes, the manifest says 1008",
    )

    # The tag file must be a plain name: a path is refused (reported) and never followed.
    (ckpt / "latest").write_text("../step4")
    found = checkpoint.find_resumable(ckpt)
    assert found.tag == "step4"
    assert "names '../step4', not a checkpoint name of the form step<N>: ignored" in found.skipped[0]
    (ckpt / "step4" / checkpoint.MANIFEST_NAME).write_text("{not json")
    found = checkpoint.find_resumable(ckpt)
    assert found.tag is None
    assert found.skipped[-2:] == (
        "step20: no MANIFEST (an interrupted save, or written by another program)",
        "step4: unreadable MANIFEST (Expecting property name enclosed in double quotes: line 1 column 2 (char 1))",
    )


def test_checkpoint_prune_counts_only_the_run_and_keeps_the_newest(tmp_path):
    ckpt = tmp_path / "checkpoints"
    for step in (10, 20, 30):  # an older run in the same directory
        fake_save(ckpt, step, "old", keep_last=5)
    for step in (1, 2, 3):  # a fresh run: keep_last=2 deletes only its own
        fake_save(ckpt, step, "new", keep_last=2)
    names = sorted(p.name for p in ckpt.iterdir())
    assert names == ["latest", "step10", "step2", "step20", "step3", "step30"]
    assert (ckpt / "latest").read_text() == "step3"
    # A restart of the fresh run resumes its own newest, never the older run's higher step.
    assert checkpoint.find_resumable(ckpt, run_id="new").tag == "step3"
    (ckpt / "latest").write_text("step30")
    assert checkpoint.find_resumable(ckpt, run_id="new").tag == "step3"
    assert checkpoint.find_resumable(ckpt).tag == "step30"
    # Re-committing an existing tag swaps it atomically; pruning never deletes the one just committed.
    fake_save(ckpt, 3, "new", keep_last=1)
    assert checkpoint.verify(ckpt / "step3") is None and not (ckpt / "step2").exists()
    with pytest.raises(ValueError):
        checkpoint.prune(ckpt, keep_last=0, keep="step3", run_id="new")


# --------------------------------------------------------------------------------------------------
# data integrity, in process
# --------------------------------------------------------------------------------------------------


def test_flipped_byte_in_a_shard_is_refused_before_its_samples_are_used(tmp_path):
    manifest = write_shards(qa_records(make_features(24)), tmp_path, samples_per_shard=8, shuffle_seed=0)
    bad = manifest.shards[1]
    flip_byte(tmp_path / bad.name, offset=3000)  # inside a sample; the size stays what the manifest says
    load_manifest(tmp_path)  # the cheap start-up checks (sizes) pass
    data = DataConfig(shards=str(tmp_path), num_workers=0, shuffle_buffer=1)
    stream = TrainStream(tmp_path, rank=0, world_size=1, micro_batch_size=2, data=data, seed=0)
    urls = [str(tmp_path / s.name) for s in manifest.shards]
    bad_keys = {s["__key__"] for s in raw_samples([str(tmp_path / bad.name)])}
    seen = []
    with pytest.raises(ShardError) as err:
        for batch in stream.iter_epoch(0):
            seen.extend(batch["keys"])
    assert f"{tmp_path / bad.name}: sha256" in str(err.value) and "re-run `xdist prepare --overwrite`" in str(err.value)
    assert seen and not bad_keys & set(seen), "no sample of the corrupt shard may reach a batch"
    # Without verification the corrupt shard is read (what data.verify_checksums=false trades away).
    assert sum(1 for _ in raw_samples(urls)) == manifest.total_samples


def test_decode_refuses_token_ids_and_positions_out_of_range(tmp_path):
    manifest = write_shards(qa_records(make_features(4, length=16)), tmp_path, samples_per_shard=100, shuffle_seed=0)
    fields = manifest.fields
    url = str(tmp_path / "train-000000.tar")
    raw = next(raw_samples([url]))
    bounds = value_bounds(fields, vocab_size=119547)
    assert bounds == {"input_ids": (0, 119547), "start_positions": (0, 16), "end_positions": (0, 16)}
    decode_sample(raw, fields, bounds)
    with pytest.raises(ShardError, match=rf"{url}: sample '{raw['__key__']}': input_ids value \d+ at position \d+ is "
                                         r"outside \[0, 100\)"):
        decode_sample(raw, fields, value_bounds(fields, vocab_size=100))
    with pytest.raises(ShardError, match=rf"sample '{raw['__key__']}': end_positions value 16 is outside \[0, 16\)"):
        decode_sample({**raw, "end_positions.npy": npy(np.int64(16))}, fields, bounds)
    with pytest.raises(ShardError, match=r"start_positions value -3 is outside \[0, 16\)"):
        decode_sample({**raw, "start_positions.npy": npy(np.int64(-3))}, fields, bounds)
    # The whole shard decodes under the real bounds (a few microseconds per sample, no sync).
    assert len([decode_sample(r, fields, bounds) for r in raw_samples([url])]) >= 4


def npy(value: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, np.asarray(value), allow_pickle=False)
    return buffer.getvalue()


# --------------------------------------------------------------------------------------------------
# non-finite values, validation, dying with the parent
# --------------------------------------------------------------------------------------------------


def test_nonfinite_policy_and_json_log():
    values = {"loss": float("nan"), "loss/ce": 1.5, "loss/kd": float("inf")}
    assert NonFiniteGuard.bad_values(values, grad_norm=float("inf")) == ["loss", "loss/kd", "grad_norm"]
    assert NonFiniteGuard.bad_values({"loss": 2.0}, grad_norm=None) == []
    with pytest.raises(NonFiniteError, match=r"step 7: non-finite loss, grad_norm \(loss=nan\); stopped because "
                                             r"train.on_nonfinite is 'stop'"):
        NonFiniteGuard("stop", 3).check(7, ["loss", "grad_norm"], values)
    guard = NonFiniteGuard("skip", 2)
    assert [guard.check(s, ["loss"], values) for s in (1, 2)] == ["skip", "skip"]
    assert guard.check(3, [], {"loss": 1.0}) == "ok" and guard.consecutive == 0  # a finite step resets
    assert guard.check(4, ["loss"], values) == "skip"
    assert guard.check(5, ["loss"], values) == "skip"
    with pytest.raises(NonFiniteError, match="3 non-finite steps in a row"):
        guard.check(6, ["loss"], values)
    assert NonFiniteGuard("rollback", 1).check(1, ["loss"], values) == "rollback"

    record = json_safe({"step": 3, "loss": float("nan"), "grad_norm": float("-inf"), "lr": 0.1})
    line = json.dumps(record, allow_nan=False)  # strict JSON: no bare NaN/Infinity tokens
    assert json.loads(line) == {"step": 3, "loss": None, "grad_norm": None, "lr": 0.1,
                                "nonfinite": ["loss", "grad_norm"]}


def test_validation_rejects_adam_eps_and_rank_counts(tmp_path, capsys):
    config = tmp_path / "job.yaml"
    config.write_text("train: {lr: 1.0e-3}\n")
    for eps in ("0", "-1e-8"):
        with pytest.raises(ConfigError, match=r"config field 'train.adam_eps': expected a positive number"):
            load_config(config, [f"train.adam_eps={eps}"])
    with pytest.raises(ConfigError, match="'collective_timeout_s': expected a positive number of seconds"):
        TrainConfig(collective_timeout_s=0)
    from xdist.cli import main

    for value in ("0", "-1", "two"):
        with pytest.raises(SystemExit) as exit_info:
            main(["train", "cfg.yaml", "--nproc", value])
        assert exit_info.value.code == 2
        assert "argument --nproc: expected a positive integer" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["train", "cfg.yaml", "--max-restarts", "-1"])
    assert "argument --max-restarts: expected an integer >= 0" in capsys.readouterr().err


def test_a_child_dies_with_its_parent(tmp_path):
    """die_with_parent: kill -9 of the parent takes the child along (what ranks and torchrun rely on)."""
    pid_file = tmp_path / "child.pid"
    parent_code = (
        "import subprocess, sys, time\n"
        f"child = subprocess.Popen([sys.executable, '-c', {CHILD!r}, {str(pid_file)!r}])\n"
        "time.sleep(60)\n"
    )
    parent = subprocess.Popen([sys.executable, "-c", parent_code], env={**ENV, "PYTHONPATH": str(REPO)})
    try:
        deadline = time.monotonic() + 30
        while not pid_file.exists() or not pid_file.read_text():
            assert time.monotonic() < deadline and parent.poll() is None
            time.sleep(0.05)
        child = int(pid_file.read_text())
        assert alive(child)
        os.kill(parent.pid, signal.SIGKILL)
        parent.wait()
        deadline = time.monotonic() + 10
        while alive(child):
            assert time.monotonic() < deadline, "the child outlived its parent"
            time.sleep(0.05)
    finally:
        if parent.poll() is None:
            parent.kill()
    assert die_with_parent  # the function under test runs in the child (CHILD)


def test_watchdog_exits_a_rank_stuck_in_a_phase():
    """A phase without progress for train.watchdog_s ends the process, naming rank, step and phase; progress
    (a new phase) and paused sections (evaluation, checkpoints) do not."""
    code = (
        "import time\n"
        "from xdist.faults import Watchdog\n"
        "dog = Watchdog(0.6, rank=3)\n"
        "for _ in range(6):\n"
        "    dog.phase('forward/backward', 6)\n"
        "    time.sleep(0.25)\n"
        "with dog.paused():\n"
        "    time.sleep(1.5)\n"
        "dog.phase('optimizer step (gradient reduction)', 7)\n"
        "time.sleep(20)\n"
    )
    started = time.monotonic()
    result = subprocess.run([sys.executable, "-c", code], env={**ENV, "PYTHONPATH": str(REPO)}, capture_output=True,
                            text=True, timeout=60)
    assert result.returncode == WATCHDOG_EXIT_CODE, result.stderr
    assert "watchdog: rank 3, step 7, in optimizer step (gradient reduction): no progress for" in result.stderr
    assert time.monotonic() - started < 15


CHILD = (
    "import os, sys, time\n"
    "from xdist.faults import die_with_parent\n"
    "die_with_parent()\n"
    "open(sys.argv[1], 'w').write(str(os.getpid()))\n"
    "time.sleep(60)\n"
)


# --------------------------------------------------------------------------------------------------
# helpers for the process tree
# --------------------------------------------------------------------------------------------------


def alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except (FileNotFoundError, ProcessLookupError, IndexError):
        return False


def descendants(root: int) -> list[int]:
    """Every living process below ``root`` (from /proc; the ranks run in their own sessions)."""
    parents = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as f:
                    parents[int(entry)] = int(f.read().rsplit(")", 1)[1].split()[1])
            except (FileNotFoundError, ProcessLookupError, IndexError, ValueError):
                pass
    found, frontier = [], [root]
    while frontier:
        pid = frontier.pop()
        children = [child for child, parent in parents.items() if parent == pid]
        found += children
        frontier += children
    return found


def rank_pid(root: int, rank: int) -> int | None:
    for pid in descendants(root):
        try:
            environ = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
        except (FileNotFoundError, ProcessLookupError):
            continue
        if f"RANK={rank}".encode() in environ and b"xdist.cli" in cmdline and b"torch.distributed.run" not in cmdline:
            return pid
    return None


def start(*args: str, env: dict | None = None) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "xdist.cli", *args], cwd=REPO, env=env or ENV,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def wait_for_step(out: Path, step: int, proc: subprocess.Popen, timeout: float = 180) -> int:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        log = out / "train_log.jsonl"
        if log.is_file():
            lines = log.read_text().splitlines()
            if len(lines) >= step:
                return len(lines)
        assert proc.poll() is None, proc.communicate()
        time.sleep(0.02)
    raise AssertionError(f"no step {step} within {timeout} s")


# --------------------------------------------------------------------------------------------------
# real 2-rank jobs
# --------------------------------------------------------------------------------------------------


def slow(test):
    """A real multi-process job on the shared data."""
    return pytest.mark.slow(pytest.mark.skipif(not HAS_DATA, reason=f"shared data not found at {DATA_DIR}")(test))

STEPS = 40
JOB = ["--nproc", "2", "--set", "eval.sets=[]", "--set", "train.export=false", "--set", f"train.max_steps={STEPS}",
       "--set", "train.log_every=1", "--set", "model.dropout=0.1"]


@pytest.fixture(scope="module")
def reference(job, tmp_path_factory) -> dict[int, float]:
    """The uninterrupted run's per-step losses (fp32, dropout on): what every interrupted run must reproduce."""
    out = tmp_path_factory.mktemp("reference")
    xdist("train", str(job), *JOB, "--set", "train.checkpoint_every=8", "--set", f"train.output_dir={out}")
    return step_losses(out)


@slow
def test_sigterm_reaches_every_rank_checkpoints_and_resumes(job, tmp_path, reference):
    """SIGTERM to the xdist process: the ranks finish the step, agree to stop, write a checkpoint (it fits
    the grace period), exit non-zero; no process of the job is left. --resume then reproduces the losses."""
    out = tmp_path / "run"
    proc = start("train", str(job), *JOB, "--set", "train.checkpoint_every=8", "--set", f"train.output_dir={out}")
    wait_for_step(out, 3, proc)
    tree = descendants(proc.pid)
    assert len(tree) >= 2, tree  # two ranks (torchrun's agent runs inside xdist)
    proc.send_signal(signal.SIGTERM)
    _, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 128 + signal.SIGTERM, stderr[-3000:]
    assert not [pid for pid in tree if alive(pid)], "a process of the job survived"
    message = [line for line in stderr.splitlines() if "xdist train: error: stopped by SIGTERM" in line]
    assert len(message) == 1, stderr[-3000:]
    stopped = int(message[0].split("after optimizer step ")[1].split(";")[0])
    assert 3 <= stopped < STEPS and f"checkpoint step{stopped} written" in message[0]
    assert checkpoint.find_resumable(out / "checkpoints") == checkpoint.Resumable(f"step{stopped}", ())

    xdist("train", str(job), *JOB, "--set", "train.checkpoint_every=8", "--set", f"train.output_dir={out}", "--resume")
    assert step_losses(out) == reference  # exact (fp32): the same batches, dropout masks and updates


@slow
def test_killed_rank_restarts_from_the_newest_verified_checkpoint(job, tmp_path, reference):
    """--max-restarts 1: rank 1 killed with -9 mid-run; torchrun restarts both ranks, which resume from this run's
    newest verified checkpoint and finish with the uninterrupted run's losses."""
    out = tmp_path / "run"
    proc = start("train", str(job), *JOB, "--max-restarts", "1", "--set", "train.checkpoint_every=8",
                 "--set", f"train.output_dir={out}")
    wait_for_step(out, 12, proc)
    victim = rank_pid(proc.pid, 1)
    assert victim is not None
    os.kill(victim, signal.SIGKILL)
    _, stderr = proc.communicate(timeout=240)
    assert proc.returncode == 0, stderr[-5000:]
    assert "resumed from checkpoint step" in stderr
    assert step_losses(out) == reference


@slow
def test_stopped_rank_times_out_naming_rank_and_step(job, tmp_path):
    """A SIGSTOPped rank: the other rank's collective times out (train.collective_timeout_s), the job exits
    non-zero within timeout + grace, and the message names the rank, the step and the phase."""
    out = tmp_path / "run"
    timeout_s, grace_s = 6, 2
    proc = start("train", str(job), *JOB, "--set", f"train.collective_timeout_s={timeout_s}",
                 "--set", f"train.signal_grace_s={grace_s}", "--set", f"train.output_dir={out}")
    wait_for_step(out, 3, proc)
    victim = rank_pid(proc.pid, 1)
    tree = descendants(proc.pid)
    os.kill(victim, signal.SIGSTOP)
    stopped_at = time.monotonic()
    try:
        _, stderr = proc.communicate(timeout=120)
    finally:
        if alive(victim):
            os.kill(victim, signal.SIGKILL)
    took = time.monotonic() - stopped_at
    assert proc.returncode != 0
    # Measured 30-50 s (timeout + torchrun's wait for the stopped rank, grace + 10 s, on a loaded machine);
    # without the 6 s timeout reaching DeepSpeed's groups it would block 300 s (our default) or 30 min (torch's).
    assert took < 150, took
    assert "rank 0, step " in stderr and "a collective timed out after train.collective_timeout_s = 6 s" in stderr, \
        stderr[-4000:]
    assert not [pid for pid in tree if alive(pid)]


@slow
def test_full_disk_keeps_the_previous_checkpoint(job, tmp_path):
    """A small tmpfs as output_dir: the second checkpoint does not fit. One message (path, needed, free), the
    first checkpoint intact and verified, no partial files."""
    if shutil.which("unshare") is None:
        pytest.skip("unshare(1) not available")
    probe = subprocess.run(["unshare", "-rm", "sh", "-c", f"mount -t tmpfs -o size=1m tmpfs {tmp_path}"],
                           capture_output=True)
    if probe.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs in a user namespace here: {probe.stderr.decode()[-200:]}")
    out = tmp_path / "run"
    out.mkdir()
    # One checkpoint of the tiny model (3.8M parameters, 2 ranks, ZeRO-2) is ~61.5 MB: the first fits, the
    # second does not.
    command = [sys.executable, "-m", "xdist.cli", "train", str(job), *JOB, "--set", "train.max_steps=4",
               "--set", "train.checkpoint_every=2", "--set", f"train.output_dir={out}"]
    keep = tmp_path / "kept"  # the tmpfs goes away with the namespace: copy what the run left
    script = (f"mount -t tmpfs -o size=100m tmpfs {out} || exit 99; {' '.join(repr(c) for c in command)}; "
              f"status=$?; cp -r {out} {keep}; exit $status")
    result = subprocess.run(["unshare", "-rm", "sh", "-c", script], cwd=REPO, env=ENV, capture_output=True,
                            text=True, timeout=240)
    assert result.returncode == EXIT_USER_ERROR, result.stderr[-3000:]
    messages = [line for line in result.stderr.splitlines() if "xdist train: error:" in line]
    assert len(messages) == 1, result.stderr[-3000:]
    assert f"checkpoint step4: not enough space in {out}/checkpoints: needs about 6" in messages[0]
    assert "MB free. Removed the partial files; the previous checkpoint step2 is intact" in messages[0]
    ckpt = keep / "checkpoints"
    assert checkpoint.find_resumable(ckpt) == checkpoint.Resumable("step2", ())
    assert not [p for p in ckpt.iterdir() if p.name.startswith(".")]


@slow
def test_nonfinite_loss_stops_naming_the_step_and_writes_nothing_nonfinite(job, tmp_path):
    """lr 1e30 makes step 2's loss NaN. stop: the run ends non-zero naming step 2; rollback: it returns to
    the last checkpoint, meets the NaN again and stops after train.max_nonfinite_steps; neither writes a
    checkpoint or export after step 1, and train_log.jsonl stays strict JSON with nulls and a flag."""
    for policy in ("stop", "rollback"):
        out = tmp_path / policy
        proc = start("train", str(job), "--set", "eval.sets=[]", "--set", "train.max_steps=8",
                     "--set", "train.lr=1e30", "--set", "train.checkpoint_every=1", "--set", "train.log_every=1",
                     "--set", "train.max_nonfinite_steps=2", "--set", f"train.on_nonfinite={policy}",
                     "--set", f"train.output_dir={out}")
        _, stderr = proc.communicate(timeout=180)
        assert proc.returncode == EXIT_USER_ERROR, stderr[-3000:]
        errors = [line for line in stderr.splitlines() if "xdist train: error:" in line]
        assert len(errors) == 1, stderr[-3000:]
        if policy == "stop":
            assert "error: step 2: non-finite loss, loss/ce" in errors[0] and "'stop'" in errors[0]
        else:
            assert stderr.count("rolling back to the last checkpoint") == 2
            assert "3 non-finite steps in a row (train.max_nonfinite_steps = 2)" in errors[0]
        records = [json.loads(line, parse_constant=pytest.fail) for line in
                   (out / "train_log.jsonl").read_text().splitlines()]
        assert math.isfinite(records[0]["loss"]) and records[-1]["loss"] is None
        assert "loss" in records[-1]["nonfinite"]
        assert sorted(p.name for p in (out / "checkpoints").iterdir() if p.name.startswith("step")) == ["step1"]
        assert not (out / "export").exists()
