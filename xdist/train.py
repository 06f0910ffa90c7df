"""The training loop, top to bottom: shards → method → DeepSpeed engine → monitor → eval/checkpoint.

Run it through the CLI (``xdist train CONFIG``): in one process, with ``--nproc N`` local ranks, or
inside a ``torchrun``/``deepspeed`` launch on many nodes. Every rank runs this same function.

Invariants the loop relies on:
- every rank gets the same number of micro-batches per epoch, each with exactly ``micro_batch_size``
  rows (:class:`xdist.data.stream.TrainStream` guarantees it, or refuses at start), so no rank waits
  forever in a collective and a per-micro-batch mean loss is the exact global mean;
- DeepSpeed scales each micro-batch's loss by 1/GA in ``backward`` and averages gradients over ranks;
- checkpoints are taken only at optimizer-step boundaries and carry the stream position, the method
  state and every rank's RNG state, so a resumed run continues with exactly the next batch.
"""

from __future__ import annotations

import json
import logging
import math
import os
import random
import shutil
import subprocess
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as torch_dist
import yaml

from xdist import checkpoint
from xdist.config import JobConfig, to_dict
from xdist.data.stream import TrainStream
from xdist.data.tokenizer import load_tokenizer
from xdist.deepspeed_config import resolve_deepspeed_config
from xdist.distributed import DistEnv, all_gather_object, barrier, broadcast_object, setup_distributed
from xdist.engine import Engine
from xdist.evaluate import Evaluator
from xdist.faults import (
    CollectiveTimeout,
    GracefulStop,
    Interrupted,
    NonFiniteError,
    NonFiniteGuard,
    Watchdog,
    is_timeout,
    json_safe,
)
from xdist.fileio import write_text_atomic
from xdist.methods import MethodContext, build_method, method_class
from xdist.monitor import Monitor, Throughput, TrainProgress, flatten, setup_logging
from xdist.rundir import claim_output_dir
from xdist.tasks import get_task

log = logging.getLogger("xdist.train")


@dataclass
class TrainResult:
    """What a finished run reports (on every rank; metrics only on the main rank)."""

    steps: int
    metrics: dict[str, Any] | None
    output_dir: Path
    """Holds ``train_log.jsonl`` (every step's losses), checkpoints, the export and the eval reports."""


def seed_everything(seed: int, rank: int) -> None:
    """Seed python, numpy and torch; ranks differ so dropout masks are not identical across ranks."""
    random.seed(seed + rank)
    np.random.seed((seed + rank) % 2**32)
    torch.manual_seed(seed + rank)


def rng_state() -> dict[str, Any]:
    state = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state(state["cuda"])


def write_run_info(cfg: JobConfig, ds_config: dict, out: Path) -> None:
    """The experiment directory: resolved config, DeepSpeed config and git commit (main rank only)."""
    out.mkdir(parents=True, exist_ok=True)
    (out / "config.yaml").write_text(yaml.safe_dump(to_dict(cfg), sort_keys=False))
    (out / "ds_config.json").write_text(json.dumps(ds_config, indent=2))
    try:
        commit = subprocess.run(
            ["git", "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5,
            cwd=Path(__file__).parent,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        commit = ""
    (out / "git_commit.txt").write_text(commit + "\n")


def mean_over_ranks(values: list[float], dist: DistEnv) -> list[float]:
    """Element-wise mean of a list of floats over ranks (one all-reduce)."""
    tensor = torch.tensor(values, dtype=torch.float64)
    if dist.world_size > 1:
        torch_dist.all_reduce(tensor)
        tensor /= dist.world_size
    return tensor.tolist()


def restart_count() -> int:
    """How often torchrun restarted this job's ranks (``xdist train --max-restarts``); 0 on the first start."""
    return int(os.environ.get("TORCHELASTIC_RESTART_COUNT", "0") or 0)


def new_run_id() -> str:
    """The run's id, the same on every rank and across torchrun's restarts of it (``XDIST_RUN_ID`` from the
    CLI's launcher), else made by rank 0. Checkpoints record it: a run prunes and auto-resumes only its own."""
    return os.environ.get("XDIST_RUN_ID") or broadcast_object(uuid.uuid4().hex)


def train(cfg: JobConfig, *, resume: bool = False, overwrite: bool = False) -> TrainResult:
    """Train ``cfg.model`` on ``cfg.data.shards`` with ``cfg.train``; evaluate on ``cfg.eval``.

    A directory that already holds a run is refused unless ``resume`` or ``overwrite``
    (:func:`claim_output_dir`); a restart by torchrun (``--max-restarts``) goes on in its own directory.

    Raises :class:`xdist.faults.Interrupted` after a SIGTERM/SIGINT (once the step is finished and, if it
    fits the grace period, a checkpoint written), :class:`xdist.faults.NonFiniteError` when
    ``train.on_nonfinite`` stops the run, :class:`xdist.checkpoint.DiskFullError` when a checkpoint does not
    fit, and :class:`xdist.faults.CollectiveTimeout` when a step's collective times out.
    """
    if restart_count() == 0:  # a restarted rank finds its own run there (and must not delete it)
        claim_output_dir(Path(cfg.train.output_dir), resume=resume, overwrite=overwrite,
                         rank=int(os.environ.get("RANK", "0")))
    stop = GracefulStop().install()
    watchdog: Watchdog | None = None
    try:
        dist = setup_distributed(cfg.train.collective_timeout_s)
        watchdog = Watchdog(cfg.train.watchdog_s, dist.rank)
        return _train(cfg, dist, resume=resume, stop=stop, watchdog=watchdog)
    except Exception as err:
        if watchdog is not None and is_timeout(err) and not isinstance(err, Interrupted):
            raise CollectiveTimeout(
                f"{watchdog.describe()}: a collective timed out after train.collective_timeout_s = "
                f"{cfg.train.collective_timeout_s:g} s (another rank has died, hangs or is stopped): {err}"
            ) from err
        raise
    finally:
        stop.uninstall()
        if watchdog is not None:
            watchdog.close()


def _train(cfg: JobConfig, dist: DistEnv, *, resume: bool, stop: GracefulStop, watchdog: Watchdog) -> TrainResult:
    setup_logging(dist.rank)
    tcfg = cfg.train
    out = Path(tcfg.output_dir)
    task = get_task(cfg.task)
    method_class(cfg.method.name, task.name)  # a method that cannot train the task fails before any work
    seed_everything(tcfg.seed, 0)  # the same random init on every rank

    # ---- data -----------------------------------------------------------------------------------
    tokenizer = load_tokenizer(cfg.features.tokenizer)
    stream = TrainStream(
        cfg.data.shards,
        rank=dist.rank,
        world_size=dist.world_size,
        micro_batch_size=tcfg.micro_batch_size,
        data=cfg.data,
        seed=tcfg.seed,
        tokenizer_path=cfg.features.tokenizer,
        max_length=cfg.features.max_length,
        task=task.name,
        vocab_size=len(tokenizer),
    )
    ga = tcfg.gradient_accumulation_steps
    # Per-epoch shard sets (cross-lingual sampling re-drawn every epoch) may differ in length, and
    # accumulation windows carry across epoch boundaries: sum the micro-batches first, then divide.
    shortest = min(stream.batches_in_epoch(e) for e in range(tcfg.epochs))
    if shortest < ga:
        raise ValueError(
            f"config field 'train.gradient_accumulation_steps': {ga} micro-batches per step but an epoch has "
            f"only {shortest} per rank; lower it or train.micro_batch_size"
        )
    total_steps = tcfg.max_steps or stream.total_batches(tcfg.epochs) // ga
    log.info(
        "data: %d micro-batches/epoch/rank x %d ranks, gradient accumulation %d, %d optimizer steps in total",
        stream.epoch_batches, dist.world_size, ga, total_steps,
    )

    # ---- model and engine -----------------------------------------------------------------------
    ds_config = resolve_deepspeed_config(
        tcfg, world_size=dist.world_size, total_steps=total_steps, device_type=dist.device.type
    )
    if tcfg.on_nonfinite != "stop" and tcfg.precision == "bf16":
        # skip/rollback need DeepSpeed to drop a step whose gradients are not finite; for bf16 ZeRO-1/2 its
        # overflow check is off unless asked for (fp32 and ZeRO-3 always check).
        ds_config.setdefault("bf16", {}).setdefault("check_grad_overflow", True)
    model = task.build_model(cfg.model, tokenizer=tokenizer, ds_config=ds_config)
    engine = Engine.create(model, tcfg, dist, total_steps, ds_config=ds_config)
    seed_everything(tcfg.seed, dist.rank)  # from here on ranks differ, so their dropout masks do
    method = build_method(MethodContext(
        cfg=cfg, task=task, dist=dist, output_dir=out, manifest_for_epoch=stream.manifest_for, tokenizer=tokenizer,
    ))
    evaluator = Evaluator(cfg, tokenizer, dist, task) if cfg.eval.sets else None
    monitor = Monitor(out, enabled=dist.is_main)
    # Under ZeRO-3 a parameter's local numel is its partition; ds_numel is the full size.
    n_params = sum(getattr(p, "ds_numel", p.numel()) for p in engine.module.parameters())
    restarted = restart_count() > 0
    ckpt_dir = out / "checkpoints"
    run_id = new_run_id()
    if dist.is_main:
        write_run_info(cfg, ds_config, out)
        removed = checkpoint.remove_partials(ckpt_dir)
        if removed:
            log.warning("removed leftovers of interrupted checkpoint saves: %s", ", ".join(removed))
        log.info("model: %s, %.1fM parameters", type(engine.module).__name__, n_params / 1e6)

    # ---- resume ---------------------------------------------------------------------------------
    step, epoch, micro_in_epoch = 0, 0, 0

    def restore(tag: str) -> None:
        nonlocal step, epoch, micro_in_epoch, run_id
        client = engine.load_checkpoint(ckpt_dir, tag=tag)
        stream.load_state_dict(client["stream"])
        method.load_state_dict(client.get("method", {}))
        set_rng_state(client["rng"][dist.rank])
        step, epoch, micro_in_epoch = client["step"], client["stream"]["epoch"], client["stream"]["step"]
        run_id = client.get("run_id", run_id)  # a resumed run goes on as the run it resumes
        if dist.is_main:  # the log lines of steps it will take again go
            _truncate_log(out / "train_log.jsonl", step)
        log.info("resumed from checkpoint %s: step %d (epoch %d, micro-batch %d)", tag, step, epoch, micro_in_epoch)

    if resume or restarted:
        # An automatic restart of a fresh run resumes only checkpoints of this very run (never an older one).
        tag = checkpoint.choose(ckpt_dir, run_id=None if resume else run_id)
        if tag is not None:
            restore(tag)
        elif resume:
            raise checkpoint.CheckpointError(
                f"--resume: no verified checkpoint in {ckpt_dir} (see the warnings above for what was skipped); "
                "start without --resume to train from scratch"
            )
        else:
            log.warning("restart %d: no checkpoint of this run yet, starting from step 0", restart_count())
    if dist.is_main and step == 0:  # a run starting from step 0 starts a fresh loss curve
        (out / "train_log.jsonl").unlink(missing_ok=True)

    last_checkpoint_s: float | None = None

    def save_checkpoint() -> None:
        nonlocal last_checkpoint_s
        started = time.monotonic()
        # Every rank's RNG goes to rank 0's client state (DeepSpeed writes client state once).
        rngs = all_gather_object(rng_state())
        client = {
            "step": step,
            "stream": stream.state_dict(),
            "method": method.state_dict(),
            "rng": rngs,
            "run_id": run_id,
        }
        with watchdog.paused():
            checkpoint.save(engine.ds_engine, ckpt_dir, step=step, client_state={checkpoint.CLIENT_KEY: client},
                            keep_last=tcfg.keep_last, run_id=run_id, parameters=n_params)
        last_checkpoint_s = time.monotonic() - started

    def on_stop_request() -> None:
        """All ranks agreed to stop after this step: checkpoint if it fits the grace period, then raise."""
        left = min(all_gather_object(stop.grace_left(tcfg.signal_grace_s)))
        fits = last_checkpoint_s is None or 1.5 * last_checkpoint_s < left
        saved = ""
        if fits and step > 0:
            save_checkpoint()
            saved = f"; checkpoint step{step} written, continue with --resume"
        elif step > 0:
            saved = (f"; no checkpoint written (the last took {last_checkpoint_s:.0f} s, {max(left, 0):.0f} s of "
                     "train.signal_grace_s were left); --resume continues from the last checkpoint")
        signum = max(all_gather_object(stop.signum or 0))
        raise Interrupted(f"stopped by {signal_name(signum)} after optimizer step {step}{saved}", signum)

    def evaluate(tag: str) -> dict[str, Any] | None:
        if evaluator is None:
            return None
        engine.eval()
        result = evaluator.run(engine, out / "eval" / tag, step=step, monitor=monitor)
        engine.train()
        return result

    # ---- loop -----------------------------------------------------------------------------------
    window: dict[str, Any] = {}  # sums over the accumulation window (tensors stay on device: no sync)
    window_micro = 0
    throughput = Throughput()
    guard = NonFiniteGuard(tcfg.on_nonfinite, tcfg.max_nonfinite_steps)
    progress = TrainProgress(total_steps, step, tcfg.micro_batch_size * ga * dist.world_size, enabled=dist.is_main)
    engine.train()
    # With max_steps set, epochs keep coming until the step budget is spent (it overrides epochs).
    epoch_limit = math.inf if tcfg.max_steps else tcfg.epochs
    while step < total_steps and epoch < epoch_limit:
        with watchdog.paused():
            method.on_epoch_start(epoch, engine)
        throughput.reset()  # a teacher refresh or cache build is not training time
        epoch_start = time.perf_counter()
        rolled_back = False
        watchdog.phase("reading data", step + 1)
        for batch in stream.iter_epoch(epoch, start_step=micro_in_epoch):
            watchdog.phase("forward/backward", step + 1)
            output = method.step(engine, batch)
            engine.backward(output.loss)
            watchdog.phase("optimizer step (gradient reduction)", step + 1)
            updated = engine.step()  # True exactly when this micro-batch closed an accumulation window
            micro_in_epoch += 1
            window_micro += 1
            for key, value in {"loss": output.loss.detach(), **output.logs}.items():
                window[key] = window.get(key, 0.0) + value
            throughput.add(batch["input_ids"].shape[0], int(batch["attention_mask"].sum()))  # CPU tensors
            if not updated:
                watchdog.phase("reading data", step + 1)
                continue

            step += 1
            keys = sorted(window)
            watchdog.phase("all-reduce of the step's losses", step)
            # One host sync per optimizer step (not per micro-batch), then one all-reduce for the log; it
            # also carries the stop request of any rank that got SIGTERM, so all ranks stop after this step.
            means = mean_over_ranks([float(window[k]) / window_micro for k in keys] + [float(stop.requested)], dist)
            step_logs = dict(zip(keys, means[:-1], strict=True))
            stop_requested = means[-1] > 0
            window, window_micro = {}, 0
            bad = guard.bad_values(step_logs, engine.grad_norm)
            progress.step(step_logs["loss"])
            if dist.is_main:
                # One JSON line per optimizer step: the run's loss curve, diffable across runs/commits.
                with open(out / "train_log.jsonl", "a") as f:
                    record = {"step": step, "epoch": epoch, "lr": engine.lr, "time": time.time(), **step_logs}
                    if engine.grad_norm is not None:
                        record["grad_norm"] = engine.grad_norm
                    f.write(json.dumps(json_safe(record)) + "\n")
            action = guard.check(step, bad, step_logs)  # raises when the policy says stop
            if action == "rollback":
                tag = checkpoint.choose(ckpt_dir, run_id=run_id)
                if tag is None:
                    raise NonFiniteError(f"step {step}: non-finite {', '.join(bad)} and no checkpoint of this run "
                                         "to roll back to (train.on_nonfinite = 'rollback'); lower train.lr")
                with watchdog.paused():
                    restore(tag)
                rolled_back = True
                break
            if stop_requested:
                on_stop_request()
            if step % tcfg.log_every == 0 or step == total_steps:
                samples_s, tokens_s = throughput.rate()
                scalars = {f"train/{k}": v for k, v in step_logs.items()}
                scalars |= {
                    "train/lr": engine.lr,
                    "train/grad_norm": engine.grad_norm,
                    "train/epoch": epoch + micro_in_epoch / stream.batches_in_epoch(epoch),
                    "perf/samples_per_s": samples_s * dist.world_size,
                    "perf/tokens_per_s": tokens_s * dist.world_size,
                }
                monitor.scalars(step, scalars)
                log.info(
                    "step %d/%d epoch %d loss %.4f lr %.3g grad_norm %s samples/s %.1f eta %s",
                    step, total_steps, epoch, step_logs["loss"], engine.lr,
                    "-" if engine.grad_norm is None else f"{engine.grad_norm:.3f}",
                    samples_s * dist.world_size, progress.eta(),
                )
            if tcfg.eval_every and step % tcfg.eval_every == 0 and step < total_steps:
                with watchdog.paused():
                    evaluate(f"step{step}")
                throughput.reset()
                progress.pause()
            if tcfg.checkpoint_every and step % tcfg.checkpoint_every == 0 and step < total_steps and not bad:
                save_checkpoint()
                throughput.reset()
                progress.pause()
            if step >= total_steps:
                break
            watchdog.phase("reading data", step + 1)
        else:
            log.info("epoch %d done in %.1fs", epoch, time.perf_counter() - epoch_start)
            epoch += 1
            micro_in_epoch = 0
        if rolled_back:
            window, window_micro = {}, 0

    progress.close()

    # ---- end: checkpoint, export, final evaluation ----------------------------------------------
    with watchdog.paused():
        if guard.consecutive == 0:  # never a checkpoint or export of a step that went non-finite
            save_checkpoint()
            if tcfg.export:
                export(engine, out / "export", tokenizer)
        else:
            log.warning("the last step was non-finite: no final checkpoint or export")
        metrics = evaluate("final")
    if dist.is_main:
        final = {
            f"hparam/{name}/{key}": value
            for name, row in (metrics or {}).get("summary", {}).items()
            for key, value in row.items()
            if isinstance(value, int | float) and not isinstance(value, bool)  # not labels (a worst language)
        }
        monitor.hparams(flatten(to_dict(cfg.train), "train.") | flatten(to_dict(cfg.model), "model."), final)
    monitor.close()
    return TrainResult(steps=step, metrics=metrics, output_dir=out)


def signal_name(signum: int) -> str:
    import signal

    try:
        return signal.Signals(signum).name
    except ValueError:
        return f"signal {signum}"


def _truncate_log(path: Path, step: int) -> None:
    """Keep the lines of steps <= ``step`` (a resumed run logs the later ones again); unreadable lines go."""
    if not path.is_file():
        return
    kept = []
    for line in path.read_text().splitlines():
        try:
            if json.loads(line)["step"] <= step:
                kept.append(line)
        except (ValueError, KeyError, TypeError):
            continue
    write_text_atomic(path, "".join(f"{line}\n" for line in kept))


def export(engine: Engine, out_dir: Path, tokenizer: Any) -> None:
    """Hugging Face export into a temporary directory, renamed into place when complete (collective).

    Not enough free space (checked first; or the disk filling up while rank 0 writes) raises
    :class:`xdist.checkpoint.DiskFullError` with the partial export removed and a previous export intact.
    """
    tmp = out_dir.with_name(f"{checkpoint.PARTIAL_PREFIX}{out_dir.name}")
    # fp32 weights at most (bf16 runs export their fp32 master weights), plus the tokenizer's files.
    needed = 4 * sum(getattr(p, "ds_numel", p.numel()) for p in engine.module.parameters()) + (16 << 20)
    kept = "export" if out_dir.is_dir() else None
    verdict = None
    if engine.dist.is_main:
        shutil.rmtree(tmp, ignore_errors=True)
        out_dir.parent.mkdir(parents=True, exist_ok=True)
        if shutil.disk_usage(out_dir.parent).free < needed:
            verdict = checkpoint.disk_full_message("export", out_dir.parent, needed, kept=kept)
    verdict = broadcast_object(verdict)
    if verdict is not None:
        raise checkpoint.DiskFullError(verdict)
    try:
        engine.export_pretrained(tmp, tokenizer=tokenizer)
    except Exception as err:
        if not checkpoint.is_disk_full(err):
            raise
        shutil.rmtree(tmp, ignore_errors=True)
        raise checkpoint.DiskFullError(
            checkpoint.disk_full_message("export", out_dir.parent, needed, kept=kept)
        ) from None
    if engine.dist.is_main:
        checkpoint.fsync_tree(tmp)
        checkpoint.replace_dir(tmp, out_dir)
    barrier()
