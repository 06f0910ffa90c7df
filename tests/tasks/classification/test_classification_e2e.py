"""Classification end to end through the CLI: prepare → 2-rank training (prompt head, ZeRO-2, dropout on)
with an exact resume → evaluation on held-out premise groups in three languages (metrics, prediction files,
bar chart, TensorBoard) → ``xdist eval`` from the export reproduces it → compared with McNemar's test."""

from __future__ import annotations

import json

import pytest

from tests.cli_helpers import REPO, interrupted_copy, step_losses, xdist
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
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    root, _ = run
    out = root / "full"
    assert sorted(step_losses(out)) == list(range(1, 17))
    report = out / "eval" / "final"
    metrics = json.loads((report / "metrics.json").read_text())
    xnli = metrics["sets"]["xnli"]
    assert xnli["task"] == "classification" and list(xnli["groups"]) == ["en", "de", "sw"]
    assert all(g["num_examples"] == 30 for g in xnli["groups"].values())
    accuracy = {lang: g["accuracy"] for lang, g in xnli["groups"].items()}
    summary = metrics["summary"]["xnli"]
    assert summary["macro"] == pytest.approx(sum(accuracy.values()) / 3)
    assert summary["transfer_gap"] == pytest.approx(accuracy["en"] - (accuracy["de"] + accuracy["sw"]) / 2)
    assert summary["max_min"] == pytest.approx(max(accuracy.values()) - min(accuracy.values()))
    predictions = json.loads((report / "predictions" / "xnli" / "sw.json").read_text())
    assert len(predictions) == 30 and all(uid.endswith("/sw") for uid in predictions)
    correct = sum(p["correct"] for p in predictions.values())
    assert 100.0 * correct / 30 == pytest.approx(accuracy["sw"])
    assert (report / "charts" / "xnli.png").read_bytes()[:4] == b"\x89PNG"
    events = EventAccumulator(str(out / "tensorboard")).Reload()
    assert "eval/xnli/accuracy_by_language" in events.Tags()["images"]
    assert {"eval/xnli/macro", "eval/xnli/accuracy/sw", "train/loss"} <= set(events.Tags()["scalars"])


def test_eval_from_the_export_reproduces_the_training_evaluation_and_compares(run):
    from xdist.compare import compare_reports, load_report

    root, config = run
    out = root / "full"
    xdist("eval", str(config), "--checkpoint", str(out / "export"), "--out", str(root / "again"))
    trained = json.loads((out / "eval" / "final" / "metrics.json").read_text())["sets"]["xnli"]
    again = json.loads((root / "again" / "metrics.json").read_text())["sets"]["xnli"]
    assert again["groups"] == trained["groups"] and again["summary"] == trained["summary"]
    comparison = compare_reports([load_report(out / "eval" / "final"), load_report(root / "again")])
    markdown = comparison.to_markdown()
    assert "McNemar" in markdown and "macro acc" in markdown


def test_resume_continues_with_identical_losses(run):
    root, config = run
    full, cut = root / "full", root / "cut"
    interrupted_copy(full, cut, 8)
    xdist("train", str(config), "--nproc", "2", "--set", f"train.output_dir={cut}", "--resume",
          "--set", "eval.sets=[]", "--set", "train.export=false")
    reference, resumed = step_losses(full), step_losses(cut)
    assert sorted(resumed) == list(range(1, 17))
    for step in range(9, 17):
        assert resumed[step] == reference[step], f"step {step}"
