"""Classification features: sentence pairs, prompts (the mask survives truncation), choices, collate."""

from __future__ import annotations

import numpy as np
import pytest

from xdist.config import ConfigError, PromptConfig
from xdist.tasks.classification.examples import IGNORE_LABEL, ClassificationExample
from xdist.tasks.classification.features import (
    PromptTemplate,
    collate,
    encode_choice_pairs,
    encode_choice_prompts,
    encode_pairs,
    encode_prompts,
    longest_first,
)
from xdist.tasks.classification.formats import DEFAULT_TEMPLATES
from xdist.tasks.classification.verbalizer import build_verbalizer

XNLI = PromptTemplate.parse(DEFAULT_TEMPLATES["xnli"], choice=False)
WORDS = {"entailment": ["Yes"], "neutral": ["Maybe"], "contradiction": ["No"]}


@pytest.fixture(scope="module")
def verbalizer(mbert_tokenizer):
    return build_verbalizer(PromptConfig(verbalizer=WORDS), None, list(WORDS), mbert_tokenizer)


def pair(a, b, label=0, lang="en", key="0"):
    return ClassificationExample(instance=f"s:{key}", language=lang, text_a=a, text_b=b, label=label, source=f"f:{key}")


def test_pairs_use_the_tokenizers_longest_first_and_carry_labels(mbert_tokenizer):
    examples = [pair("A short premise.", "A hypothesis that is a good deal longer than the premise is.", 2),
                pair("x " * 80, "y " * 30, None, "fr", "1")]
    features = encode_pairs(examples, mbert_tokenizer, 40)
    expected = mbert_tokenizer([e.text_a for e in examples], [e.text_b for e in examples],
                               truncation="longest_first", max_length=40, padding="max_length")
    for feature, ids in zip(features, expected["input_ids"], strict=True):
        assert feature.arrays["input_ids"].tolist() == ids and feature.arrays["input_ids"].dtype == np.int64
    assert features[0].arrays["labels"] == 2 and features[1].arrays["labels"] == IGNORE_LABEL
    assert features[1].uid == "s:1/fr" and features[1].instance == "s:1"
    second = features[1].arrays
    # Both texts were cut: 40 tokens, both segments present.
    assert second["attention_mask"].sum() == 40 and set(second["token_type_ids"].tolist()) == {0, 1}


def test_longest_first_cuts_the_longest_and_ties_from_the_last():
    assert longest_first([10, 3], 8) == [5, 3]
    assert longest_first([4, 4], 6) == [3, 3]
    assert longest_first([4, 4], 7) == [4, 3]
    assert longest_first([2, 9, 9], 10) == [2, 4, 4]
    assert longest_first([3, 2], 9) == [3, 2]


def test_prompt_without_truncation_is_the_whole_rendered_text(mbert_tokenizer, verbalizer):
    example = pair("He left at noon.", "He was gone by one.")
    feature = encode_prompts([example], mbert_tokenizer, 64, XNLI, verbalizer)[0].arrays
    text = XNLI.render({"text_a": example.text_a, "text_b": example.text_b}, mbert_tokenizer.mask_token)
    expected = mbert_tokenizer(text)["input_ids"]
    assert text == "Suppose He left at noon. Can we infer that He was gone by one.? Yes, no or maybe? Answer: [MASK]."
    n = len(expected)
    assert feature["input_ids"][:n].tolist() == expected and (feature["input_ids"][n:] == 0).all()
    assert feature["attention_mask"].sum() == n and feature["input_ids"][feature["mask_positions"]] == 103
    assert int(feature["mask_positions"]) == expected.index(mbert_tokenizer.mask_token_id)
    # The verbalizer travels with the row.
    assert mbert_tokenizer.convert_ids_to_tokens(feature["verbalizer_ids"].tolist()) == ["Yes", "Maybe", "No"]
    assert (feature["verbalizer_weights"] == np.eye(3, dtype=np.float32)).all()


@pytest.mark.parametrize("max_length", [24, 31, 48])
def test_a_long_premise_never_cuts_the_mask_or_the_template(mbert_tokenizer, verbalizer, max_length):
    long_premise = " ".join(f"word{i}" for i in range(300))
    examples = [pair(long_premise, "Short one."), pair("Tiny.", long_premise, key="1")]
    features = encode_prompts(examples, mbert_tokenizer, max_length, XNLI, verbalizer)
    for feature in features:
        arrays = feature.arrays
        ids = arrays["input_ids"][arrays["attention_mask"] == 1].tolist()
        assert len(ids) <= max_length and ids[0] == mbert_tokenizer.cls_token_id and ids[-1] == 102
        position = int(arrays["mask_positions"])
        assert ids[position] == mbert_tokenizer.mask_token_id and ids.count(mbert_tokenizer.mask_token_id) == 1
        text = mbert_tokenizer.decode(ids)
        for literal in ("Suppose", "Can we infer that", "Yes, no or maybe? Answer :", "[MASK]."):
            assert literal in text
    if max_length == 24:  # the template leaves 2 tokens: one per slot
        return
    # The long text was truncated, the short one kept whole.
    assert "Short one." in mbert_tokenizer.decode(features[0].arrays["input_ids"])
    assert "Tiny." in mbert_tokenizer.decode(features[1].arrays["input_ids"])
    assert "word0" in mbert_tokenizer.decode(features[0].arrays["input_ids"])


def test_template_errors(mbert_tokenizer, verbalizer):
    with pytest.raises(ConfigError, match=r"model\.prompt\.template.*unknown slot \{premis\}"):
        PromptTemplate.parse("{premis} {mask}", choice=False)
    with pytest.raises(ConfigError, match="exactly one"):
        PromptTemplate.parse("{text_a} {text_b}", choice=False)
    with pytest.raises(ConfigError, match="leaves no room"):
        encode_prompts([pair("a", "b")], mbert_tokenizer, 12, XNLI, verbalizer)


def test_choices_stack_one_row_per_choice(mbert_tokenizer):
    example = ClassificationExample(instance="c:0", language="et", text_a="The man turned on the faucet.",
                                    text_b=None, label=1, choices=("The toilet filled.", "Water flowed."),
                                    question="effect", source="f:1")
    arrays = encode_choice_pairs([example], mbert_tokenizer, 32)[0].arrays
    assert arrays["input_ids"].shape == (2, 32) and arrays["labels"] == 1
    assert mbert_tokenizer.decode(arrays["input_ids"][1], skip_special_tokens=True).endswith("Water flowed.")
    template = PromptTemplate.parse(DEFAULT_TEMPLATES["xcopa"], choice=True)
    binary = build_verbalizer(PromptConfig(verbalizer={"wrong": ["No"], "right": ["Yes"]}), None, ["wrong", "right"],
                              mbert_tokenizer)
    arrays = encode_choice_prompts([example, example], mbert_tokenizer, 40, template, binary)[1].arrays
    assert arrays["input_ids"].shape == (2, 40) and arrays["mask_positions"].shape == (2,)
    for row in range(2):
        assert arrays["input_ids"][row, arrays["mask_positions"][row]] == mbert_tokenizer.mask_token_id
    batch = collate(encode_choice_prompts([example, example, example], mbert_tokenizer, 40, template, binary))
    assert batch["input_ids"].shape == (3, 2, 40) and batch["labels"].shape == (3,)
