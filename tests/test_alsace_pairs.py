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
