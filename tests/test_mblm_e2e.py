"""MBLM end to end through the CLI on real XNLI text: two monolingual teachers with tokenizers of their own
(not the student's mBERT vocabulary) → ``xdist prepare`` → ``xdist train`` on 2 ranks (ZeRO-3, Dirichlet
mixtures, per-branch heads) → the teacher cache holds each teacher's own logits of each row → ``--resume``
reproduces the uninterrupted run exactly → ``xdist eval`` of the export equals the in-training evaluation and
reports supervised and zero-shot languages apart → ``xdist export-branch`` gives a plain transformers model
whose logits are the branch's."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from tests.cli_helpers import REPO, interrupted_copy, step_losses, xdist
from tests.conftest import DATA_DIR
from tests.mblm_helpers import tiny_classifier, wordpiece

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not (DATA_DIR / "xnli-dev").is_dir(), reason=f"XNLI dev not found in {DATA_DIR}"),
]

SUPERVISED = ["en", "de"]

CONFIG = """
task: classification
data:
  root: {data}
  train:
    - {{name: xnli-sup, format: xnli, path: xnli-dev, languages: [en, de], groups: train, max_examples: 24}}
  shards: {root}/shards
  samples_per_shard: 8
  num_workers: 0
features:
  tokenizer: {data}/tokenizers/mbert-cased
  max_length: 64
model:
  model_type: bert
  architecture: {{hidden_size: 32, num_hidden_layers: 2, num_attention_heads: 2, intermediate_size: 64,
                 max_position_embeddings: 64}}
  dropout: 0.1
  head: classifier
  branches: {{languages: [en, de], layers: 1, share_head: false, mixture: dirichlet}}
train:
  deepspeed: {repo}/configs/deepspeed/zero3.json
  micro_batch_size: 4
  lr: 5.0e-3
  max_steps: 10
  checkpoint_every: 5
  log_every: 5
  output_dir: {root}/full
eval:
  sets:
    - {{name: xnli-dev, format: xnli, path: xnli-dev, languages: [en, de, fr], groups: eval, max_examples: 16}}
  batch_size: 16
method:
  name: mblm
  teachers: {{en: {root}/teacher-en, de: {root}/teacher-de}}
  mblm: {{mixture_weight: 0.5, dirichlet_alpha: 0.5, alpha_ce: 0.1, seed: 3}}
"""


def rows(cfg, language):
    from xdist.tasks import get_task

    task = get_task("classification")
    return [e for e in task.read(cfg.data.train[0], cfg.data).examples if e.language == language]


@pytest.fixture(scope="module")
def job(tmp_path_factory):
    from xdist.config import load_config

    root = tmp_path_factory.mktemp("mblm_e2e")
    config = root / "student.yaml"
    config.write_text(CONFIG.format(data=DATA_DIR, root=root, repo=REPO))
    cfg = load_config(config)
    for seed, lang in enumerate(SUPERVISED):  # each teacher: its own vocabulary, from its language's texts only
        texts = [t for e in rows(cfg, lang) for t in (e.text_a, e.text_b)]
        tokenizer = wordpiece(texts, vocab_size=200 + 50 * seed)
        tiny_classifier(len(tokenizer), seed, init=0.5).save_pretrained(root / f"teacher-{lang}")
        tokenizer.save_pretrained(root / f"teacher-{lang}")
    return root, config, cfg


def teacher_logits(root, cfg, language):
    """The teacher run directly on its language's rows with its own tokenizer: sample key -> logits."""
    from transformers import AutoModelForSequenceClassification

    from xdist.data.shards import sample_key
    from xdist.data.tokenizer import load_tokenizer
    from xdist.tasks.classification.features import collate, encode_pairs

    directory = root / f"teacher-{language}"
    tokenizer = load_tokenizer(directory)
    model = AutoModelForSequenceClassification.from_pretrained(directory).eval()
    examples = rows(cfg, language)
    batch = collate(encode_pairs(examples, tokenizer, cfg.features.max_length))
    with torch.no_grad():
        logits = model(**{k: torch.from_numpy(batch[k]) for k in tokenizer.model_input_names}).logits
    return {sample_key(e.uid, 0): logits[i].numpy() for i, e in enumerate(examples)}


def test_prepare_train_cache_resume_eval_export(job):
    from xdist.methods.teacher_cache import load_teacher_cache

    root, config, cfg = job
    xdist("prepare", str(config))
    manifest = json.loads((root / "shards" / "manifest.json").read_text())
    assert sorted(manifest["groups"]) == sorted(SUPERVISED)

    # ---- 2 ranks, ZeRO-3: the KD loss falls.
    xdist("train", str(config), "--nproc", "2")
    full = root / "full"
    losses = step_losses(full)
    assert sorted(losses) == list(range(1, 11))
    log = [json.loads(line) for line in (full / "train_log.jsonl").read_text().splitlines()]
    assert {"loss/kd", "loss/mixture_kd", "loss/ce", "mixture/en", "mixture/de"} <= set(log[0])
    assert np.mean([r["loss/kd"] for r in log[-3:]]) < np.mean([r["loss/kd"] for r in log[:3]])

    # ---- the cache: every supervised row, each under its own teacher's logits (rows split over 2 ranks).
    for lang in SUPERVISED:
        direct = teacher_logits(root, cfg, lang)
        cache = load_teacher_cache(full / "teacher_cache" / lang, 2, mode="full", length=3, temperature=1.0)
        assert len(cache) == len(direct) == manifest["groups"][lang]
        keys = sorted(direct)
        np.testing.assert_allclose(cache.logits(keys, torch.device("cpu")).numpy(), np.stack([direct[k] for k in keys]),
                                   rtol=1e-5, atol=1e-6)

    # ---- resume from step 5 reproduces steps 6..10 exactly (dropout and Dirichlet draws included).
    cut = interrupted_copy(full, root / "cut", 5)
    xdist("train", str(config), "--nproc", "2", "--set", f"train.output_dir={cut}", "--resume",
          "--set", "train.export=false")  # fmt: skip
    resumed = [json.loads(line) for line in (cut / "train_log.jsonl").read_text().splitlines()]
    for before, after in zip(log[5:], resumed[5:], strict=True):
        assert after["step"] == before["step"]
        for key in ("loss", "mixture/en", "mixture/de"):
            assert after[key] == before[key], (before["step"], key)

    # ---- xdist eval of the export = the final in-training evaluation; supervised and zero-shot apart.
    xdist("eval", str(config), "--checkpoint", str(full / "export"), "--nproc", "2")
    final = json.loads((full / "eval" / "final" / "metrics.json").read_text())["sets"]["xnli-dev"]
    again = json.loads((full / "eval" / "export" / "metrics.json").read_text())["sets"]["xnli-dev"]
    assert again["summary"] == final["summary"]
    summary, groups = final["summary"], final["groups"]
    assert summary["supervised_macro"] == pytest.approx(np.mean([groups[g]["accuracy"] for g in SUPERVISED]))
    assert summary["zero_shot_macro"] == pytest.approx(groups["fr"]["accuracy"])
    assert set(final["paired"]["scopes"]) == {"all", "supervised", "zero_shot"}

    # ---- one branch as a plain transformers classifier: its logits are the branch's.
    xdist("export-branch", str(full / "export"), "--language", "de", "--out", str(root / "branch-de"))
    from transformers import AutoModelForSequenceClassification, BertForSequenceClassification

    from xdist.branched import BranchedForSequenceClassification
    from xdist.data.tokenizer import load_tokenizer
    from xdist.tasks.classification.features import collate, encode_pairs

    plain = AutoModelForSequenceClassification.from_pretrained(root / "branch-de").eval()
    assert type(plain) is BertForSequenceClassification
    branched = BranchedForSequenceClassification.from_pretrained(full / "export").eval()
    batch = collate(encode_pairs(rows(cfg, "de")[:6], load_tokenizer(cfg.features.tokenizer), 64))
    inputs = {k: torch.from_numpy(batch[k]) for k in ("input_ids", "attention_mask", "token_type_ids")}
    with torch.no_grad():
        torch.testing.assert_close(plain(**inputs).logits, branched(**inputs).branch_logits[:, 1],
                                   rtol=1e-5, atol=1e-6)
