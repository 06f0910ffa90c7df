"""The branched classifier inside the classification task (``model.branches``): built from random init, from
an ordinary checkpoint and from a branched one; rows routed to their language's branch in training batches
(``groups``) and evaluation sets (``branch``); checkpoints whose branches disagree with the config refused."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from tests.mblm_helpers import texts_of, wordpiece
from xdist.branched import BranchedForSequenceClassification
from xdist.config import ConfigError, JobConfig, build
from xdist.tasks import get_task
from xdist.tasks.classification.branches import branch_array

TASK = get_task("classification")
ARCH = {"hidden_size": 24, "num_hidden_layers": 3, "num_attention_heads": 2, "intermediate_size": 48,
        "max_position_embeddings": 64}


@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory):
    directory = tmp_path_factory.mktemp("tok")
    wordpiece(texts_of("en", "de"), vocab_size=120).save_pretrained(directory)
    from xdist.data.tokenizer import load_tokenizer

    return load_tokenizer(directory)


def job(branches=None, **model) -> JobConfig:
    raw = {"task": "classification", "model": {"model_type": "bert", "architecture": ARCH, "dropout": 0.0,
                                               "labels": ["entailment", "neutral", "contradiction"], **model}}
    if branches is not None:
        raw["model"]["branches"] = branches
    return build(JobConfig, raw)


def batch_of(tokenizer, languages):
    texts = [("A man plays a guitar.", "Someone makes music."), ("Die Kinder schlafen.", "Die Kinder rennen."),
             ("Two dogs chase a ball.", "The dogs are hungry."), ("Ein Koch kocht.", "Der Koch ist berühmt.")]
    encoded = tokenizer([a for a, _ in texts], [b for _, b in texts], padding=True, return_tensors="pt")
    return {**{k: v for k, v in encoded.items()}, "groups": list(languages)}


def inputs_of(batch):
    return {k: batch[k] for k in ("input_ids", "attention_mask", "token_type_ids") if k in batch}


def test_identical_branches_from_random_init_equal_the_ordinary_classifier(tokenizer):
    torch.manual_seed(5)
    plain = TASK.build_model(job().model, tokenizer=tokenizer).eval()
    torch.manual_seed(5)  # the same draws: the branched model starts as copies of the same classifier
    branched = TASK.build_model(job({"languages": ["en", "de"], "layers": 2}).model, tokenizer=tokenizer).eval()
    assert isinstance(branched, BranchedForSequenceClassification)
    assert branched.config.shared_layers == 1 and branched.config.id2label[2] == "contradiction"
    batch = batch_of(tokenizer, ["en", "de", "fr", "en"])
    with torch.no_grad():
        expected = TASK.logits(plain, batch)
        out = branched(**inputs_of(batch))
    for b in range(2):
        torch.testing.assert_close(out.branch_logits[:, b], expected, rtol=0, atol=1e-6)
    torch.testing.assert_close(out.mixture_logits, expected, rtol=0, atol=1e-6)


def test_rows_take_their_language_branch_in_training_and_evaluation(tokenizer, tmp_path):
    cfg = job({"languages": ["en", "de"], "layers": 1, "share_head": False})
    torch.manual_seed(2)
    model = TASK.build_model(cfg.model, tokenizer=tokenizer).eval()
    with torch.no_grad():  # make the branches differ, so a wrong route shows
        for p in model.branches[1].parameters():
            p.add_(0.3 * torch.randn_like(p))
    batch = batch_of(tokenizer, ["en", "de", "fr", "de"])
    inputs = inputs_of(batch)
    with torch.no_grad():
        out = model(**inputs)
        routed = TASK.logits(model, batch)  # training batches: languages as ``groups``
        via_array = TASK.logits(model, {**inputs, "branch": branch_array(batch["groups"], ["en", "de"])})
    expected = torch.stack([out.branch_logits[0, 0], out.branch_logits[1, 1], out.mixture_logits[2],
                            out.branch_logits[3, 1]])
    torch.testing.assert_close(routed, expected, rtol=0, atol=0)
    torch.testing.assert_close(via_array, expected, rtol=0, atol=0)
    assert not torch.allclose(out.branch_logits[1, 0], out.branch_logits[1, 1])
    assert branch_array(["de", "sw", "en"], ["en", "de"]).tolist() == [1, -1, 0]

    # Saved and loaded as the job's model (an export, xdist eval), and as model.checkpoint of a new run.
    model.save_pretrained(tmp_path / "export")
    loaded = TASK.build_model(cfg.model, checkpoint=tmp_path / "export").eval()
    again = TASK.build_model(job({"languages": ["en", "de"], "layers": 1, "share_head": False},
                                 checkpoint=str(tmp_path / "export"), architecture={}).model,
                             tokenizer=tokenizer).eval()
    with torch.no_grad():
        for other in (loaded, again):
            torch.testing.assert_close(TASK.logits(other, batch), routed, rtol=0, atol=0)


def test_branches_that_disagree_with_the_config_are_refused(tokenizer, tmp_path):
    cfg = job({"languages": ["en", "de"], "layers": 1})
    TASK.build_model(cfg.model, tokenizer=tokenizer).save_pretrained(tmp_path / "branched")
    TASK.build_model(job().model, tokenizer=tokenizer).save_pretrained(tmp_path / "plain")
    with pytest.raises(ConfigError, match=r"'model.branches':.* branched \(MBLM\) model with branches \['en', 'de'\]"):
        TASK.build_model(job().model, checkpoint=tmp_path / "branched")
    with pytest.raises(ConfigError, match=r"'model.branches':.* has branches \['en', 'de'\] of 1 layers, the config "
                                          r"asks for \['en', 'zh'\] of 1"):
        TASK.build_model(job({"languages": ["en", "zh"], "layers": 1}).model, checkpoint=tmp_path / "branched")
    with pytest.raises(ConfigError, match=r"'model.branches':.* ordinary BertForSequenceClassification"):
        TASK.build_model(cfg.model, checkpoint=tmp_path / "plain")
    with pytest.raises(ConfigError, match=r"'model.branches.layers': 4 branch layers, but the encoder has 3"):
        TASK.build_model(job({"languages": ["en"], "layers": 4}).model, tokenizer=tokenizer)
    with pytest.raises(ConfigError, match=r"'model.branches':.*cannot be branched.*supported"):
        TASK.build_model(job({"languages": ["en"], "layers": 1}, model_type="distilbert", architecture={}).model,
                         tokenizer=tokenizer)


def test_eval_sets_carry_each_rows_branch(tmp_path):
    from tests.conftest import DATA_DIR

    if not (DATA_DIR / "xnli-dev").is_dir():
        pytest.skip(f"XNLI dev not found in {DATA_DIR}")
    from xdist.data.tokenizer import load_tokenizer

    raw = {"task": "classification", "data": {"root": str(DATA_DIR)},
           "model": {"branches": {"languages": ["en", "de"]}},
           "eval": {"sets": [{"name": "x", "format": "xnli", "path": "xnli-dev", "languages": ["de", "en", "sw"],
                              "max_examples": 4}]}}
    cfg = build(JobConfig, raw)
    data = TASK.eval_data(cfg.eval.sets[0], cfg, load_tokenizer(DATA_DIR / "tokenizers" / "mbert-cased"))
    languages = [f.language for f in data.features]
    assert sorted(set(languages)) == ["de", "en", "sw"] and data.supervised == ["en", "de"]
    np.testing.assert_array_equal(data.inputs["branch"], [{"en": 0, "de": 1}.get(lang, -1) for lang in languages])
