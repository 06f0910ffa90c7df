"""Rank program for tests/test_mblm_distributed.py: the MBLM method on real 2-rank DeepSpeed engines.

For ZeRO-2 and ZeRO-3 (every parameter partitioned), with Dirichlet mixtures: the branched student built
(partitioned under ZeRO-3), the several-teacher cache built collectively (each rank a share of each
teacher's rows) with no teacher left resident, training steps, a checkpoint in the middle with the
method's state, a resumed engine + method that must reproduce the remaining losses and draws exactly, and
one branch exported from the (partitioned) engine. Each rank writes ``<out>/rank<r>.json``; the test asserts.
"""

from __future__ import annotations

import argparse
import gc
import sys
from pathlib import Path

import torch
from transformers import AutoModelForSequenceClassification, PreTrainedModel

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from tests.distributed.engine_worker import Recorder, zero3_all_partitioned  # noqa: E402
from tests.mblm_helpers import CLASSES, examples, tiny_classifier  # noqa: E402
from xdist.branched import branched_from_standard, export_branch  # noqa: E402
from xdist.config import (  # noqa: E402
    BranchesConfig,
    MBLMConfig,
    TrainConfig,  # noqa: E402
)
from xdist.data.tokenizer import load_tokenizer  # noqa: E402
from xdist.distributed import setup_distributed  # noqa: E402
from xdist.engine import Engine, resolve_deepspeed_config  # noqa: E402
from xdist.methods.mblm.method import (
    MBLM,  # noqa: E402
    model_inputs,  # noqa: E402
)
from xdist.methods.mblm.teachers import fingerprint, teacher_loader  # noqa: E402
from xdist.methods.teacher_cache import MultiTeacherCache  # noqa: E402
from xdist.tasks.classification.features import collate, encode_pairs  # noqa: E402
from xdist.weights import partition_footprint  # noqa: E402

LANGS = ["en", "de"]
STEPS, CUT = 12, 6


def resident_models() -> list[str]:
    gc.collect()
    return sorted(type(o).__name__ for o in gc.get_objects() if isinstance(o, PreTrainedModel))


def rank_batches(tokenizer, rank: int) -> list[dict]:
    """This rank's two micro-batches of 3 rows (both languages in each), the same every epoch."""
    rows = examples(*LANGS)[rank::2]
    batches = []
    for part in (rows[:3], rows[3:]):
        batch = {k: torch.from_numpy(v) for k, v in collate(encode_pairs(part, tokenizer, 32)).items()}
        batch["groups"] = [e.language for e in part]  # what the stream's batches carry
        batch["keys"] = [e.uid for e in part]
        batches.append(batch)
    return batches


def make(args, dist, ds_path: str, cache_dir: Path):
    cfg = TrainConfig(deepspeed=ds_path, micro_batch_size=3, lr=1e-2, max_grad_norm=1.0)
    ds = resolve_deepspeed_config(cfg, world_size=dist.world_size, total_steps=STEPS, device_type="cpu")
    tokenizer = load_tokenizer(args.student_tokenizer)
    standard = tiny_classifier(len(tokenizer), seed=3, layers=3)
    standard.config.hidden_dropout_prob = standard.config.attention_probs_dropout_prob = 0.0
    branches = BranchesConfig(languages=LANGS, layers=1, mixture="dirichlet", share_head=False)
    model = branched_from_standard(standard, LANGS, branch_layers=1, share_head=False, mixture="dirichlet",
                                   ds_config=ds)
    del standard
    engine = Engine.create(model, cfg, dist, STEPS, ds_config=ds)
    teachers = {"en": args.teacher_en, "de": args.teacher_de}
    rows = examples(*LANGS)

    def build_cache():
        loaders, items, prints = {}, {}, {}
        for lang, path in teachers.items():
            mine = [e for e in rows if e.language == lang]
            loaders[lang] = teacher_loader(lang, path, student_tokenizer=args.student_tokenizer, max_length=32,
                                           class_names=CLASSES, device=dist.device)
            items[lang] = [(e.uid, e) for e in mine]
            prints[lang] = fingerprint(lang, path, args.student_tokenizer, 32, mine)
        return MultiTeacherCache.build(loaders, items, cache_dir, dist, fingerprints=prints, batch_size=2)

    method = MBLM(cfg=MBLMConfig(mixture_weight=0.5, dirichlet_alpha=0.5, seed=11), branches=branches,
                  build_cache=build_cache)
    return engine, method, tokenizer


def train(engine, method, batches, steps) -> tuple[list[float], list[list[float]]]:
    losses, draws = [], []
    for step in steps:
        out = method.step(engine, batches[step % 2])
        engine.backward(out.loss)
        engine.step()
        losses.append(float(out.loss.detach()))
        draws.append([float(out.logs[f"mixture/{lang}"]) for lang in LANGS])
    return losses, draws


def scenario(args, dist, rec: Recorder, name: str, ds_path: str) -> None:
    out = Path(args.out) / name
    engine, method, tokenizer = make(args, dist, ds_path, out / "cache")
    before = resident_models()
    method.on_epoch_start(0, engine)
    result = {"resident_before": before, "resident_after": resident_models(),
              "cache_rows": {lang: len(c) for lang, c in method.cache.caches.items()},
              "rank_files": sorted(p.name for p in (out / "cache" / "en").glob("rank*.npz")),
              "zero_stage": engine.zero_stage,
              "footprint": vars(partition_footprint(engine))}
    batches = rank_batches(tokenizer, dist.rank)
    losses, draws = train(engine, method, batches, range(CUT))
    engine.save_checkpoint(out / "ckpt", step=CUT, client_state={"method": method.state_dict()})
    more, more_draws = train(engine, method, batches, range(CUT, STEPS))
    result.update(losses=losses + more, draws=draws + more_draws)

    # Export one branch from the live (possibly partitioned) engine; rank 0 compares it with the engine.
    engine.eval()
    with torch.no_grad():
        live = engine(**model_inputs(batches[0]), branch=torch.tensor([1, 1, 1])).branch_logits[:, 1].float()
    export_branch(engine, 1, out / "branch-de", tokenizer)
    if dist.is_main:
        single = AutoModelForSequenceClassification.from_pretrained(out / "branch-de").eval()
        with torch.no_grad():
            exported = single(**model_inputs(batches[0])).logits
        result["export_class"] = type(single).__name__
        result["export_max_diff"] = float((exported - live).abs().max())
    engine.train()
    del engine, method

    engine, method, _ = make(args, dist, ds_path, out / "cache")
    client = engine.load_checkpoint(out / "ckpt")
    method.load_state_dict(client["method"])
    method.on_epoch_start(0, engine)  # the complete cache is reused (no teacher loaded)
    resumed, resumed_draws = train(engine, method, batches, range(CUT, STEPS))
    result.update(resumed=resumed, resumed_draws=resumed_draws)
    rec[name] = result


def main() -> None:
    parser = argparse.ArgumentParser()
    for flag in ("--out", "--repo", "--teacher-en", "--teacher-de", "--student-tokenizer"):
        parser.add_argument(flag, required=True)
    args = parser.parse_args()
    dist = setup_distributed()
    rec = Recorder(Path(args.out), dist.rank)
    repo = Path(args.repo)
    scenario(args, dist, rec, "z2", str(repo / "configs" / "deepspeed" / "zero2.json"))
    scenario(args, dist, rec, "z3", zero3_all_partitioned(repo, Path(args.out), "zero3"))
    rec["done"] = True


if __name__ == "__main__":
    main()
