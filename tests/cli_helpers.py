"""Helpers for tests that drive the ``xdist`` CLI on a tiny real job (TyDi QA English, 16 examples)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

from tests.conftest import DATA_DIR

REPO = Path(__file__).resolve().parents[1]
HAS_DATA = (DATA_DIR / "tydiqa-goldp").is_dir()

ENV = {
    **os.environ,
    "DS_ACCELERATOR": "cpu",
    "OMP_NUM_THREADS": "1",
    "HF_HUB_OFFLINE": "1",
    "TOKENIZERS_PARALLELISM": "false",
    "PYTHONWARNINGS": "ignore::FutureWarning,ignore::DeprecationWarning",
    "XDIST_DATA": str(DATA_DIR),
}

CONFIG = """
data:
  root: {data}
  train:
    - {{name: tydiqa-en, format: tydiqa, path: tydiqa-goldp/tydiqa.goldp.en.train.json, max_examples: 16}}
  shards: {shards}
  samples_per_shard: 4
  num_workers: 0
features:
  tokenizer: {data}/tokenizers/mbert-cased
  max_length: 96
  doc_stride: 32
  max_query_length: 24
model:
  model_type: bert
  architecture: {{hidden_size: 32, num_hidden_layers: 1, num_attention_heads: 2, intermediate_size: 64,
                 max_position_embeddings: 128}}
train:
  deepspeed: {repo}/configs/deepspeed/zero2.json
  micro_batch_size: 4
  lr: 1.0e-2
  max_steps: 16
  log_every: 4
  output_dir: {out}
eval:
  sets:
    - {{name: xquad, format: xquad, path: xquad, languages: [en, de], pairs: all, articles: eval, max_examples: 12}}
  batch_size: 16
"""


def xdist(*args: str, timeout: int = 240) -> subprocess.CompletedProcess:
    result = subprocess.run(
        [sys.executable, "-m", "xdist.cli", *args], cwd=REPO, env=ENV, capture_output=True, text=True,
        timeout=timeout,
    )
    assert result.returncode == 0, f"xdist {' '.join(args)} failed:\n{result.stdout[-3000:]}\n{result.stderr[-6000:]}"
    return result


def step_losses(out: Path) -> dict[int, float]:
    records = [json.loads(line) for line in (out / "train_log.jsonl").read_text().splitlines()]
    return {r["step"]: r["loss"] for r in records}


def make_job(tmp_path_factory) -> Path:
    """A config file with prepared shards (16 features); the session fixture ``job`` (conftest) calls it."""
    root = tmp_path_factory.mktemp("e2e")
    config = root / "job.yaml"
    config.write_text(CONFIG.format(data=DATA_DIR, shards=root / "shards", out=root / "run", repo=REPO))
    xdist("prepare", str(config))
    manifest = json.loads((root / "shards" / "manifest.json").read_text())
    assert manifest["total_samples"] >= 16
    return config


def interrupted_copy(full: Path, cut: Path, step: int) -> Path:
    """``cut``: what a run killed right after its step-``step`` checkpoint leaves on disk — ``full``'s files
    without its later checkpoints, ``latest`` naming ``step<step>``, and the log of steps <= ``step`` only.
    Resuming it must reproduce ``full``'s later steps exactly."""
    shutil.copytree(full, cut)
    for tag in (cut / "checkpoints").glob("step*"):
        if int(tag.name[len("step"):]) > step:
            shutil.rmtree(tag)
    (cut / "checkpoints" / "latest").write_text(f"step{step}")
    log = [line for line in (cut / "train_log.jsonl").read_text().splitlines() if json.loads(line)["step"] <= step]
    (cut / "train_log.jsonl").write_text("\n".join(log) + "\n")
    return cut
