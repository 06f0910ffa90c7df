"""Rank program for tests/test_engine.py: runs real DeepSpeed engines on CPU and records what it sees.

Started by ``torch.distributed.run`` (scenario ``suite``, 2 ranks) or directly as a plain process
(scenario ``single``: no launcher, no env). Each rank writes ``<out>/rank<r>.json`` after every check, so
a crash still leaves the results so far. The test file makes the assertions; this file only measures.

One launch runs many engines one after another: process start-up and imports (~5 s per rank on two
shared cores) dominate, an engine costs ~1 s.
"""

from __future__ import annotations

import argparse
import copy
import json
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from xdist import distributed
from xdist.config import ModelConfig, TrainConfig
from xdist.deepspeed_config import resolve_deepspeed_config
from xdist.distributed import DistEnv, setup_distributed
from xdist.engine import Engine, normalize_summed_loss
from xdist.tasks.qa.model import build_qa_model
from xdist.weights import iter_full_parameters

VOCAB, SEQ = 1000, 32
START_MARK, END_MARK = 5, 6
MODEL = ModelConfig(
    model_type="bert",
    architecture={
        "hidden_size": 64,
        "num_hidden_layers": 2,
        "num_attention_heads": 2,
        "intermediate_size": 128,
        "max_position_embeddings": 64,
    },
    dropout=0.0,
)


class Recorder:
    def __init__(self, out: Path, rank: int) -> None:
        self.path = out / f"rank{rank}.json"
        self.results: dict = {}

    def __setitem__(self, key: str, value) -> None:
        self.results[key] = value
        self.path.write_text(json.dumps(self.results, indent=1))


def make_batch(seed: int, rows: int) -> dict[str, torch.Tensor]:
    """Random ids with marker tokens at the answer span, so the span is learnable from content."""
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(10, VOCAB, (rows, SEQ), generator=g)
    start = torch.randint(1, SEQ - 4, (rows,), generator=g)
    end = start + torch.randint(0, 3, (rows,), generator=g)
    ids[torch.arange(rows), start] = START_MARK
    ids[torch.arange(rows), end] = END_MARK
    return {
        "input_ids": ids,
        "attention_mask": torch.ones(rows, SEQ, dtype=torch.long),
        "token_type_ids": torch.zeros(rows, SEQ, dtype=torch.long),
        "start_positions": start,
        "end_positions": end,
    }


def rows_of(batch: dict, lo: int, hi: int) -> dict:
    return {k: v[lo:hi] for k, v in batch.items()}


def without_labels(batch: dict) -> dict:
    return {k: v for k, v in batch.items() if not k.endswith("_positions")}


def train_cfg(ds_path: str, **kw) -> TrainConfig:
    base = dict(deepspeed=ds_path, micro_batch_size=4, lr=3e-3, max_grad_norm=1.0, weight_decay=0.01)
    base.update(kw)
    return TrainConfig(**base)


def new_engine(dist: DistEnv, cfg: TrainConfig, total_steps: int, seed: int = 0) -> Engine:
    ds = resolve_deepspeed_config(cfg, world_size=dist.world_size, total_steps=total_steps, device_type="cpu")
    torch.manual_seed(seed)
    model = build_qa_model(MODEL, vocab_size=VOCAB, pad_token_id=0, ds_config=ds)
    return Engine.create(model, cfg, dist, total_steps, ds_config=ds)


def full_params(engine_or_module) -> dict[str, torch.Tensor]:
    module = engine_or_module.module if isinstance(engine_or_module, Engine) else engine_or_module
    return {name: value.detach().to(torch.float64).clone() for name, value in iter_full_parameters(module)}


def max_diff(a: dict, b: dict) -> float:
    assert a.keys() == b.keys(), (sorted(a)[:3], sorted(b)[:3])
    return max((a[k] - b[k]).abs().max().item() for k in a)


def eval_loss(engine: Engine, batch: dict) -> float:
    engine.eval()
    with torch.no_grad():
        loss = float(engine.forward(**batch).loss.float())
    engine.train()
    return loss


def train_step(engine: Engine, batch: dict) -> float:
    out = engine.forward(**batch)
    engine.backward(out.loss)
    engine.step()
    return out.loss.detach().float().item()


def tiny_tokenizer():
    """A real BertTokenizerFast over a 1000-token vocabulary (no external files needed)."""
    from transformers import BertTokenizerFast

    specials = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    words = [f"w{i}" for i in range(VOCAB - len(specials))]
    return BertTokenizerFast(vocab={token: i for i, token in enumerate(specials + words)})


def zero3_all_partitioned(repo: Path, out: Path, name: str) -> str:
    """The shipped ZeRO-3 file with a persistence threshold of 0: the tiny test model's parameters are
    all below the shipped threshold and would otherwise stay whole, leaving gathering untested."""
    config = json.loads((repo / "configs" / "deepspeed" / f"{name}.json").read_text())
    config["zero_optimization"]["stage3_param_persistence_threshold"] = 0
    path = out / f"{name}_all_partitioned.json"
    path.write_text(json.dumps(config))
    return str(path)


# --------------------------------------------------------------------------------------------------
# checks
# --------------------------------------------------------------------------------------------------


def check_training(dist: DistEnv, rec: Recorder, label: str, ds_path: str, precision: str, out: Path) -> None:
    """Loss on a fixed set over 15 steps, the LR schedule, teacher snapshots and export."""
    steps = 15
    # 20 scheduled steps (warm-up 4): 15 here, 3 more while the teacher must stay fixed.
    cfg = train_cfg(ds_path, precision=precision, warmup_ratio=0.2)
    t0 = time.perf_counter()
    engine = new_engine(dist, cfg, total_steps=20)
    t_init = time.perf_counter() - t0
    data = make_batch(100 + dist.rank, 4)
    partitioned = sum(hasattr(p, "ds_id") and p.ds_tensor.numel() < p.ds_numel for p in engine.module.parameters())
    before = eval_loss(engine, data)
    params0 = full_params(engine)
    losses, lrs, norms = [], [], []
    t0 = time.perf_counter()
    for step in range(steps):
        losses.append(train_step(engine, data))
        lrs.append(engine.lr)
        norms.append(engine.grad_norm)
        if step == 0:
            after_first = full_params(engine)
    t_steps = time.perf_counter() - t0
    after = eval_loss(engine, data)
    result = {
        "zero_stage": engine.zero_stage,
        "module_dtype": str(next(engine.module.parameters()).dtype),
        "partitioned_params": partitioned,
        "n_params": sum(1 for _ in engine.module.parameters()),
        "eval_before": before,
        "eval_after": after,
        "losses": losses,
        "lrs": lrs,
        "grad_norms": norms,
        "global_steps": engine.global_steps,
        "first_step_param_change": max_diff(params0, after_first),
        "init_s": t_init,
        "steps_s": t_steps,
    }
    rec[f"train_{label}"] = result

    # ---- teacher snapshot
    probe = make_batch(7, 4)  # same on every rank
    teacher = engine.frozen_copy()
    student_now = full_params(engine)
    teacher_at_copy = {n: p.detach().to(torch.float64).clone() for n, p in teacher.named_parameters()}
    engine.eval()
    with torch.no_grad():
        student_logits = engine.forward(**without_labels(probe)).start_logits.float()
    engine.train()
    teacher_logits = teacher(**without_labels(probe)).start_logits  # no no_grad: requires_grad is off
    ptrs = [p.data_ptr() for p in teacher.parameters()]
    for _ in range(3):
        train_step(engine, data)
    student_later = full_params(engine)
    teacher_later = {n: p.detach().to(torch.float64).clone() for n, p in teacher.named_parameters()}
    grads = [p.grad is not None for p in teacher.parameters()]
    engine.copy_weights_into(teacher)
    refreshed = {n: p.detach().to(torch.float64).clone() for n, p in teacher.named_parameters()}
    rec[f"teacher_{label}"] = {
        "dtype": str(next(teacher.parameters()).dtype),
        "partitioned": any(hasattr(p, "ds_id") for p in teacher.parameters()),
        "requires_grad": any(p.requires_grad for p in teacher.parameters()),
        "training": teacher.training,
        "equal_at_copy": max_diff(teacher_at_copy, student_now),
        "logits_diff_at_copy": (teacher_logits.float() - student_logits).abs().max().item(),
        "logits_requires_grad": teacher_logits.requires_grad,
        "teacher_changed_after_steps": max_diff(teacher_later, teacher_at_copy),
        "student_changed_after_steps": max_diff(student_later, student_now),
        "any_grad": any(grads),
        "refreshed_diff": max_diff(refreshed, student_later),
        "refreshed_in_place": ptrs == [p.data_ptr() for p in teacher.parameters()],
    }

    # ---- export
    export_dir = out / f"export_{label}"
    tokenizer = tiny_tokenizer()
    engine.eval()
    with torch.no_grad():
        outputs = engine.forward(**without_labels(probe))
        engine_logits = torch.stack([outputs.start_logits, outputs.end_logits]).float()
    engine.train()
    module_weights = full_params(engine)  # the compute-dtype weights, gathered
    engine.export_pretrained(export_dir, tokenizer=tokenizer)
    export = {}
    if dist.is_main:
        from safetensors.torch import load_file
        from transformers import AutoModelForQuestionAnswering, AutoTokenizer

        loaded, info = AutoModelForQuestionAnswering.from_pretrained(export_dir, output_loading_info=True)
        loaded.eval()
        with torch.no_grad():
            o = loaded(**without_labels(probe))
        loaded_logits = torch.stack([o.start_logits, o.end_logits]).float()
        saved = load_file(str(export_dir / "model.safetensors"))
        module_dtype = next(engine.module.parameters()).dtype
        rounded = {k: v.to(module_dtype).to(torch.float64) for k, v in full_params(loaded).items()}
        reloaded_tok = AutoTokenizer.from_pretrained(export_dir)
        export = {
            "files": sorted(p.name for p in export_dir.iterdir()),
            "missing": list(info["missing_keys"]),
            "unexpected": list(info["unexpected_keys"]),
            "mismatched": [list(map(str, m)) for m in info["mismatched_keys"]],
            "loaded_dtype": str(next(loaded.parameters()).dtype),
            "saved_dtypes": sorted({str(t.dtype) for t in saved.values()}),
            "logits_diff": (loaded_logits - engine_logits).abs().max().item(),
            "logits_scale": engine_logits.abs().max().item(),
            # exported (fp32 masters) rounded to the compute dtype == the engine's own weights
            "rounded_diff": max_diff(rounded, module_weights),
            # how far the masters are from the compute-dtype weights (0 for fp32 training)
            "master_vs_module": max_diff(full_params(loaded), module_weights),
            "tokenizer_vocab": reloaded_tok.vocab_size,
            "tokenizer_ids": reloaded_tok("w1 w2")["input_ids"],
        }
    rec[f"export_{label}"] = export

    # ---- the export as the next run's starting point (ZeRO-3: transformers' zero.Init loading path)
    ds = engine.config
    del engine, teacher
    spec = ModelConfig(checkpoint=str(export_dir), dropout=0.0)
    restarted = Engine.create(build_qa_model(spec, vocab_size=VOCAB, pad_token_id=0, ds_config=ds), cfg, dist,
                              total_steps=20, ds_config=ds)
    rec[f"reload_{label}"] = {
        "partitioned_params": sum(hasattr(p, "ds_id") and p.ds_tensor.numel() < p.ds_numel
                                  for p in restarted.module.parameters()),
        "weights_diff": max_diff(full_params(restarted), module_weights),
    }
    del restarted
    distributed.barrier()


def check_checkpoint(dist: DistEnv, rec: Recorder, label: str, ds_path: str, out: Path) -> None:
    """Save at steps 1..3 (keep_last=2), train step 4; a fresh engine loads step 3 and redoes step 4."""
    cfg = train_cfg(ds_path, precision="fp32", warmup_ratio=0.3)
    total = 8
    ckpt = out / f"ckpt_{label}"
    batches = [make_batch(200 + 10 * k + dist.rank, 4) for k in range(5)]
    engine = new_engine(dist, cfg, total, seed=0)
    tags = []
    for k in (1, 2, 3):
        train_step(engine, batches[k])
        tags.append(engine.save_checkpoint(ckpt, k, client_state={"step": k, "data": {"epoch": 0, "seen": 4 * k}},
                                           keep_last=2))
    saved_params = full_params(engine)
    saved_lr = engine.ds_engine.get_lr()[0]
    loss4 = train_step(engine, batches[4])
    params4 = full_params(engine)
    listing = sorted(p.name for p in ckpt.iterdir())
    latest = (ckpt / "latest").read_text().strip()
    del engine

    fresh = new_engine(dist, cfg, total, seed=123)
    fresh_diff_before = max_diff(full_params(fresh), saved_params)
    client_state = fresh.load_checkpoint(ckpt)
    loaded_diff = max_diff(full_params(fresh), saved_params)
    loaded_steps = fresh.global_steps
    loaded_lr = fresh.ds_engine.get_lr()[0]
    reloss4 = train_step(fresh, batches[4])
    reparams4 = full_params(fresh)
    errors = {}
    for key, directory, tag in (("empty_dir", out / f"no_ckpt_{label}", None), ("deleted_tag", ckpt, "step1")):
        try:
            fresh.load_checkpoint(directory, tag=tag)
            errors[key] = None
        except FileNotFoundError as err:
            errors[key] = str(err)
    rec[f"checkpoint_{label}"] = {
        "tags": tags,
        "listing": listing,
        "latest": latest,
        "client_state": client_state,
        "fresh_diff_before_load": fresh_diff_before,
        "loaded_diff": loaded_diff,
        "global_steps": loaded_steps,
        "saved_lr": saved_lr,
        "loaded_lr": loaded_lr,
        "loss4": loss4,
        "reloss4": reloss4,
        "params4_diff": max_diff(reparams4, params4),
        "errors": errors,
    }
    del fresh
    distributed.barrier()


def per_row_loss(outputs, batch: dict) -> torch.Tensor:
    start = F.cross_entropy(outputs.start_logits.float(), batch["start_positions"], reduction="none")
    end = F.cross_entropy(outputs.end_logits.float(), batch["end_positions"], reduction="none")
    return (start + end) / 2


def check_accumulation(dist: DistEnv, rec: Recorder, ds_path: str) -> None:
    """GA=2 x micro 2 vs GA=1 x micro 4 vs one big batch in plain torch, plus masked-row normalisation."""
    world = dist.world_size
    data = make_batch(300, 4 * world)  # the global batch, identical on every rank
    mine = rows_of(data, 4 * dist.rank, 4 * dist.rank + 4)
    valid = torch.tensor([1, 1, 1, 0, 1, 0, 0, 1][: 4 * world], dtype=torch.bool)  # rows that count
    my_valid = valid[4 * dist.rank : 4 * dist.rank + 4]
    n_valid = int(valid.sum())

    # plain torch reference on the whole global batch, from the same initial weights
    torch.manual_seed(0)
    reference = build_qa_model(MODEL, vocab_size=VOCAB, pad_token_id=0)
    initial = copy.deepcopy(reference.state_dict())
    reference.train()

    def reference_norm(loss_fn) -> float:
        reference.zero_grad()
        loss_fn().backward()
        return torch.sqrt(sum((p.grad.double() ** 2).sum() for p in reference.parameters())).item()

    ref_mean = reference_norm(lambda: reference(**data).loss)
    ref_masked = reference_norm(lambda: per_row_loss(reference(**data), data)[valid].sum() / n_valid)

    def naive():  # per-micro-batch mean of valid rows, averaged: what a loop without the fix computes
        parts = []
        for r in range(world):
            for m in range(2):
                lo = 4 * r + 2 * m
                part = rows_of(data, lo, lo + 2)
                parts.append(per_row_loss(reference(**part), part)[valid[lo : lo + 2]].mean())
        return torch.stack(parts).mean()

    ref_naive = reference_norm(naive)

    def run(accumulation: int, masked: bool) -> tuple[float, dict]:
        cfg = train_cfg(ds_path, precision="fp32", micro_batch_size=4 // accumulation,
                        gradient_accumulation_steps=accumulation, adam_eps=1e-3)
        torch.manual_seed(0)
        model = build_qa_model(MODEL, vocab_size=VOCAB, pad_token_id=0)
        model.load_state_dict(initial)
        engine = Engine.create(model, cfg, dist, total_steps=5)
        micro = 4 // accumulation
        for m in range(accumulation):
            part = rows_of(mine, m * micro, (m + 1) * micro)
            outputs = engine.forward(**part)
            if masked:
                rows = per_row_loss(outputs, part)[my_valid[m * micro : (m + 1) * micro]]
                loss = normalize_summed_loss(rows.sum(), n_valid, gradient_accumulation_steps=accumulation,
                                             world_size=world)
            else:
                loss = outputs.loss
            engine.backward(loss)
            took_step = engine.step()
            assert took_step == (m == accumulation - 1)
        return engine.grad_norm, full_params(engine)

    norm_a, params_a = run(1, masked=False)
    norm_b, params_b = run(2, masked=False)
    norm_c, _ = run(2, masked=True)
    rec["accumulation"] = {
        "ref_mean": ref_mean,
        "ga1_norm": norm_a,
        "ga2_norm": norm_b,
        "ga1_vs_ga2_params": max_diff(params_a, params_b),
        "ga_vs_initial_params": max_diff(params_a, {k: v.double() for k, v in initial.items() if k in params_a}),
        "ref_masked": ref_masked,
        "masked_norm": norm_c,
        "ref_naive": ref_naive,
    }
    distributed.barrier()


def check_offload(dist: DistEnv, rec: Recorder, ds_path: str) -> None:
    steps = 8
    cfg = train_cfg(ds_path, precision="fp32")
    t0 = time.perf_counter()
    engine = new_engine(dist, cfg, total_steps=steps)
    t_init = time.perf_counter() - t0
    data = make_batch(400 + dist.rank, 4)
    before = eval_loss(engine, data)
    t0 = time.perf_counter()
    losses = [train_step(engine, data) for _ in range(steps)]
    rec["offload"] = {
        "eval_before": before,
        "eval_after": eval_loss(engine, data),
        "losses": losses,
        "init_s": t_init,
        "steps_s": time.perf_counter() - t0,
        "offload_optimizer": engine.config["zero_optimization"]["offload_optimizer"]["device"],
    }
    del engine
    distributed.barrier()


def suite(out: Path, repo: Path, only: list[str]) -> None:
    t0 = time.perf_counter()
    dist = setup_distributed()
    rec = Recorder(out, dist.rank)
    rec["setup_s"] = time.perf_counter() - t0
    rec["world_size"] = dist.world_size
    zero2 = str(repo / "configs" / "deepspeed" / "zero2.json")
    zero3 = zero3_all_partitioned(repo, out, "zero3") if dist.is_main else None
    zero3 = distributed.broadcast_object(zero3)
    offload = zero3_all_partitioned(repo, out, "zero3_offload") if dist.is_main else None
    offload = distributed.broadcast_object(offload)
    checks = {
        "train": lambda: [
            check_training(dist, rec, f"{stage}_{precision}", path, precision, out)
            for stage, path in (("z2", zero2), ("z3", zero3))
            for precision in ("fp32", "bf16")
        ],
        "checkpoint": lambda: [check_checkpoint(dist, rec, s, p, out) for s, p in (("z2", zero2), ("z3", zero3))],
        "accumulation": lambda: check_accumulation(dist, rec, zero2),
        "offload": lambda: check_offload(dist, rec, offload),
    }
    for name, check in checks.items():
        if not only or name in only:
            t = time.perf_counter()
            check()
            rec[f"time_{name}_s"] = time.perf_counter() - t
    rec["total_s"] = time.perf_counter() - t0
    rec["done"] = True
    distributed.cleanup()


def single(out: Path, repo: Path) -> None:
    """A plain process: no RANK/WORLD_SIZE/MASTER_* in the environment, no launcher."""
    import os

    env_before = {k: os.environ.get(k) for k in ("RANK", "LOCAL_RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")}
    dist = setup_distributed()
    again = setup_distributed()
    rec = Recorder(out, dist.rank)
    rec["env_before"] = env_before
    rec["dist"] = {"rank": dist.rank, "local_rank": dist.local_rank, "world_size": dist.world_size,
                   "is_main": dist.is_main, "device": str(dist.device), "same_again": dist == again}
    rec["backend"] = torch.distributed.get_backend()
    engine = new_engine(dist, train_cfg(str(repo / "configs" / "deepspeed" / "zero2.json")), total_steps=4)
    data = make_batch(500, 4)
    rec["losses"] = [train_step(engine, data) for _ in range(4)]
    rec["gathered"] = distributed.all_gather_object({"rank": dist.rank})
    rec["done"] = True
    distributed.cleanup()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("scenario", choices=["suite", "single"])
    parser.add_argument("--out", required=True, type=Path)
    parser.add_argument("--repo", required=True, type=Path)
    parser.add_argument("--only", nargs="*", default=[])
    args = parser.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    if args.scenario == "suite":
        suite(args.out, args.repo, args.only)
    else:
        single(args.out, args.repo)


if __name__ == "__main__":
    sys.exit(main())
