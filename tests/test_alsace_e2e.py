"""ALSACE end to end through the CLI on real XNLI text and a real tiny stage-0 model:
``xdist select-teachers`` on 2 ranks → ``xdist prepare`` (pair shards) → ``xdist train`` on 2 ranks (ZeRO-3)
lowers the cross-lingual KL → ``--resume`` reproduces the uninterrupted run's losses exactly."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from tests.cli_helpers import REPO, interrupted_copy, step_losses, xdist
from tests.conftest import DATA_DIR

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not (DATA_DIR / "xnli-test-unlabelled").is_dir() or not (DATA_DIR / "xnli-dev").is_dir(),
                       reason=f"XNLI not found in {DATA_DIR}"),
]

LANGUAGES = ["en", "de", "fr", "sw", "ur"]

STAGE0 = """
task: classification
data:
  root: {data}
  train:
    - {{name: xnli-en, format: xnli, path: xnli-dev, languages: [en], groups: train, max_examples: 48}}
features:
  tokenizer: {data}/tokenizers/mbert-cased
  max_length: 64
model:
  model_type: bert
  architecture: {{hidden_size: 32, num_hidden_layers: 1, num_attention_heads: 2, intermediate_size: 64,
                 max_position_embeddings: 64, initializer_range: 0.2}}
  head: prompt
  prompt: {{verbalizer: {{entailment: ["Yes"], neutral: ["Maybe"], contradiction: ["No"]}}}}
"""

DISTIL = """
task: classification
data:
  root: {data}
  train:
    - {{name: xnli-unl, format: xnli, path: xnli-test-unlabelled, split: test, labelled: false,
       languages: {languages}, max_examples: 24}}
  shards: {root}/shards
  samples_per_shard: 8
  num_workers: 0
features:
  tokenizer: {data}/tokenizers/mbert-cased
  max_length: 64
model:
  checkpoint: {root}/stage0
  dropout: 0.1
  head: prompt
  prompt: {{verbalizer: {{entailment: ["Yes"], neutral: ["Maybe"], contradiction: ["No"]}}}}
train:
  deepspeed: {repo}/configs/deepspeed/zero3.json
  micro_batch_size: 4
  lr: 2.0e-3
  max_steps: 12
  checkpoint_every: 6
  log_every: 4
  export: true
  output_dir: {root}/full
eval:
  sets: []
  batch_size: 16
method:
  name: alsace
  alsace:
    selection: {{mode: vote, comparison: ">=", max_instances: 24, file: {root}/selection/selection.json}}
    pairs: {{per_pair: 8, seed: 5}}
"""


def stage0_model(config, out):
    """A real stage 0: the prompt-head model trained a few steps with CE on English rows (in process)."""
    from xdist.config import load_config
    from xdist.data.tokenizer import load_tokenizer
    from xdist.tasks import get_task

    cfg = load_config(config)
    task = get_task("classification")
    tokenizer = load_tokenizer(cfg.features.tokenizer)
    torch.manual_seed(0)
    model = task.build_model(cfg.model, tokenizer=tokenizer)
    examples = task.read(cfg.data.train[0], cfg.data).examples
    records = list(task.shard_records(examples, tokenizer, cfg, task.new_feature_stats(), cfg.data.train[0]))
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
    for start in range(0, 48, 16):
        batch = stack([r.arrays for r in records[start : start + 16]])
        loss = task.loss(task.logits(model, batch), batch)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    model.save_pretrained(out)
    return cfg


def stack(arrays: list[dict[str, np.ndarray]]) -> dict[str, torch.Tensor]:
    return {name: torch.as_tensor(np.stack([a[name] for a in arrays])) for name in arrays[0]}


def pair_kl(checkpoint, config) -> float:
    """Mean KL(P_second || P_first) of the class distributions over every training pair of the shards."""
    from xdist.config import load_config
    from xdist.data.parallel import stack_pair_batch
    from xdist.data.shards import iter_samples, load_manifest
    from xdist.methods.alsace.loss import pair_loss
    from xdist.tasks import get_task

    cfg = load_config(config)
    task = get_task("classification")
    model = task.build_model(cfg.model, checkpoint=checkpoint).eval()
    manifest = load_manifest(cfg.data.shards)
    batch = stack([sample.arrays for sample in iter_samples(manifest)])
    with torch.no_grad():
        return pair_loss(task.logits(model, stack_pair_batch(batch))).loss.item()


@pytest.fixture(scope="module")
def job(tmp_path_factory):
    root = tmp_path_factory.mktemp("alsace_e2e")
    (root / "stage0.yaml").write_text(STAGE0.format(data=DATA_DIR))
    stage0_model(root / "stage0.yaml", root / "stage0")
    config = root / "distil.yaml"
    config.write_text(DISTIL.format(data=DATA_DIR, root=root, repo=REPO, languages=json.dumps(LANGUAGES)))
    return root, config


def test_select_prepare_train_resume(job):
    from xdist.config import load_config
    from xdist.methods.alsace.selection import select_teachers
    from xdist.methods.alsace.vote import read_votes
    from xdist.tasks import get_task

    root, config = job
    # ---- selection on 2 ranks: every language exactly once; the report recomputes from its predictions.
    xdist("select-teachers", str(config), "--checkpoint", str(root / "stage0"), "--nproc", "2")
    selection = json.loads((root / "selection" / "selection.json").read_text())
    assert sorted(selection["teachers"] + selection["students"]) == sorted(LANGUAGES)
    assert selection["vote"]["instances"] == 24
    probs, languages, instances = read_votes(root / "selection" / "votes.npz")
    assert languages == LANGUAGES and len(instances) == 24 == len(set(instances))
    again = select_teachers(languages, probs, comparison=">=", class_names=["entailment", "neutral", "contradiction"])
    assert again.to_dict() == selection
    # The gathered rows are in place: rank order of the 2-rank vote matches a one-process forward.
    cfg = load_config(config)
    task = get_task("classification")
    model = task.build_model(cfg.model, checkpoint=root / "stage0").eval()
    from xdist.data.tokenizer import load_tokenizer

    tokenizer = load_tokenizer(cfg.features.tokenizer)
    rows = [e for e in task.read(cfg.data.train[0], cfg.data).examples if e.language == "sw"][:24]
    records = list(task.shard_records(rows, tokenizer, cfg, task.new_feature_stats(), cfg.data.train[0]))
    batch = stack([r.arrays for r in records])
    with torch.no_grad():
        direct = torch.softmax(task.logits(model, batch).double(), -1).numpy()
    np.testing.assert_allclose(probs[LANGUAGES.index("sw")], direct, rtol=1e-5, atol=1e-7)

    # ---- pair shards: TT + TS pairs of the selection, 8 instances each, never SS.
    xdist("prepare", str(config))
    manifest = json.loads((root / "shards" / "manifest.json").read_text())
    teachers, students = selection["teachers"], selection["students"]
    expected = len(teachers) * (len(teachers) - 1) // 2 + len(teachers) * len(students)
    assert len(manifest["groups"]) == expected and set(manifest["groups"].values()) == {8}
    assert not any(a in students and b in students for a, b in (g.split("-") for g in manifest["groups"]))
    assert manifest["fields"]["input_ids"]["shape"] == [2, 64]

    # ---- 2-rank ZeRO-3 training lowers the KL between the languages of the pairs.
    before = pair_kl(root / "stage0", config)
    xdist("train", str(config), "--nproc", "2")
    after = pair_kl(root / "full" / "export", config)
    assert after < 0.5 * before, (before, after)

    # ---- resume from step 6 reproduces steps 7..12 exactly (fp32, dropout on).
    full, cut = root / "full", root / "cut"
    interrupted_copy(full, cut, 6)
    xdist("train", str(config), "--nproc", "2", "--set", f"train.output_dir={cut}", "--resume",
          "--set", "train.export=false")  # fmt: skip
    reference, resumed = step_losses(full), step_losses(cut)
    assert sorted(resumed) == list(range(1, 13))
    for step in range(7, 13):
        assert resumed[step] == reference[step], f"step {step}"
