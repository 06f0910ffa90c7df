"""The classification task in one process: config resolution and its errors, shard records, eval data, the
task's model, logits and loss for each head."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from xdist.config import ConfigError, JobConfig, build
from xdist.tasks import get_task

TINY = {"hidden_size": 32, "num_hidden_layers": 1, "num_attention_heads": 2, "intermediate_size": 48,
        "max_position_embeddings": 64}


def job(data_dir, tokenizer_path, head="classifier", **model) -> JobConfig:
    raw = {
        "task": "classification",
        "data": {"root": str(data_dir), "train": [{"name": "xnli", "format": "xnli", "path": "xnli-dev",
                                                    "languages": ["en", "fr"], "max_examples": 6}]},
        "features": {"tokenizer": str(tokenizer_path), "max_length": 48},
        "model": {"architecture": TINY, "head": head, **model},
        "eval": {"sets": [{"name": "copa", "format": "xcopa", "path": "xcopa", "split": "val",
                           "languages": ["en", "et"], "max_examples": 4}]},
    }
    return build(JobConfig, raw)


def test_config_resolves_labels_and_refuses_mismatches(data_dir, tokenizer_path):
    cfg = job(data_dir, tokenizer_path)
    assert cfg.model.labels == ["entailment", "neutral", "contradiction"]
    with pytest.raises(ConfigError, match=r"data\.train\[0\]\.format.*task 'qa'"):
        build(JobConfig, {"data": {"train": [{"name": "x", "format": "xnli", "path": "d"}]}})
    with pytest.raises(ConfigError, match=r"eval\.sets\[0\]\.format.*task 'classification'"):
        build(JobConfig, {"task": "classification", "eval": {"sets": [{"name": "x", "format": "xquad", "path": "d"}]}})
    task = get_task("classification")
    with pytest.raises(ConfigError, match=r"model\.head.*eval\.sets\[0\] \(copa, format xcopa\) is a choice task"):
        task.eval_data(cfg.eval.sets[0], cfg, None)


def test_shard_records_and_eval_data_for_the_prompt_head(data_dir, tokenizer_path, mbert_tokenizer):
    cfg = job(data_dir, tokenizer_path, head="prompt", prompt={"multi_token": "first"})
    task = get_task("classification")
    source = cfg.data.train[0]
    read = task.read(source, cfg.data)
    stats = task.new_feature_stats()
    records = list(task.shard_records(iter(read.examples), mbert_tokenizer, cfg, stats, source))
    assert len(records) == 12 and stats.examples == {"en": 6, "fr": 6}
    first = records[0]
    assert first.uid == "xnli:0/en" and first.group == "en" and first.source == "xnli:dev-en.tsv"
    assert first.meta == {"instance": "xnli:0", "language": "en"}
    assert set(first.arrays) == {"input_ids", "attention_mask", "token_type_ids", "labels", "mask_positions",
                                 "verbalizer_ids", "verbalizer_weights", "verbalizer_targets"}
    # XCOPA under the prompt head: a choice per row, the binary verbalizer's default words ("yes" -> "ye").
    data = task.eval_data(cfg.eval.sets[0], cfg, mbert_tokenizer)
    assert data.rows == 8 and data.inputs["input_ids"].shape == (8, 2, 48) and "labels" not in data.inputs
    assert data.class_names == ["choice1", "choice2"]
    model = task.build_model(cfg.model, tokenizer=mbert_tokenizer).eval()
    batch = {k: torch.from_numpy(v) for k, v in data.inputs.items()}
    with torch.no_grad():
        logits = task.logits(model, batch)
    assert logits.shape == (8, 2)
    result = task.score(data, logits.numpy(), cfg.eval)
    assert list(result.groups) == ["en", "et"] and result.summary["num_examples"] == 8


@pytest.mark.parametrize("head", ["classifier", "prompt"])
def test_task_loss_is_the_cross_entropy_of_its_logits(data_dir, tokenizer_path, mbert_tokenizer, head):
    cfg = job(data_dir, tokenizer_path, head=head, prompt={"verbalizer": {
        "entailment": ["Yes"], "neutral": ["Maybe"], "contradiction": ["No"]}})
    task = get_task("classification")
    source = cfg.data.train[0]
    records = list(task.shard_records(task.read(source, cfg.data).examples, mbert_tokenizer, cfg,
                                      task.new_feature_stats(), source))
    batch = {k: torch.from_numpy(np.stack([r.arrays[k] for r in records])) for k in records[0].arrays}
    torch.manual_seed(0)
    model = task.build_model(cfg.model, tokenizer=mbert_tokenizer).double()
    logits = task.logits(model, batch)
    loss = task.loss(logits, batch)
    expected = -torch.log_softmax(logits.double(), -1).gather(1, batch["labels"][:, None]).mean()
    torch.testing.assert_close(loss.double(), expected, rtol=1e-6, atol=1e-7)
    loss.backward()
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in model.parameters())
