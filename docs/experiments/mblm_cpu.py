"""MBLM vs a same-size unbranched CE baseline on this CPU (the report: docs/experiments/mblm_cpu.md).

Data: the labelled XNLI dev rows (15 languages, parallel), split by premise group (``groups: train|eval``,
the classification task's deterministic split). Supervised languages en, de, zh: their train-group rows.
Every language's eval-group rows are scored: en/de/zh are the supervised group, the other 12 zero-shot.

Runs, all from random init with the mBERT tokenizer (one process, plain AdamW + linear decay, fp32):

* teachers: one small BERT per supervised language, trained with CE on that language alone, saved as a
  standard checkpoint (+ tokenizer) and read back through MBLM's teacher loader into the logit cache;
* baseline: the same-size unbranched model, CE on the three languages' rows;
* MBLM: the branched student (same initial weights as the baseline, top K layers copied per language)
  trained with :class:`xdist.methods.mblm.method.MBLM` (KD from each row's teacher + λ·mixture KD), the
  same rows, steps, learning rate and schedule; a small K × λ sweep.

Usage: ``python docs/experiments/mblm_cpu.py --out runs/mblm-cpu`` (``XDIST_DATA`` locates the data);
writes ``results.json`` there. This driver uses xdist's readers, features, branched model, MBLM method,
teacher cache and metrics directly (not ``xdist train``: ``method.name: mblm`` is not wired into the CLI yet).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from transformers import BertConfig, BertForSequenceClassification

from xdist.branched import branched_from_standard
from xdist.config import SourceConfig
from xdist.data.tokenizer import load_tokenizer
from xdist.distributed import DistEnv
from xdist.config import BranchesConfig, MBLMConfig
from xdist.methods.mblm.method import MBLM, model_inputs
from xdist.methods.mblm.teachers import fingerprint, teacher_loader
from xdist.methods.teacher_cache import MultiTeacherCache
from xdist.tasks.classification.features import collate, encode_pairs
from xdist.tasks.classification.metrics import language_scores, mcnemar_exact
from xdist.tasks.classification.readers import read_classification_source

SUPERVISED = ["en", "de", "zh"]
SOLO = DistEnv(rank=0, local_rank=0, world_size=1, device=torch.device("cpu"))


def read(root: str, groups: str) -> list:
    source = SourceConfig(name="xnli", format="xnli", path="xnli-dev", split="dev", groups=groups)
    return read_classification_source(source, root=root).examples


def tensors(examples, tokenizer, max_length):
    batch = {k: torch.from_numpy(v) for k, v in collate(encode_pairs(examples, tokenizer, max_length)).items()}
    batch["language"] = [e.language for e in examples]
    batch["uid"] = [e.uid for e in examples]
    return batch


def slice_batch(batch, index):
    """Rows ``index`` of ``batch``, the sequence axis cut to the longest row (padding past it changes nothing
    under the attention mask, and costs time)."""
    rows = {k: (v[index] if torch.is_tensor(v) else [v[i] for i in index]) for k, v in batch.items()}
    length = int(rows["attention_mask"].sum(1).max())
    return {k: (v[:, :length] if torch.is_tensor(v) and v.dim() == 2 else v) for k, v in rows.items()}


def encoder_config(args, vocab_size: int, classes: list[str]) -> BertConfig:
    return BertConfig(vocab_size=vocab_size, hidden_size=args.hidden, num_hidden_layers=args.layers,
                      num_attention_heads=args.heads, intermediate_size=2 * args.hidden,
                      max_position_embeddings=args.max_length, num_labels=len(classes),
                      id2label=dict(enumerate(classes)), label2id={c: i for i, c in enumerate(classes)},
                      hidden_dropout_prob=0.1, attention_probs_dropout_prob=0.1)


def fresh(args, vocab_size, classes, seed) -> BertForSequenceClassification:
    torch.manual_seed(seed)
    return BertForSequenceClassification(encoder_config(args, vocab_size, classes))


def train(model, batch, loss_fn, args, seed) -> dict:
    """Epochs of shuffled micro-batches, AdamW + linear decay (xdist's defaults: no warm-up)."""
    rows = batch["input_ids"].shape[0]
    steps_per_epoch = rows // args.batch_size
    total = steps_per_epoch * args.epochs
    optimizer = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=0.01)
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda k: max(0.0, 1 - k / total))
    g = torch.Generator().manual_seed(seed)
    model.train()
    losses, start = [], time.perf_counter()
    for _ in range(args.epochs):
        order = torch.randperm(rows, generator=g)
        for s in range(steps_per_epoch):
            micro = slice_batch(batch, order[s * args.batch_size:(s + 1) * args.batch_size].tolist())
            loss = loss_fn(model, micro)
            optimizer.zero_grad()
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            optimizer.step()
            schedule.step()
            losses.append(float(loss.detach()))
    seconds = time.perf_counter() - start
    return {"steps": total, "seconds": seconds, "s_per_step": seconds / max(total, 1),
            "loss_first": float(np.mean(losses[:20])), "loss_last": float(np.mean(losses[-20:]))}


def ce_loss(model, micro):
    return F.cross_entropy(model(**model_inputs(micro)).logits, micro["labels"])


@torch.no_grad()
def predict(model, batch, branched: bool, chunk: int = 256) -> tuple[np.ndarray, float]:
    model.eval()
    preds, start = [], time.perf_counter()
    for lo in range(0, batch["input_ids"].shape[0], chunk):
        micro = slice_batch(batch, list(range(lo, min(lo + chunk, batch["input_ids"].shape[0]))))
        if branched:
            branch = torch.tensor([model.config.branch_of(lang) for lang in micro["language"]])
            logits = model(**model_inputs(micro), branch=branch).logits
        else:
            logits = model(**model_inputs(micro)).logits
        preds.append(logits.argmax(-1).numpy())
    return np.concatenate(preds), time.perf_counter() - start


def score(preds, eval_batch, order) -> dict:
    labels = eval_batch["labels"].tolist()
    scores = language_scores(preds.tolist(), labels, eval_batch["language"], order=order)
    sup = [scores.accuracy[lang] for lang in SUPERVISED]
    zero = [acc for lang, acc in scores.accuracy.items() if lang not in SUPERVISED]
    return {"accuracy": scores.accuracy, "summary": scores.summary, "supervised": float(np.mean(sup)),
            "zero_shot": float(np.mean(zero))}


def report(results: dict) -> str:
    """Markdown tables of ``results.json``: accuracy per language and run, McNemar vs the baseline, overhead."""
    runs = results["runs"]
    langs = list(results["eval_rows"])
    names = [n for n in runs if not n.startswith("teacher-")]
    lines = ["| run | " + " | ".join(langs) + " | supervised | zero-shot | macro |",
             "|---|" + "---:|" * (len(langs) + 3)]
    for name in [n for n in runs if n.startswith("teacher-")] + names:
        r = runs[name]
        cells = [f"{r['accuracy'][lang]:.1f}" for lang in langs]
        lines.append(f"| {name} | " + " | ".join(cells)
                     + f" | {r['supervised']:.1f} | {r['zero_shot']:.1f} | {r['summary']['macro']:.1f} |")
    lines += ["", "McNemar (exact, two-sided) per language, MBLM run vs baseline: p (only MBLM right / only baseline "
              "right)", "", "| run | " + " | ".join(langs) + " |", "|---|" + "---:|" * len(langs)]
    for name in names:
        tests = runs[name].get("mcnemar_vs_baseline")
        if tests:
            cells = [f"{t['p_value']:.2f} ({t['only_a']}/{t['only_b']})" for t in (tests[lang] for lang in langs)]
            lines.append(f"| {name} | " + " | ".join(cells) + " |")
    base = runs["baseline"]
    lines += ["", "| run | parameters | vs baseline | train s/step | vs baseline | eval s | vs baseline | "
              "loss first→last 20 steps |", "|---|---:|---:|---:|---:|---:|---:|---|"]
    for name in names:
        r = runs[name]
        lines.append(f"| {name} | {r['params']:,} | {r['params'] / base['params']:.3f}x | {r['s_per_step']:.3f} | "
                     f"{r['s_per_step'] / base['s_per_step']:.2f}x | {r['eval_seconds']:.1f} | "
                     f"{r['eval_seconds'] / base['eval_seconds']:.2f}x | {r['loss_first']:.3f}→{r['loss_last']:.3f} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="runs/mblm-cpu")
    parser.add_argument("--report", action="store_true", help="print the tables of <out>/results.json and stop")
    parser.add_argument("--data", default=os.environ.get("XDIST_DATA", "../shared/data"))
    parser.add_argument("--hidden", type=int, default=64)
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--heads", type=int, default=2)
    parser.add_argument("--max-length", type=int, default=128)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--teacher-epochs", type=int, default=6)
    parser.add_argument("--lr", type=float, default=5e-4)
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--sweep", default="2:1,2:0,1:1,1:0", help="K:lambda pairs (the first is the default run)")
    parser.add_argument("--limit", type=int, default=None, help="train rows per language (smoke runs)")
    args = parser.parse_args()
    out = Path(args.out)
    if args.report:
        print(report(json.loads((out / "results.json").read_text())))
        return
    out.mkdir(parents=True, exist_ok=True)
    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))

    tokenizer_dir = Path(args.data) / "tokenizers" / "mbert-cased"
    tokenizer = load_tokenizer(tokenizer_dir)
    train_rows = [e for e in read(args.data, "train") if e.language in SUPERVISED]
    if args.limit:
        train_rows = [e for lang in SUPERVISED for e in [r for r in train_rows if r.language == lang][: args.limit]]
    eval_rows = read(args.data, "eval")
    classes = ["entailment", "neutral", "contradiction"]
    order = list(dict.fromkeys(e.language for e in eval_rows))
    train_batch, eval_batch = tensors(train_rows, tokenizer, args.max_length), tensors(eval_rows, tokenizer,
                                                                                       args.max_length)
    results: dict = {"args": vars(args), "train_rows": {lang: sum(e.language == lang for e in train_rows)
                                                        for lang in SUPERVISED},
                     "eval_rows": {lang: sum(e.language == lang for e in eval_rows) for lang in order}, "runs": {}}
    vocab = len(tokenizer)

    # Teachers: each language alone, saved as standard checkpoints with the tokenizer beside them.
    teachers = {}
    for i, lang in enumerate(SUPERVISED):
        index = [j for j, e in enumerate(train_rows) if e.language == lang]
        model = fresh(args, vocab, classes, args.seed + 100 + i)
        targs = argparse.Namespace(**{**vars(args), "epochs": args.teacher_epochs})
        log = train(model, slice_batch(train_batch, index), ce_loss, targs, args.seed + i)
        path = out / f"teacher-{lang}"
        model.save_pretrained(path)
        tokenizer.save_pretrained(path)
        teachers[lang] = str(path)
        preds, _ = predict(model, eval_batch, branched=False)
        results["runs"][f"teacher-{lang}"] = {**log, **score(preds, eval_batch, order)}
        print(f"teacher {lang}: {results['runs'][f'teacher-{lang}']['accuracy'][lang]:.1f} on {lang}", flush=True)

    # Baseline: the same-size unbranched model, CE on the three languages.
    baseline = fresh(args, vocab, classes, args.seed)
    log = train(baseline, train_batch, ce_loss, args, args.seed)
    base_preds, base_time = predict(baseline, eval_batch, branched=False)
    params = sum(p.numel() for p in baseline.parameters())
    results["runs"]["baseline"] = {**log, **score(base_preds, eval_batch, order), "params": params,
                                   "eval_seconds": base_time}
    print("baseline", results["runs"]["baseline"]["supervised"], results["runs"]["baseline"]["zero_shot"], flush=True)

    labels = eval_batch["labels"].numpy()
    for spec in args.sweep.split(","):
        k, lam = int(spec.split(":")[0]), float(spec.split(":")[1])
        branches = BranchesConfig(languages=SUPERVISED, layers=k)
        cfg = MBLMConfig(mixture_weight=lam)

        def build_cache():
            loaders, items, prints = {}, {}, {}
            for lang, path in teachers.items():
                mine = [e for e in train_rows if e.language == lang]
                loaders[lang] = teacher_loader(lang, path, student_tokenizer=tokenizer_dir,
                                               max_length=args.max_length, class_names=classes,
                                               device=torch.device("cpu"))
                items[lang] = [(e.uid, e) for e in mine]
                prints[lang] = fingerprint(lang, path, tokenizer_dir, args.max_length, mine)
            return MultiTeacherCache.build(loaders, items, out / "teacher-cache", SOLO, fingerprints=prints,
                                           batch_size=128)

        method = MBLM(cfg, branches, build_cache=build_cache)
        student = branched_from_standard(fresh(args, vocab, classes, args.seed), SUPERVISED, branch_layers=k)
        method.on_epoch_start(0, student)
        log = train(student, train_batch, lambda m, micro, method=method: method.step(m, micro).loss, args, args.seed)
        preds, eval_time = predict(student, eval_batch, branched=True)
        run = {**log, **score(preds, eval_batch, order), "K": k, "lambda": lam,
               "params": sum(p.numel() for p in student.parameters()), "eval_seconds": eval_time}
        run["mcnemar_vs_baseline"] = {}
        for lang in order:
            rows = np.asarray([e.language == lang for e in eval_rows])
            test = mcnemar_exact(preds[rows] == labels[rows], base_preds[rows] == labels[rows])
            run["mcnemar_vs_baseline"][lang] = vars(test)
        results["runs"][f"mblm-K{k}-lambda{lam:g}"] = run
        print(f"mblm K={k} lambda={lam}", run["supervised"], run["zero_shot"], flush=True)
        (out / "results.json").write_text(json.dumps(results, indent=1))
    (out / "results.json").write_text(json.dumps(results, indent=1))
    assert math.isfinite(results["runs"]["baseline"]["loss_last"])


if __name__ == "__main__":
    main()
