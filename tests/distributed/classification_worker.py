"""Rank program for tests/tasks/classification/test_classification_engine.py: both classification heads on real
2-rank DeepSpeed engines (CPU, gloo), trained on real English XNLI rows with the mBERT tokenizer.

One launch, four engines — each head under both ZeRO stages and both precisions, crossed so that four
engines cover them: classifier z2/fp32 and z3/bf16, prompt z2/bf16 and z3/fp32. Per engine: the loss on
the training rows before/after 16 steps, and (rank 0) the export loaded by plain ``transformers``
reproducing the engine's class logits. (Exact resume is tested through ``xdist train --resume`` in
test_classification_e2e.py.) Each rank writes ``<out>/rank<r>.json``.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

from xdist.config import ModelConfig, PromptConfig, SourceConfig, TrainConfig
from xdist.deepspeed_config import resolve_deepspeed_config
from xdist.distributed import DistEnv, setup_distributed
from xdist.engine import Engine
from xdist.tasks.classification.features import PromptTemplate, collate, encode_pairs, encode_prompts
from xdist.tasks.classification.formats import DEFAULT_TEMPLATES
from xdist.tasks.classification.heads import build_classification_model, class_logits, cross_entropy
from xdist.tasks.classification.readers import read_classification_source
from xdist.tasks.classification.verbalizer import build_verbalizer

CLASSES = ["entailment", "neutral", "contradiction"]
WORDS = {"entailment": ["Yes"], "neutral": ["Maybe"], "contradiction": ["No"]}
MODEL = ModelConfig(architecture={"hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 2,
                                  "intermediate_size": 64, "max_position_embeddings": 64}, dropout=0.0)
ROWS, BATCH, STEPS, LENGTH = 16, 8, 16, 56
ENGINES = [("classifier", "zero2", "fp32"), ("classifier", "zero3", "bf16"), ("prompt", "zero2", "bf16"),
           ("prompt", "zero3", "fp32")]


class Recorder:
    def __init__(self, out: Path, rank: int) -> None:
        self.path = out / f"rank{rank}.json"
        self.results: dict = {}

    def __setitem__(self, key: str, value) -> None:
        self.results[key] = value
        self.path.write_text(json.dumps(self.results, indent=1))


def batches(head: str, tokenizer, data: Path, rank: int) -> list[dict[str, torch.Tensor]]:
    """This rank's training batches: English XNLI dev rows (each rank its own half)."""
    source = SourceConfig(name="xnli", format="xnli", path=str(data / "xnli-dev"), language=None,
                                        languages=["en"], max_examples=2 * ROWS)
    examples = read_classification_source(source).examples[rank * ROWS : (rank + 1) * ROWS]
    if head == "prompt":
        template = PromptTemplate.parse(DEFAULT_TEMPLATES["xnli"], choice=False)
        verbalizer = build_verbalizer(PromptConfig(verbalizer=WORDS), None, CLASSES, tokenizer)
        features = encode_prompts(examples, tokenizer, LENGTH, template, verbalizer)
    else:
        features = encode_pairs(examples, tokenizer, LENGTH)
    return [{k: torch.as_tensor(v) for k, v in collate(features[i : i + BATCH]).items()}
            for i in range(0, ROWS, BATCH)]


def new_engine(head: str, ds_name: str, precision: str, dist: DistEnv, tokenizer, repo: Path) -> Engine:
    cfg = TrainConfig(deepspeed=str(repo / "configs" / "deepspeed" / f"{ds_name}.json"), micro_batch_size=BATCH,
                      lr=1e-2, precision=precision, warmup_ratio=0.0)
    ds = resolve_deepspeed_config(cfg, world_size=dist.world_size, total_steps=STEPS, device_type="cpu")
    if ds_name == "zero3":  # partition every parameter of the tiny model (the shipped threshold keeps them whole)
        ds["zero_optimization"]["stage3_param_persistence_threshold"] = 0
    torch.manual_seed(0)
    model = build_classification_model(MODEL, head, class_names=CLASSES, vocab_size=len(tokenizer),
                                       pad_token_id=tokenizer.pad_token_id, ds_config=ds)
    return Engine.create(model, cfg, dist, STEPS, ds_config=ds)


def step(engine: Engine, batch: dict) -> float:
    loss = cross_entropy(class_logits(engine.forward, batch), batch)
    engine.backward(loss)
    engine.step()
    return float(loss.detach())


def eval_loss(engine: Engine, data: list[dict]) -> tuple[float, torch.Tensor]:
    engine.eval()
    with torch.no_grad():
        logits = [class_logits(engine.forward, b) for b in data]
        loss = sum(float(cross_entropy(lg, b)) for lg, b in zip(logits, data, strict=True)) / len(data)
    engine.train()
    return loss, torch.cat(logits)


def plain_logits(head: str, directory: Path, data: list[dict]) -> torch.Tensor:
    """Class logits of the export loaded with plain transformers (the full MLM output for the prompt head)."""
    from transformers import AutoModelForMaskedLM, AutoModelForSequenceClassification

    auto = AutoModelForMaskedLM if head == "prompt" else AutoModelForSequenceClassification
    model = auto.from_pretrained(directory).eval()
    out = []
    with torch.no_grad():
        for b in data:
            inputs = {k: b[k] for k in ("input_ids", "attention_mask", "token_type_ids")}
            logits = model(**inputs).logits
            if head == "prompt":  # [B, L, V] at the mask, gathered at the verbalizer's ids
                logits = logits[torch.arange(len(logits)), b["mask_positions"]][:, b["verbalizer_ids"][0]]
            out.append(logits.float())
    return torch.cat(out)


def run_engine(head, ds_name, precision, dist, tokenizer, repo, data_dir, out) -> dict:
    label = f"{head}_{ds_name}_{precision}"
    data = batches(head, tokenizer, data_dir, dist.rank)
    t0 = time.perf_counter()
    engine = new_engine(head, ds_name, precision, dist, tokenizer, repo)
    before, _ = eval_loss(engine, data)
    losses = []
    for k in range(STEPS):
        losses.append(step(engine, data[k % len(data)]))
    after, logits = eval_loss(engine, data)
    result = {"before": before, "after": after, "losses": losses, "zero_stage": engine.zero_stage,
              "dtype": str(next(engine.module.parameters()).dtype), "seconds": time.perf_counter() - t0}

    export_dir = out / f"export_{label}"
    engine.export_pretrained(export_dir, tokenizer=None)
    if dist.is_main:
        plain = plain_logits(head, export_dir, data)
        result["export_diff"] = (plain - logits).abs().max().item()
        result["export_scale"] = logits.abs().max().item()
        result["export_config"] = json.loads((export_dir / "config.json").read_text())["architectures"]
    return result


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--out", required=True, type=Path)
    parser.add_argument("--repo", required=True, type=Path)
    parser.add_argument("--data", required=True, type=Path)
    args = parser.parse_args(argv)
    from xdist.data.tokenizer import load_tokenizer

    dist = setup_distributed()
    rec = Recorder(args.out, dist.rank)
    tokenizer = load_tokenizer(args.data / "tokenizers" / "mbert-cased")
    for head, ds_name, precision in ENGINES:
        rec[f"{head}_{ds_name}_{precision}"] = run_engine(
            head, ds_name, precision, dist, tokenizer, args.repo, args.data, args.out
        )
    rec["done"] = True


if __name__ == "__main__":
    sys.exit(main())
