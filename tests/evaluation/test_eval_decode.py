"""n-best span decoding: hand-built features with known logits, a brute-force reference on random
inputs, and oracle logits on real XQuAD windows from the mBERT tokenizer."""

from __future__ import annotations

import json

import numpy as np
import pytest

from xdist.evaluation import decode_predictions, evaluate_qa
from xdist.tasks.qa.examples import Answer, QAExample, QAFeature

LOW = -10.0
N_QUESTION = 2  # question tokens in the synthetic features: [CLS] q q [SEP] context... [SEP] pad...


def word_spans(text: str) -> list[tuple[int, int]]:
    spans, position = [], 0
    for word in text.split():
        start = text.index(word, position)
        spans.append((start, start + len(word)))
        position = start + len(word)
    return spans


def make_example(context: str, uid_id: str = "q1", q: str = "en", c: str = "en") -> QAExample:
    return QAExample(id=uid_id, question="?", question_lang=q, context=context, context_lang=c,
                     answers=(Answer(context.split()[0], 0),))


def make_feature(example: QAExample, spans: list[tuple[int, int]], window: int = 0, length: int = 12) -> QAFeature:
    """Offsets: [CLS], N_QUESTION question tokens, [SEP], the context spans, [SEP], padding to length."""
    offsets = [None] * (N_QUESTION + 2) + list(spans) + [None]
    assert len(offsets) <= length
    offsets += [None] * (length - len(offsets))
    return QAFeature(example_uid=example.uid, window=window, input_ids=[0] * length, attention_mask=[1] * length,
                     token_type_ids=[0] * length, offsets=offsets, start_position=0, end_position=0)


def token(i: int) -> int:
    """Position of context token i in a synthetic feature."""
    return N_QUESTION + 2 + i


def logits(length: int = 12, **peaks: float) -> np.ndarray:
    row = np.full(length, LOW)
    for key, value in peaks.items():
        row[int(key[1:])] = value
    return row


CONTEXT = "alpha beta gamma delta epsilon zeta"  # tokens 0..5


def decode_one(features, starts, ends, example, **kwargs):
    return decode_predictions([example], features, np.stack(starts), np.stack(ends), **kwargs)


def test_clear_best_span_and_nbest_list():
    example = make_example(CONTEXT)
    feature = make_feature(example, word_spans(CONTEXT))
    start = logits(**{f"p{token(1)}": 5.0, f"p{token(3)}": 2.0})
    end = logits(**{f"p{token(2)}": 4.0, f"p{token(4)}": 1.0})
    result = decode_one([feature], [start], [end], example, keep_nbest=True, n_best=3)
    assert result.predictions == {example.uid: "beta gamma"}
    nbest = result.nbest[example.uid]
    # Valid pairs among the top-3 starts {t1: 5, t3: 2, t0: LOW} and ends {t2: 4, t4: 1, t0: LOW}:
    # (1,2) = 9, (1,4) = 6, (3,4) = 3 are the three best.
    assert [(c.text, c.score) for c in nbest] == [("beta gamma", 9.0), ("beta gamma delta epsilon", 6.0),
                                                  ("delta epsilon", 3.0)]
    assert sum(c.probability for c in nbest) == pytest.approx(1.0)
    expected = np.exp([9.0, 6.0, 3.0]) / np.exp([9.0, 6.0, 3.0]).sum()
    np.testing.assert_allclose([c.probability for c in nbest], expected)
    best = nbest[0]
    assert (best.start_token, best.end_token, best.start_char, best.end_char) == (token(1), token(2), 6, 16)
    assert CONTEXT[best.start_char:best.end_char] == best.text
    assert result.no_valid_span == [] and result.no_features == []


def test_spans_touching_question_or_special_tokens_are_rejected():
    example = make_example(CONTEXT)
    feature = make_feature(example, word_spans(CONTEXT))
    # Highest start: a question token; highest end: the final [SEP]; both must be skipped.
    sep = token(6)
    start = logits(**{"p1": 20.0, f"p{token(0)}": 3.0})
    end = logits(**{f"p{sep}": 20.0, f"p{token(2)}": 2.0, "p0": 15.0})
    result = decode_one([feature], [start], [end], example)
    assert result.predictions[example.uid] == "alpha beta gamma"


def test_too_long_spans_are_rejected():
    example = make_example(CONTEXT)
    feature = make_feature(example, word_spans(CONTEXT))
    start = logits(**{f"p{token(0)}": 10.0})
    end = logits(**{f"p{token(3)}": 10.0, f"p{token(1)}": 5.0})
    # Tokens 0..3 are 4 long: allowed at max_answer_length=4, rejected at 3.
    assert decode_one([feature], [start], [end], example, max_answer_length=4).predictions[example.uid] == \
        "alpha beta gamma delta"
    assert decode_one([feature], [start], [end], example, max_answer_length=3).predictions[example.uid] == \
        "alpha beta"


def test_end_before_start_is_rejected():
    example = make_example(CONTEXT)
    feature = make_feature(example, word_spans(CONTEXT))
    # (t3, t1) = 20 is reversed; next: (t0, t1) = 15 vs (t3, t4) = 13 vs (t0, t4) = 8.
    start = logits(**{f"p{token(3)}": 10.0, f"p{token(0)}": 5.0})
    end = logits(**{f"p{token(1)}": 10.0, f"p{token(4)}": 3.0})
    assert decode_one([feature], [start], [end], example).predictions[example.uid] == "alpha beta"


def test_best_span_in_second_window():
    example = make_example(CONTEXT)
    spans = word_spans(CONTEXT)
    first = make_feature(example, spans[0:4], window=0)   # alpha..delta
    second = make_feature(example, spans[2:6], window=1)  # gamma..zeta; context token i = word i + 2
    start0 = logits(**{f"p{token(1)}": 4.0})
    end0 = logits(**{f"p{token(1)}": 4.0})     # "beta": 8
    start1 = logits(**{f"p{token(2)}": 6.0})   # word 4 = epsilon
    end1 = logits(**{f"p{token(3)}": 5.0})     # word 5 = zeta: 11
    result = decode_one([first, second], [start0, start1], [end0, end1], example, keep_nbest=True)
    assert result.predictions[example.uid] == "epsilon zeta"
    assert result.nbest[example.uid][0].window == 1
    assert result.nbest[example.uid][1].text == "beta"


def test_ties_are_resolved_deterministically():
    example = make_example(CONTEXT)
    spans = word_spans(CONTEXT)
    first = make_feature(example, spans[0:4], window=0)
    second = make_feature(example, spans[2:6], window=1)
    # Equal scores 10 in both windows: "beta" in window 0, "epsilon" in window 1. The earlier window wins,
    # whatever the order the features are given in.
    start0, end0 = logits(**{f"p{token(1)}": 5.0}), logits(**{f"p{token(1)}": 5.0})
    start1, end1 = logits(**{f"p{token(2)}": 5.0}), logits(**{f"p{token(2)}": 5.0})
    for order in ([0, 1], [1, 0]):
        features = [(first, start0, end0), (second, start1, end1)]
        features = [features[i] for i in order]
        result = decode_one([f for f, _, _ in features], [s for _, s, _ in features], [e for _, _, e in features],
                            example)
        assert result.predictions[example.uid] == "beta"
    # Within one window: (t0, t2) and (t1, t2) both score 7; the lower start wins.
    feature = make_feature(example, spans)
    start = logits(**{f"p{token(0)}": 3.0, f"p{token(1)}": 3.0})
    end = logits(**{f"p{token(2)}": 4.0})
    assert decode_one([feature], [start], [end], example).predictions[example.uid] == "alpha beta gamma"
    # Equal logits competing for a single top-n slot: the lower token index takes it.
    start = logits(**{f"p{token(3)}": 3.0, f"p{token(1)}": 3.0})
    end = logits(**{f"p{token(4)}": 4.0})
    assert decode_one([feature], [start], [end], example, n_best=1).predictions[example.uid] == \
        "beta gamma delta epsilon"


def test_offsets_map_subwords_and_unicode_back_to_exact_text():
    context = "Unbelievable results in Zürich – 北京大学!"
    example = make_example(context, c="de")
    # Subword pieces "Un|believ|able", "results", "in", "Zü|rich", "–", "北", "京", "大", "学", "!"
    pieces = [(0, 2), (2, 8), (8, 12), (13, 20), (21, 23), (24, 26), (26, 30), (31, 32), (33, 34), (34, 35),
              (35, 36), (36, 37), (37, 38)]
    feature = make_feature(example, pieces, length=20)
    start = logits(20, **{f"p{token(0)}": 5.0, f"p{token(5)}": 1.0})
    end = logits(20, **{f"p{token(2)}": 5.0, f"p{token(6)}": 1.0, f"p{token(9)}": 0.5})
    result = decode_one([feature], [start], [end], example, keep_nbest=True)
    # (t0,t2) = 10, (t0,t6) = 6, (t0,t9) = 5.5, (t5,t6) = 2, (t5,t9) = 1.5; every other pair uses a LOW logit.
    texts = [c.text for c in result.nbest[example.uid]]
    assert texts[:5] == ["Unbelievable", "Unbelievable results in Zürich", "Unbelievable results in Zürich – 北京",
                         "Zürich", "Zürich – 北京"]
    assert result.predictions[example.uid] == "Unbelievable"


def test_no_valid_span_and_no_features_are_reported():
    with_feature = make_example(CONTEXT, "a")
    without = make_example(CONTEXT, "b")
    feature = make_feature(with_feature, word_spans(CONTEXT))
    # The only start candidate (n_best=1) is a question token: nothing valid.
    start = logits(**{"p1": 9.0})
    end = logits(**{f"p{token(0)}": 9.0})
    result = decode_predictions([with_feature, without], [feature], start[None], end[None], n_best=1,
                                keep_nbest=True)
    assert result.predictions == {with_feature.uid: "", without.uid: ""}
    assert result.no_valid_span == [with_feature.uid]
    assert result.no_features == [without.uid]
    assert result.nbest == {with_feature.uid: [], without.uid: []}


def test_bad_inputs_name_the_problem():
    example = make_example(CONTEXT)
    feature = make_feature(example, word_spans(CONTEXT))
    row = logits()[None]
    with pytest.raises(ValueError, match="2 features but 1"):
        decode_predictions([example], [feature], np.vstack([row, row]), np.vstack([row, row]))
    with pytest.raises(ValueError, match="shape"):
        decode_predictions([example], [feature], row, row[:, :5])
    with pytest.raises(ValueError, match="NaN"):
        decode_predictions([example], [feature], np.full_like(row, np.nan), row)
    stray = make_feature(make_example(CONTEXT, "other"), word_spans(CONTEXT))
    with pytest.raises(ValueError, match="'other/en-en'"):
        decode_predictions([example], [stray], row, row)
    with pytest.raises(ValueError, match="context tokens beyond the 5 logit positions"):
        decode_predictions([example], [feature], row[:, :5], row[:, :5])
    with pytest.raises(ValueError, match="duplicate example uid"):
        decode_predictions([example, example], [feature], row, row)
    broken = make_feature(example, [(0, 5), (6, 500)])
    start = logits(**{f"p{token(1)}": 5.0})
    with pytest.raises(ValueError, match="outside the context"):
        decode_predictions([example], [broken], start[None], start[None])


# ---------------------------------------------------------------- brute-force reference


def reference_nbest(example, items, n_best, max_answer_length):
    """All valid pairs of the top-n starts × top-n ends, ranked by the documented rules (O(L^2) loops)."""
    candidates = []
    items = sorted(items, key=lambda item: (item[0].window, item[3]))
    for rank, (feature, start_row, end_row, _) in enumerate(items):
        positions = range(len(start_row))
        top_starts = sorted(positions, key=lambda i: (-start_row[i], i))[:n_best]
        top_ends = sorted(positions, key=lambda i: (-end_row[i], i))[:n_best]
        for s in top_starts:
            for e in top_ends:
                if feature.offsets[s] is None or feature.offsets[e] is None:
                    continue
                if e < s or e - s + 1 > max_answer_length:
                    continue
                score = float(start_row[s]) + float(end_row[e])
                text = example.context[feature.offsets[s][0]:feature.offsets[e][1]]
                candidates.append((-score, rank, s, e, text))
    candidates.sort()
    return [(text, -neg) for neg, _, _, _, text in candidates[:n_best]]


@pytest.mark.parametrize("integer_logits", [False, True])
def test_matches_brute_force_reference_on_random_inputs(integer_logits):
    rng = np.random.default_rng(1234 + integer_logits)
    length = 37
    examples, features = [], []
    for e in range(23):
        words = [f"w{e}_{i}" for i in range(rng.integers(3, 60))]
        context = " ".join(words)
        example = make_example(context, f"ex{e}")
        examples.append(example)
        spans = word_spans(context)
        n_context = length - N_QUESTION - 3
        windows = max(1, -(-len(spans) // n_context))
        for w in rng.permutation(windows):
            window_spans = spans[w * n_context:(w + 1) * n_context]
            feature = make_feature(example, window_spans, window=int(w), length=length)
            # Holes in the context (e.g. tokens with no offsets) must be skipped like question tokens.
            feature.offsets[token(0) + int(rng.integers(len(window_spans)))] = None
            features.append(feature)
    shape = (len(features), length)
    if integer_logits:  # many exact ties
        start, end = rng.integers(-3, 4, shape).astype(np.float32), rng.integers(-3, 4, shape).astype(np.float32)
    else:
        start, end = rng.standard_normal(shape), rng.standard_normal(shape)
    n_best, max_answer_length = 7, 5
    result = decode_predictions(examples, features, start, end, n_best=n_best,
                                max_answer_length=max_answer_length, keep_nbest=True)
    for example in examples:
        items = [(f, start[i].astype(np.float64), end[i].astype(np.float64), i)
                 for i, f in enumerate(features) if f.example_uid == example.uid]
        expected = reference_nbest(example, items, n_best, max_answer_length)
        got = [(c.text, c.score) for c in result.nbest[example.uid]]
        assert [t for t, _ in got] == [t for t, _ in expected], example.uid
        np.testing.assert_allclose([s for _, s in got], [s for _, s in expected], rtol=0, atol=1e-12)
        assert result.predictions[example.uid] == (expected[0][0] if expected else "")


# ---------------------------------------------------------------- real data: mBERT windows over XQuAD

@pytest.mark.parametrize("lang", ["en", "zh"])
def test_oracle_logits_on_real_windows_recover_gold_answers(lang, data_dir, tokenizer_path):
    """Peaked logits at the gold tokens of windows built by mBERT's fast tokenizer (the same
    `tokenizers` backend transformers uses) decode back to the gold text wherever the gold answer
    starts and ends on token boundaries; short windows force long contexts to span several."""
    from tokenizers import Tokenizer

    xquad_file = data_dir / "xquad" / f"xquad.{lang}.json"
    if not xquad_file.is_file() or not (tokenizer_path / "tokenizer.json").is_file():
        pytest.skip(f"{xquad_file} or {tokenizer_path / 'tokenizer.json'} not found")
    tokenizer = Tokenizer.from_file(str(tokenizer_path / "tokenizer.json"))
    length = 96
    tokenizer.enable_truncation(length, stride=24, strategy="only_second")
    tokenizer.enable_padding(length=length)
    data = json.loads(xquad_file.read_text(encoding="utf-8"))
    examples, features, start_rows, end_rows = [], [], [], []
    aligned_uids, multi_window = set(), 0
    for paragraph in data["data"][0]["paragraphs"][:6]:
        context = paragraph["context"]
        for qa in paragraph["qas"][:3]:
            answer = qa["answers"][0]
            example = QAExample(qa["id"], qa["question"], lang, context, lang,
                                tuple(Answer(a["text"], a["answer_start"]) for a in qa["answers"]))
            examples.append(example)
            gold_start, gold_end = answer["answer_start"], answer["answer_start"] + len(answer["text"])
            encoding = tokenizer.encode(qa["question"], context)
            windows = [encoding, *encoding.overflowing]
            multi_window += len(windows) > 1
            starts_on_boundary = ends_on_boundary = False
            for w, window in enumerate(windows):
                pairs = zip(window.offsets, window.sequence_ids, strict=True)
                offsets = [tuple(o) if sid == 1 else None for o, sid in pairs]
                start_row, end_row = np.zeros(length), np.zeros(length)
                for i, offset in enumerate(offsets):
                    if offset is None:
                        continue
                    if offset[0] <= gold_start < offset[1]:
                        start_row[i] = 10.0
                        starts_on_boundary |= offset[0] == gold_start
                    if offset[0] < gold_end <= offset[1]:
                        end_row[i] = 10.0
                        ends_on_boundary |= offset[1] == gold_end
                features.append(QAFeature(example.uid, w, window.ids, window.attention_mask, window.type_ids,
                                          offsets, 0, 0))
                start_rows.append(start_row)
                end_rows.append(end_row)
            if starts_on_boundary and ends_on_boundary:
                aligned_uids.add(example.uid)
    decoded = decode_predictions(examples, features, np.stack(start_rows), np.stack(end_rows))
    for example in examples:
        if example.uid in aligned_uids:
            assert decoded.predictions[example.uid] == example.answers[0].text, example.uid
    assert len(aligned_uids) >= len(examples) // 2 and multi_window > 0
    result = evaluate_qa(examples, features, np.stack(start_rows), np.stack(end_rows), name="xquad")
    assert result.cells[(lang, lang)].exact_match >= 100.0 * len(aligned_uids) / len(examples)
