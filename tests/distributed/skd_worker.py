"""Rank program for tests/test_skd.py: the real SKD method on a real DeepSpeed engine, instrumented.

``python -m torch.distributed.run --standalone --nproc_per_node 2 skd_worker.py JOB.yaml ZERO.json OUT``

Runs three epochs (= three generations) of self-distillation on the job's shards and records, per
epoch: how far the new teacher is from the student at the moment of the refresh, whether it stays frozen
during the epoch, and whether it receives gradients. Then, in eval mode (no dropout), it checks the
logged coefficient and the two loss variants against an independent computation from the teacher's
and the student's logits. Each rank writes ``OUT/rank<r>.json``; the test asserts.
"""

from __future__ import annotations

import json
import sys
from dataclasses import replace
from pathlib import Path

import torch
import torch.nn.functional as F

from xdist.config import load_config
from xdist.data.features import load_tokenizer
from xdist.data.stream import TrainStream
from xdist.distributed import setup_distributed
from xdist.engine import Engine, resolve_deepspeed_config
from xdist.methods import build_method
from xdist.methods.base import model_inputs
from xdist.models import build_qa_model, iter_full_parameters


def full_params(module) -> dict[str, torch.Tensor]:
    return {name: value.detach().float().clone() for name, value in iter_full_parameters(module)}


def max_diff(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> float:
    assert a.keys() == b.keys()
    return max((a[n] - b[n]).abs().max().item() for n in a)


def authors_map_coefficient(teacher: torch.Tensor, gold: torch.Tensor, k: int, window: int, temperature: float
                            ) -> float:
    """Carrino et al.'s routine, literally: top-k of softmax(t/T) → relevance list → apk(actual=[1])."""
    scores = []
    for head in range(2):
        per_example = []
        for b in range(teacher.shape[0]):
            probs = torch.softmax(teacher[b, head].double() / temperature, dim=-1)
            top = probs.topk(k).indices.tolist()
            relevant = set(range(int(gold[b, head]) - window, int(gold[b, head]) + window))
            relevance = [1 if pos in relevant else 0 for pos in top]
            per_example.append(1.0 / (relevance.index(1) + 1) if 1 in relevance else 0.0)
        scores.append(sum(per_example) / len(per_example))
    return (scores[0] + scores[1]) / 2


def main(job: str, zero_json: str, out: str) -> None:
    out_dir = Path(out)
    cfg = load_config(job, [f"train.deepspeed={zero_json}", f"train.output_dir={out_dir / 'run'}", "method.name=skd",
                            "method.coefficient=map", "model.dropout=0.1"])
    dist = setup_distributed()
    tokenizer = load_tokenizer(cfg.features.tokenizer)
    stream = TrainStream(cfg.data.shards, rank=dist.rank, world_size=dist.world_size,
                         micro_batch_size=cfg.train.micro_batch_size, data=cfg.data, seed=cfg.train.seed)
    epochs = 3
    total = stream.epoch_batches * epochs
    ds_config = resolve_deepspeed_config(cfg.train, world_size=dist.world_size, total_steps=total,
                                         device_type=dist.device.type)
    # Persistence threshold 0: under ZeRO-3 every parameter of this tiny model is really partitioned.
    ds_config["zero_optimization"].setdefault("stage3_param_persistence_threshold", 0)
    model = build_qa_model(cfg.model, vocab_size=len(tokenizer), pad_token_id=tokenizer.pad_token_id,
                           ds_config=ds_config)
    engine = Engine.create(model, cfg.train, dist, total, ds_config=ds_config)
    method = build_method(cfg.method, output_dir=out_dir / "run", dist=dist,
                          manifest_for_epoch=stream.manifest_for)
    record: dict = {"zero_stage": engine.zero_stage, "epochs": []}

    engine.train()
    for epoch in range(epochs):
        student_at_refresh = full_params(engine.module)
        method.on_epoch_start(epoch, engine)
        teacher = method.teacher
        teacher_at_start = {n: p.detach().float().clone() for n, p in teacher.named_parameters()}
        for batch in stream.iter_epoch(epoch):
            output = method.step(engine, batch)
            engine.backward(output.loss)
            engine.step()
        teacher_at_end = {n: p.detach().float().clone() for n, p in teacher.named_parameters()}
        record["epochs"].append({
            "generation": method.generation,
            "teacher_vs_student_at_refresh": max_diff(teacher_at_start, student_at_refresh),
            "teacher_change_during_epoch": max_diff(teacher_at_end, teacher_at_start),
            "student_vs_teacher_at_end": max_diff(full_params(engine.module), teacher_at_end),
            "teacher_requires_grad": any(p.requires_grad for p in teacher.parameters()),
            "teacher_has_grad": any(p.grad is not None for p in teacher.parameters()),
            "teacher_training_mode": teacher.training,
            "snapshot_complete": (out_dir / "run" / "teachers" / f"gen{epoch}" / "COMPLETE").is_file(),
        })

    # Coefficient and loss variants on one batch, eval mode (deterministic student logits).
    engine.eval()
    batch = next(iter(stream.iter_epoch(0)))
    with torch.no_grad():
        student_out = engine.forward(**model_inputs(batch))
        student = torch.stack([student_out.start_logits, student_out.end_logits], 1).double()
        teacher_out = method.teacher(**model_inputs(batch))
        teacher_logits = torch.stack([teacher_out.start_logits, teacher_out.end_logits], 1).double()
    gold = torch.stack([batch["start_positions"], batch["end_positions"]], 1)
    T = cfg.method.temperature
    ce = sum(F.cross_entropy(student[:, h], gold[:, h]) for h in range(2)).item() / 2
    kl = sum(F.kl_div(F.log_softmax(student[:, h] / T, -1), F.log_softmax(teacher_logits[:, h] / T, -1),
                      reduction="batchmean", log_target=True) for h in range(2)).item() / 2 * T * T
    expected_coef = authors_map_coefficient(teacher_logits, gold, cfg.method.k, cfg.method.window, T)
    with torch.no_grad():
        mapped = method.step(engine, batch)
        method.cfg = replace(cfg.method, coefficient="constant")
        constant = method.step(engine, batch)
    record["check"] = {
        "ce": ce, "kl": kl, "expected_coefficient": expected_coef,
        "logged_coefficient": mapped.logs["kd/coefficient"], "loss_map": mapped.loss.item(),
        "loss_constant": constant.loss.item(), "logged_kd": constant.logs["loss/kd"],
    }
    (out_dir / f"rank{dist.rank}.json").write_text(json.dumps(record, indent=1))


if __name__ == "__main__":
    main(*sys.argv[1:4])
