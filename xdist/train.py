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
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as torch_dist
import yaml

from xdist.config import JobConfig, to_dict
from xdist.data.stream import TrainStream
from xdist.data.tokenizer import load_tokenizer
from xdist.deepspeed_config import resolve_deepspeed_config
from xdist.distributed import DistEnv, all_gather_object, setup_distributed
from xdist.engine import Engine
from xdist.evaluate import Evaluator
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


def train(cfg: JobConfig, *, resume: bool = False, overwrite: bool = False) -> TrainResult:
    """Train ``cfg.model`` on ``cfg.data.shards`` with ``cfg.train``; evaluate on ``cfg.eval``.

    A directory that already holds a run is refused unless ``resume`` or ``overwrite``
    (:func:`claim_output_dir`).
    """
    claim_output_dir(Path(cfg.train.output_dir), resume=resume, overwrite=overwrite,
                     rank=int(os.environ.get("RANK", "0")))
    dist = setup_distributed()
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
    model = task.build_model(cfg.model, tokenizer=tokenizer, ds_config=ds_config)
    engine = Engine.create(model, tcfg, dist, total_steps, ds_config=ds_config)
    seed_everything(tcfg.seed, dist.rank)  # from here on ranks differ, so their dropout masks do
    method = build_method(MethodContext(
        cfg=cfg, task=task, dist=dist, output_dir=out, manifest_for_epoch=stream.manifest_for, tokenizer=tokenizer,
    ))
    evaluator = Evaluator(cfg, tokenizer, dist, task) if cfg.eval.sets else None
    monitor = Monitor(out, enabled=dist.is_main)
    if dist.is_main:
        write_run_info(cfg, ds_config, out)
        n_params = sum(p.numel() for p in engine.module.parameters())
        log.info("model: %s, %.1fM parameters (as seen on rank 0)", type(engine.module).__name__, n_params / 1e6)

    # ---- resume ---------------------------------------------------------------------------------
    step, epoch, micro_in_epoch = 0, 0, 0
    ckpt_dir = out / "checkpoints"
    if resume:
        client = engine.load_checkpoint(ckpt_dir)
        stream.load_state_dict(client["stream"])
        method.load_state_dict(client.get("method", {}))
        set_rng_state(client["rng"][dist.rank])
        step, epoch, micro_in_epoch = client["step"], client["stream"]["epoch"], client["stream"]["step"]
        log.info("resumed from step %d (epoch %d, micro-batch %d)", step, epoch, micro_in_epoch)

    def save_checkpoint() -> None:
        # Every rank's RNG goes to rank 0's client state (DeepSpeed writes client state once).
        rngs = all_gather_object(rng_state())
        client = {
            "step": step,
            "stream": stream.state_dict(),
            "method": method.state_dict(),
            "rng": rngs,
        }
        engine.save_checkpoint(ckpt_dir, step=step, client_state=client, keep_last=tcfg.keep_last)

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
    progress = TrainProgress(total_steps, step, tcfg.micro_batch_size * ga * dist.world_size, enabled=dist.is_main)
    engine.train()
    # With max_steps set, epochs keep coming until the step budget is spent (it overrides epochs).
    epoch_limit = math.inf if tcfg.max_steps else tcfg.epochs
    while step < total_steps and epoch < epoch_limit:
        method.on_epoch_start(epoch, engine)
        throughput.reset()  # a teacher refresh or cache build is not training time
        epoch_start = time.perf_counter()
        for batch in stream.iter_epoch(epoch, start_step=micro_in_epoch):
            output = method.step(engine, batch)
            engine.backward(output.loss)
            updated = engine.step()  # True exactly when this micro-batch closed an accumulation window
            micro_in_epoch += 1
            window_micro += 1
            for key, value in {"loss": output.loss.detach(), **output.logs}.items():
                window[key] = window.get(key, 0.0) + value
            throughput.add(batch["input_ids"].shape[0], int(batch["attention_mask"].sum()))  # CPU tensors
            if not updated:
                continue

            step += 1
            keys = sorted(window)
            # One host sync per optimizer step (not per micro-batch), then one all-reduce for the log.
            means = mean_over_ranks([float(window[k]) / window_micro for k in keys], dist)
            step_logs = dict(zip(keys, means, strict=True))
            window, window_micro = {}, 0
            progress.step(step_logs["loss"])
            if dist.is_main:
                # One JSON line per optimizer step: the run's loss curve, diffable across runs/commits.
                with open(out / "train_log.jsonl", "a") as f:
                    record = {"step": step, "epoch": epoch, "lr": engine.lr, "time": time.time(), **step_logs}
                    f.write(json.dumps(record) + "\n")
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
                evaluate(f"step{step}")
                throughput.reset()
                progress.pause()
            if tcfg.checkpoint_every and step % tcfg.checkpoint_every == 0 and step < total_steps:
                save_checkpoint()
                throughput.reset()
                progress.pause()
            if step >= total_steps:
                break
        else:
            log.info("epoch %d done in %.1fs", epoch, time.perf_counter() - epoch_start)
            epoch += 1
            micro_in_epoch = 0

    progress.close()

    # ---- end: checkpoint, export, final evaluation ----------------------------------------------
    save_checkpoint()
    if tcfg.export:
        engine.export_pretrained(out / "export", tokenizer=tokenizer)
    metrics = evaluate("final")
    if dist.is_main:
        final = {
            f"hparam/{name}/{key}": value
            for name, row in (metrics or {}).get("summary", {}).items()
            for key, value in row.items()
            if value is not None
        }
        monitor.hparams(flatten(to_dict(cfg.train), "train.") | flatten(to_dict(cfg.model), "model."), final)
    monitor.close()
    return TrainResult(steps=step, metrics=metrics, output_dir=out)
