"""Tokenised features: tokenizer loading, answer alignment on real XQuAD, windows, stride, truncation."""

from __future__ import annotations

import json
import socket
from collections import defaultdict

import pytest

from xdist.config import DataConfig, FeatureConfig, SourceConfig
from xdist.data.sources import DataError
from xdist.data.tokenizer import load_tokenizer
from xdist.evaluation.normalize import normalize_squad
from xdist.tasks.qa.examples import Answer, QAExample
from xdist.tasks.qa.features import FeatureStats, featurize, iter_features
from xdist.tasks.qa.readers import read_source

XQUAD_LANGUAGES = ["ar", "de", "el", "en", "es", "hi", "ro", "ru", "th", "tr", "vi", "zh"]


def example(context: str, answer: str, question: str = "What is it?", *, at: int | None = None, uid: str = "q1"):
    start = context.index(answer) if at is None else at
    return QAExample(id=uid, question=question, question_lang="en", context=context, context_lang="en",
                     answers=(Answer(answer, start),))


def question_tokens(feature, tokenizer) -> list[int]:
    """Token ids between [CLS] and the first [SEP]."""
    first_sep = feature.input_ids.index(tokenizer.sep_token_id)
    return feature.input_ids[1:first_sep]


def context_positions(feature) -> list[int]:
    return [k for k, offset in enumerate(feature.offsets) if offset is not None]


# --------------------------------------------------------------------------------------------------
# Loading
# --------------------------------------------------------------------------------------------------


def test_load_tokenizer_is_fast_and_offline(tokenizer_path, monkeypatch):
    def no_network(*args, **kwargs):
        raise AssertionError("load_tokenizer tried to open a network connection")

    monkeypatch.setattr(socket.socket, "connect", no_network)
    monkeypatch.setenv("MBERT_DIR", str(tokenizer_path))
    tokenizer = load_tokenizer("${MBERT_DIR}")
    assert tokenizer.is_fast and tokenizer.cls_token_id is not None and len(tokenizer) == 119547


def test_load_tokenizer_errors_name_the_directory(tmp_path):
    with pytest.raises(DataError, match=f"tokenizer directory {tmp_path / 'nope'} does not exist; expected a local"):
        load_tokenizer(tmp_path / "nope")
    with pytest.raises(DataError, match=f"cannot load a tokenizer from {tmp_path}"):
        load_tokenizer(tmp_path)
    # ByT5's tokenizer is pure Python and needs no vocabulary file: a cheap slow tokenizer.
    (tmp_path / "tokenizer_config.json").write_text(json.dumps({"tokenizer_class": "ByT5Tokenizer"}))
    with pytest.raises(DataError, match=f"{tmp_path}: ByT5Tokenizer is a slow"):
        load_tokenizer(tmp_path)


def test_featurize_refuses_a_slow_tokenizer(tmp_path):
    from transformers import AutoTokenizer

    (tmp_path / "tokenizer_config.json").write_text(json.dumps({"tokenizer_class": "ByT5Tokenizer"}))
    slow = AutoTokenizer.from_pretrained(str(tmp_path), local_files_only=True)
    with pytest.raises(DataError, match="not a fast tokenizer"):
        featurize([example("Paris is big.", "Paris")], slow, FeatureConfig())


# --------------------------------------------------------------------------------------------------
# Real XQuAD: every language
# --------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def xquad_featurized(data_dir, mbert_tokenizer):
    examples = read_source(SourceConfig(name="xquad", format="xquad", path="xquad"), DataConfig(root=str(data_dir)))
    return examples.examples, featurize(examples.examples, mbert_tokenizer, FeatureConfig())


def test_xquad_answers_map_back_to_their_text_in_every_language(xquad_featurized):
    examples, result = xquad_featurized
    features_of = defaultdict(list)
    for feature in result.features:
        features_of[feature.example_uid].append(feature)
    matches, totals, outside, not_aligned = defaultdict(int), defaultdict(int), 0, 0
    for ex in examples:
        features = features_of[ex.uid]
        assert [f.window for f in features] == list(range(len(features)))
        answer = ex.answers[0]
        containing = [f for f in features if f.start_position != 0]
        totals[ex.context_lang] += 1
        if not containing:
            outside += 1
            continue
        feature = containing[0]
        start, end = feature.offsets[feature.start_position], feature.offsets[feature.end_position]
        assert start is not None and end is not None and feature.start_position <= feature.end_position
        span = ex.context[start[0] : end[1]]
        matches[ex.context_lang] += normalize_squad(span) == normalize_squad(answer.text)
        not_aligned += (start[0], end[1]) != (answer.start, answer.start + len(answer.text))
        # Every window holding the answer gives the same character span.
        assert {(f.offsets[f.start_position][0], f.offsets[f.end_position][1]) for f in containing} == {
            (start[0], end[1])
        }
    rates = {lang: matches[lang] / totals[lang] for lang in XQUAD_LANGUAGES}
    assert min(rates.values()) >= 0.995, rates
    # The stats agree with what the features say.
    stats = result.stats
    assert (stats.examples, stats.features) == (len(examples), len(result.features))
    assert stats.answers_outside_windows == outside == 0
    assert stats.answers_not_token_aligned == not_aligned
    assert stats.max_features_per_example == max(len(v) for v in features_of.values())


def test_feature_layout(xquad_featurized, mbert_tokenizer):
    examples, result = xquad_featurized
    cfg = FeatureConfig()
    by_uid = {e.uid: e for e in examples}
    cls, sep, pad = mbert_tokenizer.cls_token_id, mbert_tokenizer.sep_token_id, mbert_tokenizer.pad_token_id
    for feature in result.features[::7]:
        ex = by_uid[feature.example_uid]
        n = len(feature.input_ids)
        assert n == len(feature.attention_mask) == len(feature.token_type_ids) == len(feature.offsets) == cfg.max_length
        real = sum(feature.attention_mask)
        assert feature.attention_mask == [1] * real + [0] * (n - real)
        assert feature.input_ids[0] == cls and feature.input_ids[real - 1] == sep
        assert set(feature.input_ids[real:]) <= {pad}
        first_sep = feature.input_ids.index(sep)
        positions = context_positions(feature)
        # Context tokens are exactly the segment between the two [SEP]s, with type id 1.
        assert positions == list(range(first_sep + 1, real - 1))
        assert all(feature.token_type_ids[k] == 0 for k in range(first_sep + 1))
        assert all(feature.token_type_ids[k] == 1 for k in range(first_sep + 1, real))
        assert all(0 <= a < b <= len(ex.context) for a, b in (feature.offsets[k] for k in positions))
        assert (feature.question_lang, feature.context_lang) == ex.cell
        assert len(question_tokens(feature, mbert_tokenizer)) <= cfg.max_query_length


# --------------------------------------------------------------------------------------------------
# Windows, stride, truncation, alignment
# --------------------------------------------------------------------------------------------------


def long_context(sentences: int, answer_sentence: int) -> tuple[str, str]:
    parts = [f"Sentence {i} describes the harbour of town number {i}." for i in range(sentences)]
    parts[answer_sentence] = "The lighthouse keeper was called Bartholomew Zanzibar."
    return " ".join(parts), "Bartholomew Zanzibar"


@pytest.mark.parametrize(("max_length", "doc_stride", "max_query_length"), [(384, 128, 64), (48, 8, 8)])
def test_windows_follow_the_stride_and_only_the_one_holding_the_answer_targets_it(
    mbert_tokenizer, max_length, doc_stride, max_query_length
):
    cfg = FeatureConfig(max_length=max_length, doc_stride=doc_stride, max_query_length=max_query_length)
    context, answer = long_context(sentences=120, answer_sentence=77)
    ex = example(context, answer, question="Who kept the lighthouse?")
    result = featurize([ex], mbert_tokenizer, cfg)
    features = result.features
    assert len(features) >= 4 and result.stats.features == len(features)

    # Reference windows from the context's own tokenization: each window holds `room` context tokens
    # and starts `room - doc_stride` tokens after the previous one.
    context_offsets = mbert_tokenizer(context, add_special_tokens=False, return_offsets_mapping=True)["offset_mapping"]
    n_question = len(mbert_tokenizer(ex.question, add_special_tokens=False)["input_ids"])
    room = max_length - n_question - 3
    step = room - doc_stride
    for k, feature in enumerate(features):
        window = [feature.offsets[p] for p in context_positions(feature)]
        assert window == [tuple(o) for o in context_offsets[k * step : k * step + room]]
    for before, after in zip(features, features[1:], strict=False):
        overlap = [before.offsets[p] for p in context_positions(before)][-doc_stride:]
        assert [after.offsets[p] for p in context_positions(after)][:doc_stride] == overlap

    a_start, a_end = ex.answers[0].start, ex.answers[0].start + len(answer)
    holding = 0
    for feature in features:
        window = [feature.offsets[p] for p in context_positions(feature)]
        if window[0][0] <= a_start and window[-1][1] >= a_end:
            holding += 1
            span = context[feature.offsets[feature.start_position][0] : feature.offsets[feature.end_position][1]]
            assert span == answer
        else:
            assert (feature.start_position, feature.end_position) == (0, 0)
    assert holding >= 1
    assert result.stats.answers_outside_windows == 0 and result.stats.answers_not_token_aligned == 0


def test_questions_are_cut_to_max_query_length_tokens(mbert_tokenizer):
    cfg = FeatureConfig()
    long_question = " ".join(f"Which of the {i} lighthouses on the northern coast was built first" for i in range(12))
    full = mbert_tokenizer(long_question, add_special_tokens=False)["input_ids"]
    assert len(full) > 2 * cfg.max_query_length
    examples = [
        example("The first lighthouse was built in 1820.", "1820", question=long_question, uid="long"),
        example("The first lighthouse was built in 1820.", "1820", question="  When was it built? ", uid="short"),
    ]
    result = featurize(examples, mbert_tokenizer, cfg)
    long_feature, short_feature = result.features
    assert question_tokens(long_feature, mbert_tokenizer) == full[: cfg.max_query_length]
    assert question_tokens(short_feature, mbert_tokenizer) == mbert_tokenizer(
        "When was it built?", add_special_tokens=False)["input_ids"]
    assert result.stats.questions_truncated == 1
    for feature in result.features:
        span = feature.offsets[feature.start_position][0], feature.offsets[feature.end_position][1]
        assert "The first lighthouse was built in 1820."[span[0] : span[1]] == "1820"


def test_real_long_questions_keep_their_first_tokens(xquad_featurized, mbert_tokenizer):
    examples, result = xquad_featurized
    first_feature = {}
    for feature in result.features:
        first_feature.setdefault(feature.example_uid, feature)
    cut = 0
    for ex in examples:
        full = mbert_tokenizer(ex.question.strip(), add_special_tokens=False)["input_ids"]
        kept = question_tokens(first_feature[ex.uid], mbert_tokenizer)
        assert kept == full[:64]
        cut += len(full) > 64
    assert cut == result.stats.questions_truncated > 0  # Thai questions run past 64 mBERT tokens


def test_answer_longer_than_a_window_is_outside_every_window(mbert_tokenizer):
    words = [f"w{i}" for i in range(200)]
    context = " ".join(words)
    answer = " ".join(words[50:150])
    cfg = FeatureConfig(max_length=48, doc_stride=8, max_query_length=8)
    result = featurize([example(context, answer)], mbert_tokenizer, cfg)
    assert len(result.features) > 3
    assert all((f.start_position, f.end_position) == (0, 0) for f in result.features)
    assert result.stats.answers_outside_windows == 1


def test_answers_inside_tokens_and_with_spaces(mbert_tokenizer):
    context = "An unbelievable story about Lisbon harbours."
    inside_word = example(context, "believ", uid="a")
    spaced = example(context, " Lisbon ", at=context.index(" Lisbon "), uid="b")
    result = featurize([inside_word, spaced], mbert_tokenizer, FeatureConfig())
    assert result.stats.answers_not_token_aligned == 1
    first, second = result.features
    a, b = first.offsets[first.start_position][0], first.offsets[first.end_position][1]
    assert "believ" in context[a:b] and context[a:b] in "unbelievable" and first.start_position > 0
    a, b = second.offsets[second.start_position][0], second.offsets[second.end_position][1]
    assert context[a:b] == "Lisbon"


def test_cross_lingual_features_take_question_and_context_from_different_languages(data_dir, mbert_tokenizer):
    read = read_source(
        SourceConfig(name="xquad", format="xquad", path="xquad", pairs="en-de,zh-th", max_examples=40),
        DataConfig(root=str(data_dir)),
    )
    result = featurize(read.examples, mbert_tokenizer, FeatureConfig())
    by_uid = {e.uid: e for e in read.examples}
    seen_cells = set()
    for feature in result.features:
        ex = by_uid[feature.example_uid]
        seen_cells.add((feature.question_lang, feature.context_lang))
        full_question = mbert_tokenizer(ex.question, add_special_tokens=False)["input_ids"]
        assert question_tokens(feature, mbert_tokenizer) == full_question[:64]
        if feature.start_position:
            span = ex.context[feature.offsets[feature.start_position][0] : feature.offsets[feature.end_position][1]]
            assert normalize_squad(span) == normalize_squad(ex.answers[0].text)
    assert seen_cells == {("en", "de"), ("zh", "th")}


def test_streaming_and_batch_size_do_not_change_features(data_dir, mbert_tokenizer):
    read = read_source(
        SourceConfig(name="xquad", format="xquad", path="xquad", languages=["th", "en"], max_examples=60),
        DataConfig(root=str(data_dir)),
    )
    whole = featurize(read.examples, mbert_tokenizer, FeatureConfig())
    stats = FeatureStats()
    streamed = list(iter_features(iter(read.examples), mbert_tokenizer, FeatureConfig(), stats, batch_size=7))
    assert streamed == whole.features
    assert stats == whole.stats
    halves = FeatureStats()
    for part in (read.examples[:50], read.examples[50:]):
        halves.merge(featurize(part, mbert_tokenizer, FeatureConfig()).stats)
    assert halves == whole.stats
