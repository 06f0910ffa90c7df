"""ALSACE training samples on the real XNLI files: pairs of parallel rows, evaluation rows never paired."""

from __future__ import annotations

import numpy as np
import pytest

from xdist.config import SourceConfig
from xdist.data.parallel import PairError
from xdist.methods.alsace.config import PairsConfig
from xdist.methods.alsace.pairs import build_pair_samples
from xdist.methods.alsace.selection import select_teachers
from xdist.tasks.classification.features import PromptTemplate, encode_prompts
from xdist.tasks.classification.formats import DEFAULT_TEMPLATES
from xdist.tasks.classification.readers import read_classification_source

LANGUAGES = ["en", "de", "fr", "sw", "ur"]


def read(data_dir, groups, name="xnli", max_examples=None):
    source = SourceConfig(name=name, format="xnli", path="xnli-dev", languages=LANGUAGES,
                          groups=groups, max_examples=max_examples)  # fmt: skip
    return read_classification_source(source, root=str(data_dir))


@pytest.fixture(scope="module")
def encode(mbert_tokenizer):
    template = PromptTemplate.parse(DEFAULT_TEMPLATES["xnli"], choice=False)
    return lambda examples: encode_prompts(examples, mbert_tokenizer, 96, template)


def test_pairs_of_parallel_rows_on_xnli(data_dir, encode, mbert_tokenizer):
    train = read(data_dir, "train", max_examples=30)
    evaluation = read(data_dir, "eval", max_examples=40)
    selection = select_teachers(LANGUAGES, mode="teachers", teachers=["en", "de", "fr"])
    samples, report = build_pair_samples(train.examples, selection, PairsConfig(per_pair=12), encode,
                                         evaluation=evaluation.examples)  # fmt: skip
    # 3 teachers, 2 students: C(3,2) + 3*2 = 9 language pairs of 12 instances.
    assert len(samples) == 9 * 12 and len(report.language_pairs) == 9
    assert report.to_dict()["pairs_total"] == 108 and report.excluded_evaluation_instances == 0
    assert "sw-ur" not in report.language_pairs and "ur-sw" not in report.language_pairs
    rows = {(e.instance, e.language): e for e in train.examples}
    mask_id = mbert_tokenizer.mask_token_id
    for sample in samples[:20]:
        first, second = rows[(sample.pair.uid, sample.pair.first)], rows[(sample.pair.uid, sample.pair.second)]
        assert first.group == second.group and first.instance == second.instance
        ids = sample.arrays["input_ids"]
        assert ids.shape[0] == 2 and ids[0, sample.arrays["mask_positions"][0]] == mask_id
        # Each side is its own language's copy of the instance, encoded as the head encodes it.
        direct = encode([first, second])
        for side in (0, 1):
            assert np.array_equal(ids[side], direct[side].arrays["input_ids"])
        # English gold labels kept (label_languages: [en]); every other row unlabelled.
        expected = [first.label if sample.pair.first == "en" else -100, -100]
        assert sample.arrays["labels"].tolist() == expected
    assert not {s.pair.uid for s in samples} & {e.instance for e in evaluation.examples}


def test_rows_that_are_evaluated_are_excluded(data_dir, encode):
    everything = read(data_dir, "all", max_examples=20)
    evaluation = read(data_dir, "all", name="xnli-eval", max_examples=6)  # the same rows under another name
    selection = select_teachers(LANGUAGES, mode="teachers", teachers=["en"])
    samples, report = build_pair_samples(everything.examples, selection, PairsConfig(per_pair=14), encode,
                                         evaluation=evaluation.examples)  # fmt: skip
    assert report.excluded_evaluation_instances == 6
    assert sorted({int(s.pair.uid.split(":")[1]) for s in samples}) == list(range(6, 20))
    with pytest.raises(PairError, match="15 instances per language pair requested but xnli has 14"):
        build_pair_samples(everything.examples, selection, PairsConfig(per_pair=15), encode,
                           evaluation=evaluation.examples, source="xnli")  # fmt: skip
    wrong = select_teachers(["en", "ja"], mode="teachers", teachers=["en"])
    with pytest.raises(PairError, match="languages \\['ja'\\] are not in xnli"):
        build_pair_samples(everything.examples, wrong, PairsConfig(per_pair=2), encode, source="xnli")
    assert np.unique([s.key for s in samples]).size == len(samples)


@pytest.mark.parametrize("level", ["classes", "vocab"])
def test_method_on_real_prompt_pairs(data_dir, tmp_path, level):
    """The method built from the job's context on a real tiny prompt-head model and real XNLI pairs: the
    loss of one stacked forward equals the KL of the two sides' distributions (classes, or the whole
    vocabulary at the mask), and a vocab-level run needs the prompt head."""
    import torch

    from xdist.config import ConfigError, JobConfig, build
    from xdist.data.parallel import pair_sample, stack_pair_batch
    from xdist.data.tokenizer import load_tokenizer
    from xdist.distributed import DistEnv
    from xdist.methods import build_method
    from xdist.methods.alsace.loss import pair_loss
    from xdist.methods.base import MethodContext
    from xdist.tasks import get_task
    from xdist.tasks.classification.heads import class_logits, mask_logits

    raw = {"task": "classification", "features": {"tokenizer": str(data_dir / "tokenizers/mbert-cased"),
                                                   "max_length": 64},
           "model": {"model_type": "bert", "head": "prompt",
                     "architecture": {"hidden_size": 32, "num_hidden_layers": 1, "num_attention_heads": 2,
                                      "intermediate_size": 64, "max_position_embeddings": 64,
                                      "initializer_range": 0.3},
                     "prompt": {"verbalizer": {"entailment": ["Yes"], "neutral": ["Maybe"], "contradiction": ["No"]}}},
           "method": {"name": "alsace", "alsace": {"level": level}}}  # fmt: skip
    cfg = build(JobConfig, raw)
    task = get_task("classification")
    tokenizer = load_tokenizer(cfg.features.tokenizer)
    source = SourceConfig(name="xnli", format="xnli", path="xnli-dev", languages=["en", "sw"], max_examples=3)
    examples = read_classification_source(source, root=str(data_dir)).examples
    records = list(task.shard_records(examples, tokenizer, cfg, task.new_feature_stats(), source))
    by_key = {(r.uid.rsplit("/", 1)[0], r.uid.rsplit("/", 1)[1]): r.arrays for r in records}
    samples = [pair_sample(by_key[(f"xnli:{i}", "en")], by_key[(f"xnli:{i}", "sw")]) for i in range(3)]
    batch = {k: torch.as_tensor(np.stack([s[k] for s in samples])) for k in samples[0]}
    torch.manual_seed(0)
    model = task.build_model(cfg.model, tokenizer=tokenizer).eval()
    context = MethodContext(cfg=cfg, task=task, dist=DistEnv(0, 0, 1, torch.device("cpu")), output_dir=tmp_path,
                            manifest_for_epoch=lambda epoch: None)  # fmt: skip
    method = build_method(context)
    output = method.step(model, batch)
    stacked = stack_pair_batch(batch)
    with torch.no_grad():
        logits = mask_logits(model, stacked) if level == "vocab" else class_logits(model, stacked)
    assert logits.shape[-1] == (len(tokenizer) if level == "vocab" else 3)
    torch.testing.assert_close(output.loss.detach(), pair_loss(logits).loss, rtol=1e-5, atol=1e-8)
    assert output.loss.item() > 0
    if level == "vocab":
        raw["model"]["head"] = "classifier"
        raw["model"].pop("prompt")
        with pytest.raises(ConfigError, match="'method.alsace.level': 'vocab' .* needs model.head 'prompt'"):
            build_method(MethodContext(cfg=build(JobConfig, raw), task=task, dist=context.dist,
                                       output_dir=tmp_path, manifest_for_epoch=lambda epoch: None))  # fmt: skip
