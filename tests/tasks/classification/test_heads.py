"""Classification heads in one process: verbalizer resolution, class logits vs the full MLM output, losses."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from xdist.config import ConfigError, ModelConfig, PromptConfig
from xdist.tasks.classification.examples import ClassificationExample
from xdist.tasks.classification.features import (
    PromptTemplate,
    collate,
    encode_choice_pairs,
    encode_choice_prompts,
    encode_pairs,
    encode_prompts,
)
from xdist.tasks.classification.formats import DEFAULT_TEMPLATES, DEFAULT_VERBALIZERS
from xdist.tasks.classification.heads import (
    build_classification_model,
    class_logits,
    cross_entropy,
    mask_logits,
    vocab_cross_entropy,
)
from xdist.tasks.classification.verbalizer import build_verbalizer

TINY = {"hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 2, "intermediate_size": 48,
        "max_position_embeddings": 64}
XNLI_CLASSES = ["entailment", "neutral", "contradiction"]
MBERT_WORDS = {"entailment": ["Yes"], "neutral": ["Maybe"], "contradiction": ["No"]}


def examples(n=5, seed=0):
    g = torch.Generator().manual_seed(seed)
    words = ["river", "bank", "money", "tree", "green", "runs", "slowly", "the", "a", "house"]
    out = []
    for i in range(n):
        a = " ".join(words[j] for j in torch.randint(0, 10, (int(torch.randint(3, 30, (1,), generator=g)),),
                                                         generator=g))
        b = " ".join(words[j] for j in torch.randint(0, 10, (4,), generator=g))
        label = None if i == 1 else int(torch.randint(0, 3, (1,), generator=g))
        out.append(ClassificationExample(instance=f"s:{i}", language="en", text_a=a, text_b=b, label=label))
    return out


def tiny(head, tokenizer, **kw):
    torch.manual_seed(1)
    cfg = ModelConfig(architecture=dict(TINY), **kw)
    model = build_classification_model(cfg, head, class_names=XNLI_CLASSES,
                                       vocab_size=tokenizer.vocab_size, pad_token_id=tokenizer.pad_token_id)
    return model.double().eval()


def tensors(batch):
    return {k: torch.as_tensor(v) for k, v in batch.items()}


def test_verbalizer_words_round_trip_and_multi_token_rule(mbert_tokenizer):
    verbalizer = build_verbalizer(PromptConfig(verbalizer=MBERT_WORDS), None, XNLI_CLASSES, mbert_tokenizer)
    assert [mbert_tokenizer.decode([t]) for t in verbalizer.token_ids] == ["Yes", "Maybe", "No"]
    assert verbalizer.targets == verbalizer.token_ids
    with pytest.raises(ConfigError, match=r"verbalizer\.entailment.*'yes' is 2 tokens \['ye', '##s'\].*multi_token"):
        build_verbalizer(PromptConfig(), DEFAULT_VERBALIZERS["xnli"], XNLI_CLASSES, mbert_tokenizer)
    first = build_verbalizer(PromptConfig(multi_token="first"), DEFAULT_VERBALIZERS["xnli"], XNLI_CLASSES,
                             mbert_tokenizer)
    assert [mbert_tokenizer.decode([t]) for t in first.token_ids] == ["ye", "may", "no"]
    mean = build_verbalizer(PromptConfig(multi_token="mean"), DEFAULT_VERBALIZERS["xnli"], XNLI_CLASSES,
                            mbert_tokenizer)
    assert mbert_tokenizer.convert_ids_to_tokens(list(mean.token_ids)) == ["ye", "##s", "may", "##be", "no"]
    assert mean.weights == ((0.5, 0.5, 0, 0, 0), (0, 0, 0.5, 0.5, 0), (0, 0, 0, 0, 1.0))
    with pytest.raises(ConfigError, match=r"missing \['contradiction'\], unknown \['other'\]"):
        build_verbalizer(PromptConfig(verbalizer={"entailment": ["Yes"], "neutral": ["No"], "other": ["x"]}), None,
                         XNLI_CLASSES, mbert_tokenizer)


@pytest.mark.parametrize("rule", ["gather", "mean"])
def test_prompt_class_logits_are_the_mlm_logits_at_the_mask(mbert_tokenizer, rule):
    model = tiny("prompt", mbert_tokenizer)
    assert type(model).__name__ == "BertForMaskedLM"
    template = PromptTemplate.parse(DEFAULT_TEMPLATES["xnli"], choice=False)
    if rule == "gather":
        verbalizer = build_verbalizer(PromptConfig(verbalizer=MBERT_WORDS), None, XNLI_CLASSES, mbert_tokenizer)
    else:
        words = {"entailment": ["yes", "Yes"], "neutral": ["maybe"], "contradiction": ["no"]}
        verbalizer = build_verbalizer(PromptConfig(verbalizer=words, multi_token="mean"), None, XNLI_CLASSES,
                                      mbert_tokenizer)
    batch = tensors(collate(encode_prompts(examples(), mbert_tokenizer, 40, template, verbalizer)))
    with torch.no_grad():
        full = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                     token_type_ids=batch["token_type_ids"]).logits  # [B, L, V]
        at_mask = full[torch.arange(5), batch["mask_positions"]]
        vocab = mask_logits(model, batch)
        logits = class_logits(model, batch)
    assert vocab.shape == (5, mbert_tokenizer.vocab_size)
    torch.testing.assert_close(vocab, at_mask, rtol=1e-12, atol=1e-12)
    if rule == "gather":
        expected = at_mask[:, list(verbalizer.token_ids)]
    else:
        yes, s, may, be, no = (mbert_tokenizer.convert_tokens_to_ids(t) for t in ("ye", "##s", "may", "##be", "no"))
        yes_cap = mbert_tokenizer.convert_tokens_to_ids("Yes")
        expected = torch.stack([((at_mask[:, yes] + at_mask[:, s]) / 2 + at_mask[:, yes_cap]) / 2,
                                (at_mask[:, may] + at_mask[:, be]) / 2, at_mask[:, no]], dim=1)
    torch.testing.assert_close(logits.double(), expected, rtol=1e-6, atol=1e-6)


def test_losses_against_float64_cross_entropy(mbert_tokenizer):
    template = PromptTemplate.parse(DEFAULT_TEMPLATES["xnli"], choice=False)
    verbalizer = build_verbalizer(PromptConfig(verbalizer=MBERT_WORDS), None, XNLI_CLASSES, mbert_tokenizer)
    batch = tensors(collate(encode_prompts(examples(7, seed=3), mbert_tokenizer, 40, template, verbalizer)))
    labels = batch["labels"]
    assert (labels == -100).sum() == 1
    model = tiny("prompt", mbert_tokenizer)
    with torch.no_grad():
        logits = class_logits(model, batch)
        loss = cross_entropy(logits, batch)
        vocab = mask_logits(model, batch)
        vocab_loss = vocab_cross_entropy(vocab, batch)
    keep = labels != -100
    log_p = logits.double().log_softmax(-1)[keep]
    torch.testing.assert_close(loss.double(), -log_p.gather(1, labels[keep, None]).mean(), rtol=1e-6, atol=1e-7)
    targets = torch.tensor(verbalizer.token_ids)[labels[keep]]
    expected = -vocab.double().log_softmax(-1)[keep].gather(1, targets[:, None]).mean()
    torch.testing.assert_close(vocab_loss.double(), expected, rtol=1e-6, atol=1e-7)

    classifier = tiny("classifier", mbert_tokenizer)
    assert type(classifier).__name__ == "BertForSequenceClassification"
    assert classifier.config.id2label == dict(enumerate(XNLI_CLASSES))
    pairs = tensors(collate(encode_pairs(examples(7, seed=3), mbert_tokenizer, 40)))
    with torch.no_grad():
        logits = class_logits(classifier, pairs)
        loss = cross_entropy(logits, pairs)
        direct = classifier(**{k: pairs[k] for k in ("input_ids", "attention_mask", "token_type_ids")}).logits
    torch.testing.assert_close(logits.double(), direct)
    expected = F.cross_entropy(direct, pairs["labels"], ignore_index=-100)
    torch.testing.assert_close(loss.double(), expected, rtol=1e-6, atol=1e-7)


def test_choice_tasks_score_each_choice(mbert_tokenizer):
    example = ClassificationExample(instance="c:0", language="en", text_a="The man turned on the faucet.", text_b=None,
                                    label=1, choices=("The toilet filled.", "Water flowed from the spout."),
                                    question="effect")
    mc = tiny("multiple_choice", mbert_tokenizer)
    assert type(mc).__name__ == "BertForMultipleChoice"
    batch = tensors(collate(encode_choice_pairs([example] * 3, mbert_tokenizer, 32)))
    with torch.no_grad():
        assert class_logits(mc, batch).shape == (3, 2)
    prompt = tiny("prompt", mbert_tokenizer)
    template = PromptTemplate.parse(DEFAULT_TEMPLATES["xcopa"], choice=True)
    verbalizer = build_verbalizer(PromptConfig(verbalizer={"wrong": ["No"], "right": ["Yes"]}), None,
                                  ["wrong", "right"], mbert_tokenizer)
    batch = tensors(collate(encode_choice_prompts([example] * 3, mbert_tokenizer, 40, template, verbalizer)))
    with torch.no_grad():
        scores = class_logits(prompt, batch)
        vocab = mask_logits(prompt, batch)
        full = prompt(input_ids=batch["input_ids"][0], attention_mask=batch["attention_mask"][0],
                      token_type_ids=batch["token_type_ids"][0]).logits
    assert scores.shape == (3, 2) and vocab.shape == (3, 2, mbert_tokenizer.vocab_size)
    yes, no = mbert_tokenizer.convert_tokens_to_ids(["Yes", "No"])
    at_mask = full[torch.arange(2), batch["mask_positions"][0]]
    torch.testing.assert_close(scores[0].double(), at_mask[:, yes] - at_mask[:, no], rtol=1e-6, atol=1e-6)


def test_checkpoint_round_trip_keeps_the_logits(mbert_tokenizer, tmp_path):
    model = tiny("classifier", mbert_tokenizer).float()
    model.save_pretrained(tmp_path)
    cfg = ModelConfig(checkpoint=str(tmp_path))
    again = build_classification_model(cfg, "classifier", class_names=XNLI_CLASSES,
                                       vocab_size=mbert_tokenizer.vocab_size, pad_token_id=0).eval()
    batch = tensors(collate(encode_pairs(examples(), mbert_tokenizer, 32)))
    with torch.no_grad():
        torch.testing.assert_close(class_logits(again, batch), class_logits(model, batch))
    with pytest.raises(ConfigError, match="model.architecture"):
        build_classification_model(ModelConfig(checkpoint=str(tmp_path), architecture={"hidden_size": 8}),
                                   "classifier", class_names=XNLI_CLASSES, vocab_size=10, pad_token_id=0)
