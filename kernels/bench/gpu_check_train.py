"""Training sections of the GPU check (:mod:`kernels.bench.gpu_check`): xdist vs Hugging Face Trainer +
DeepSpeed on one model, batch and data, and an SKD epoch with the teacher-logit cache vs a CE epoch.

Everything runs offline from files this module writes into a work directory:

* a word-level fast tokenizer with ``vocab`` tokens (XLM-R's 250,002 for the real check) — the throughput
  of a random-init model does not depend on which tokenizer produced the ids;
* a SQuAD-format file of random "word" contexts filling ``seq_len`` tokens with a random answer span,
  turned into webdataset shards by ``xdist prepare`` (the real data path);
* a job YAML: XLM-R-large shape (24 layers, hidden 1024, 16 heads, FFN 4096; random init), bf16,
  ZeRO-2 (``configs/deepspeed/zero2.json``), one rank.

xdist runs are ``python -m xdist.cli train`` subprocesses; their step times come from ``train_log.jsonl``.
The Hugging Face baseline (``python -m kernels.bench.gpu_check_train hf CONFIG ...``) builds the same
model the same way (the QA task's ``build_model``, same seed), reads the same shards in the same order
(:class:`xdist.data.stream.TrainStream`), and trains with ``Trainer`` + the same DeepSpeed JSON (whose
``"auto"`` values the Trainer fills, the convention xdist follows). Both time the optimizer steps after
``warmup`` steps, with a device synchronisation at every step end.

This is a benchmark tool, outside the library's layering: it may import ``xdist`` (kernels never do).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import socket
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]

XLMR_LARGE = dict(hidden_size=1024, num_hidden_layers=24, num_attention_heads=16, intermediate_size=4096,
                  max_position_embeddings=514, type_vocab_size=1)
TINY = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
            max_position_embeddings=130, type_vocab_size=1)
SPECIALS = ("[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]")


@dataclass
class TrainPlan:
    """Shapes of the training sections (one plan for the GPU, a tiny one for ``--dry-run``)."""

    architecture: dict = field(default_factory=lambda: dict(XLMR_LARGE))
    """``transformers`` xlm-roberta config overrides (random init)."""
    vocab: int = 250_002
    """Tokenizer (and embedding) size: XLM-R's."""
    seq_len: int = 384
    """Feature length (``features.max_length``)."""
    micro_batch: int = 32
    """Features per step (one rank, no accumulation)."""
    features: int = 2048
    """Training features in the shards: one epoch = features / micro_batch steps."""
    warmup: int = 8
    """Steps excluded from the samples/s window (allocations, cuDNN/cuBLAS heuristics)."""
    precision: str = "bf16"

    @property
    def steps(self) -> int:
        return self.features // self.micro_batch


def gpu_plan() -> TrainPlan:
    return TrainPlan()


def dry_run_plan() -> TrainPlan:
    return TrainPlan(architecture=dict(TINY), vocab=512, seq_len=64, micro_batch=4, features=32, warmup=2)


# --------------------------------------------------------------------------------------------------
# Synthetic job
# --------------------------------------------------------------------------------------------------


def write_tokenizer(directory: Path, vocab: int) -> None:
    """A word-level fast tokenizer: tokens ``w<i>``, BERT-style pair template with type id 0 throughout
    (XLM-R has one token type)."""
    from tokenizers import Tokenizer, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    words = {tok: i for i, tok in enumerate(SPECIALS)}
    words |= {f"w{i}": i for i in range(len(SPECIALS), vocab)}
    tok = Tokenizer(models.WordLevel(words, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tok.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", pair="[CLS] $A [SEP] $B:0 [SEP]:0",
        special_tokens=[("[CLS]", words["[CLS]"]), ("[SEP]", words["[SEP]"])],
    )
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="[PAD]", unk_token="[UNK]", cls_token="[CLS]",
                                   sep_token="[SEP]", mask_token="[MASK]", model_max_length=100_000)
    fast.save_pretrained(directory)


def write_squad(path: Path, plan: TrainPlan, seed: int = 0) -> None:
    """``plan.features`` examples whose question + context fill ``seq_len`` tokens (one feature each)."""
    rng = random.Random(seed)
    question_words = min(12, plan.seq_len // 8)
    context_words = plan.seq_len - question_words - 3 - 2  # [CLS] q [SEP] c [SEP], 2 spare
    paragraphs = []
    for i in range(plan.features):
        words = [f"w{rng.randrange(len(SPECIALS), plan.vocab)}" for _ in range(context_words)]
        context = " ".join(words)
        start = rng.randrange(context_words - 3)
        answer = " ".join(words[start : start + rng.randint(1, 3)])
        char = len(" ".join(words[:start])) + (1 if start else 0)
        question = " ".join(f"w{rng.randrange(len(SPECIALS), plan.vocab)}" for _ in range(question_words))
        paragraphs.append({"context": context, "qas": [
            {"id": f"q{i}", "question": question, "answers": [{"text": answer, "answer_start": char}]}]})
    data = {"version": "1.1", "data": [{"title": f"t{i}", "paragraphs": [p]} for i, p in enumerate(paragraphs)]}
    path.write_text(json.dumps(data), encoding="utf-8")


def write_job(work: Path, plan: TrainPlan) -> Path:
    """Tokenizer, data and job YAML under ``work``; returns the YAML path (shards not yet prepared)."""
    import yaml

    work.mkdir(parents=True, exist_ok=True)
    write_tokenizer(work / "tokenizer", plan.vocab)
    write_squad(work / "synthetic.json", plan)
    config = {
        "data": {"root": str(work), "shards": str(work / "shards"), "samples_per_shard": 256, "num_workers": 1,
                 "train": [{"name": "synthetic", "format": "squad", "path": "synthetic.json", "language": "en"}]},
        "features": {"tokenizer": str(work / "tokenizer"), "max_length": plan.seq_len,
                     "doc_stride": min(128, plan.seq_len // 2), "max_query_length": min(64, plan.seq_len // 4)},
        "model": {"model_type": "xlm-roberta", "architecture": {**plan.architecture, "vocab_size": plan.vocab}},
        "train": {"deepspeed": str(REPO / "configs" / "deepspeed" / "zero2.json"), "precision": plan.precision,
                  "micro_batch_size": plan.micro_batch, "gradient_accumulation_steps": 1, "lr": 1e-5,
                  "epochs": 1, "seed": 0, "output_dir": str(work / "run"), "log_every": 1, "export": False,
                  "keep_last": 1},
        "eval": {"sets": []},
    }
    path = work / "job.yaml"
    path.write_text(yaml.safe_dump(config, sort_keys=False), encoding="utf-8")
    return path


def subprocess_env(dry_run: bool) -> dict[str, str]:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false",
           "PYTHONWARNINGS": "ignore::FutureWarning,ignore::DeprecationWarning"}
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO), os.environ.get("PYTHONPATH", "")) if p)
    if dry_run:
        env |= {"DS_ACCELERATOR": "cpu", "OMP_NUM_THREADS": "1"}
    return env


def _run(command: list[str], env: dict[str, str], log: Path, timeout: float) -> None:
    with log.open("w", encoding="utf-8") as fh:
        proc = subprocess.run(command, cwd=REPO, env=env, stdout=fh, stderr=subprocess.STDOUT, timeout=timeout)
    if proc.returncode != 0:
        tail = "\n".join(log.read_text(encoding="utf-8", errors="replace").splitlines()[-25:])
        raise RuntimeError(f"{' '.join(command[:5])} ... failed (exit {proc.returncode}); log {log}:\n{tail}")


def prepare(config: Path, env: dict[str, str], timeout: float = 600) -> None:
    _run([sys.executable, "-m", "xdist.cli", "prepare", str(config)], env, config.with_name("prepare.log"), timeout)


# --------------------------------------------------------------------------------------------------
# Measurements
# --------------------------------------------------------------------------------------------------


def _window_rate(step_times: list[float], warmup: int, micro_batch: int) -> dict:
    """samples/s over the steps after ``warmup`` (step i ends at step_times[i])."""
    skip = min(warmup, len(step_times) - 2)
    if skip < 0:
        raise ValueError(f"need at least 2 timed steps, got {len(step_times)}")
    seconds = step_times[-1] - step_times[skip]
    steps = len(step_times) - 1 - skip
    return {"steps_timed": steps, "seconds": seconds, "samples_per_s": steps * micro_batch / seconds}


def run_xdist(config: Path, plan: TrainPlan, env: dict[str, str], out: Path, overrides: list[str],
              timeout: float = 900) -> dict:
    """One epoch of ``xdist train`` (one process). Returns samples/s after warm-up and the epoch time:
    from the run directory's ``ds_config.json`` (written right before the loop, so a method's epoch start —
    e.g. building the teacher-logit cache — is inside) to the last step."""
    sets = [f"train.output_dir={out}", *overrides]
    command = [sys.executable, "-m", "xdist.cli", "train", str(config), *sum((["--set", s] for s in sets), [])]
    start = time.time()
    _run(command, env, out.with_name(out.name + ".log"), timeout)
    wall = time.time() - start
    records = [json.loads(line) for line in (out / "train_log.jsonl").read_text().splitlines()]
    times = [r["time"] for r in records]
    loop_start = (out / "ds_config.json").stat().st_mtime
    result = _window_rate(times, plan.warmup, plan.micro_batch)
    result |= {"epoch_s": times[-1] - loop_start, "steps": len(records), "process_wall_s": wall,
               "final_loss": records[-1]["loss"]}
    return result


def run_hf(config: Path, plan: TrainPlan, env: dict[str, str], out: Path, timeout: float = 900) -> dict:
    """The Hugging Face Trainer + DeepSpeed baseline in its own process (a single-rank job)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = env | {"RANK": "0", "WORLD_SIZE": "1", "LOCAL_RANK": "0", "LOCAL_WORLD_SIZE": "1",
                 "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port)}
    result_path = out.with_name(out.name + ".json")
    command = [sys.executable, "-m", "kernels.bench.gpu_check_train", "hf", str(config), "--out", str(out),
               "--result", str(result_path), "--plan", json.dumps(asdict(plan))]
    _run(command, env, out.with_name(out.name + ".log"), timeout)
    return json.loads(result_path.read_text())


def model_flops_per_sample(plan: TrainPlan) -> float:
    """Training FLOPs of one feature: 6 N T + 12 n_layer d_model T² (PaLM's MFU convention, Chowdhery et al.
    2022, App. B), N = parameters outside the embeddings (counted on the meta device), T = seq_len."""
    import torch
    from transformers import AutoModelForQuestionAnswering

    from xdist.config import ModelConfig
    from xdist.models import model_config

    model_cfg = ModelConfig(model_type="xlm-roberta", architecture={**plan.architecture, "vocab_size": plan.vocab})
    cfg = model_config(model_cfg, vocab_size=plan.vocab, pad_token_id=0)
    with torch.device("meta"):
        model = AutoModelForQuestionAnswering.from_config(cfg)
    embed = sum(p.numel() for n, p in model.named_parameters() if ".embeddings." in f".{n}")
    n = sum(p.numel() for p in model.parameters()) - embed
    arch = plan.architecture
    return 6 * n * plan.seq_len + 12 * arch["num_hidden_layers"] * arch["hidden_size"] * plan.seq_len**2


# --------------------------------------------------------------------------------------------------
# The Hugging Face baseline process
# --------------------------------------------------------------------------------------------------


def _hf_main(args: argparse.Namespace) -> int:
    import torch
    from transformers import Trainer, TrainerCallback, TrainingArguments, set_seed

    from xdist.config import load_config
    from xdist.data.stream import TrainStream
    from xdist.data.tokenizer import load_tokenizer
    from xdist.tasks import get_task

    plan = TrainPlan(**json.loads(args.plan))
    cfg = load_config(args.config)
    tokenizer = load_tokenizer(cfg.features.tokenizer)
    stream = TrainStream(cfg.data.shards, rank=0, world_size=1, micro_batch_size=plan.micro_batch, data=cfg.data,
                         seed=cfg.train.seed, tokenizer_path=cfg.features.tokenizer, max_length=plan.seq_len,
                         task=cfg.task)
    keys = ("input_ids", "attention_mask", "token_type_ids", "start_positions", "end_positions")
    rows = [{k: batch[k][i] for k in keys if k in batch}
            for batch in stream.iter_epoch(0) for i in range(batch["input_ids"].shape[0])]
    set_seed(cfg.train.seed)
    model = get_task(cfg.task).build_model(cfg.model, tokenizer=tokenizer, ds_config=None)  # as xdist.train does
    cuda = torch.cuda.is_available()
    if not cuda:  # as xdist does on CPU: gloo, no ~45 s JIT build of DeepSpeed's shm all-reduce op
        from xdist.distributed import disable_deepspeed_shm_comm

        disable_deepspeed_shm_comm()

    class StepTimes(TrainerCallback):
        def __init__(self) -> None:
            self.times: list[float] = []

        def on_step_end(self, *_args, **_kwargs):
            if cuda:
                torch.cuda.synchronize()  # xdist's loop also syncs once per step (its loss log)
            self.times.append(time.time())

    timer = StepTimes()
    targs = TrainingArguments(
        output_dir=args.out, per_device_train_batch_size=plan.micro_batch, gradient_accumulation_steps=1,
        max_steps=len(rows) // plan.micro_batch, learning_rate=cfg.train.lr, weight_decay=cfg.train.weight_decay,
        adam_beta1=cfg.train.adam_betas[0], adam_beta2=cfg.train.adam_betas[1], adam_epsilon=cfg.train.adam_eps,
        max_grad_norm=cfg.train.max_grad_norm, lr_scheduler_type="linear", warmup_steps=0,
        bf16=plan.precision == "bf16", deepspeed=cfg.train.deepspeed, use_cpu=not cuda, report_to=[],
        save_strategy="no", logging_strategy="no", disable_tqdm=True, remove_unused_columns=False,
        dataloader_num_workers=1, seed=cfg.train.seed,
    )
    trainer = Trainer(model=model, args=targs, train_dataset=rows, callbacks=[timer])
    trainer.train()
    result = _window_rate(timer.times, plan.warmup, plan.micro_batch) | {"steps": len(timer.times)}
    result["tokens_per_sample"] = float(torch.stack([r["attention_mask"] for r in rows]).sum(1).float().mean())
    Path(args.result).write_text(json.dumps(result))
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="internal: the Hugging Face Trainer baseline of the GPU check")
    sub = parser.add_subparsers(dest="command", required=True)
    hf = sub.add_parser("hf")
    hf.add_argument("config", type=Path)
    hf.add_argument("--out", required=True)
    hf.add_argument("--result", required=True)
    hf.add_argument("--plan", required=True, help="TrainPlan as JSON")
    return _hf_main(parser.parse_args(argv))


if __name__ == "__main__":
    raise SystemExit(main())
