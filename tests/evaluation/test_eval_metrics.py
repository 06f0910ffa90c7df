"""Cell EM/F1, G-XLT/XLT arithmetic and counts on hand-built matrices (expected values by hand)."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from xdist.evaluation import EvalSummary, evaluate_predictions, evaluate_qa
from xdist.tasks.qa.examples import Answer, QAExample, QAFeature


def ex(qid: str, q: str, c: str, *golds: str) -> QAExample:
    context = " ".join(golds) + " filler"
    answers = tuple(Answer(g, context.index(g)) for g in golds)
    return QAExample(id=qid, question="?", question_lang=q, context=context, context_lang=c, answers=answers)


def build_2x2():
    examples = [
        ex("1", "en", "en", "Denver Broncos"),
        ex("2", "en", "en", "red fox jumped"),
        ex("3", "en", "de", "die Hauptstadt"),
        ex("4", "de", "en", "Oslo"),
        ex("5", "de", "en", "Paris"),
        ex("6", "de", "de", "Berlin"),
    ]
    predictions = {
        "1/en-en": "Denver Broncos",  # EM 1, F1 1
        "2/en-en": "big red fox",     # [big red fox] vs [red fox jumped]: P = R = 2/3 → F1 2/3, EM 0
        "3/en-de": "Hauptstadt",      # MLQA de drops "die": EM 1, F1 1
        # "4/de-en" unanswered: 0, 0
        "5/de-en": "Paris",           # EM 1, F1 1
        "6/de-de": "",                # empty: 0, 0
    }
    return examples, predictions


def test_2x2_cells_g_xlt_xlt_and_counts():
    examples, predictions = build_2x2()
    result = evaluate_predictions(examples, predictions, name="toy", languages=["en", "de"])
    cells = result.cells
    assert list(cells) == [("en", "en"), ("en", "de"), ("de", "en"), ("de", "de")]
    assert cells[("en", "en")].exact_match == pytest.approx(50.0)
    assert cells[("en", "en")].f1 == pytest.approx(100 * (1 + 2 / 3) / 2)  # 83.33
    assert (cells[("en", "de")].exact_match, cells[("en", "de")].f1) == (100.0, 100.0)
    assert (cells[("de", "en")].exact_match, cells[("de", "en")].f1) == (50.0, 50.0)
    assert (cells[("de", "de")].exact_match, cells[("de", "de")].f1) == (0.0, 0.0)
    assert [c.count for c in cells.values()] == [2, 1, 2, 1]
    assert [c.unanswered for c in cells.values()] == [0, 0, 1, 0]
    assert [c.empty_predictions for c in cells.values()] == [0, 0, 0, 1]
    assert cells[("en", "de")].normalizer == "mlqa-v1:de"
    # G-XLT: mean of 4 cells. EM (50 + 100 + 50 + 0) / 4 = 50; F1 (83.33 + 100 + 50 + 0) / 4 = 58.33.
    assert result.g_xlt.exact_match == pytest.approx(50.0)
    assert result.g_xlt.f1 == pytest.approx((250 / 3 + 150) / 4)
    assert result.g_xlt.cells == 4
    # XLT: diagonal only. EM (50 + 0) / 2 = 25; F1 83.33 / 2 = 41.67.
    assert result.xlt.exact_match == pytest.approx(25.0)
    assert result.xlt.f1 == pytest.approx(250 / 6)
    assert result.xlt.cells == 2
    np.testing.assert_allclose(result.matrix("f1"), [[250 / 3, 100.0], [50.0, 0.0]])
    np.testing.assert_allclose(result.matrix("exact_match"), [[50.0, 100.0], [50.0, 0.0]])
    assert result.example_f1() == pytest.approx({"1/en-en": 1.0, "2/en-en": 2 / 3, "3/en-de": 1.0, "4/de-en": 0.0,
                                                 "5/de-en": 1.0, "6/de-de": 0.0})
    assert result.predictions_by_cell()[("de", "en")] == {"5": "Paris"}  # unanswered id 4 left out


def test_squad_scheme_changes_german_cell():
    examples, predictions = build_2x2()
    result = evaluate_predictions(examples, predictions, scheme="squad")
    # SQuAD keeps "die": [hauptstadt] vs [die, hauptstadt] → EM 0, P = 1, R = 1/2, F1 = 2/3.
    cell = result.cells[("en", "de")]
    assert cell.exact_match == 0.0 and cell.f1 == pytest.approx(200 / 3)
    assert cell.normalizer == "squad-v1.1"


def test_normaliser_follows_the_context_language():
    examples = [ex("1", "en", "zh", "北京"), ex("1", "zh", "en", "北京")]
    predictions = {"1/en-zh": "北京大学", "1/zh-en": "北京大学"}
    result = evaluate_predictions(examples, predictions)
    # zh context: characters [北 京 大 学] vs [北 京] → P = 1/2, R = 1 → F1 = 2/3.
    assert result.cells[("en", "zh")].f1 == pytest.approx(200 / 3)
    # en context: whitespace tokens [北京大学] vs [北京] → no overlap.
    assert result.cells[("zh", "en")].f1 == 0.0
    assert result.xlt is None  # no diagonal cell


def test_3x3_with_missing_cell():
    gold = "w1 w2 w3 w4"
    # F1 by prediction: exact → 1; "w1" → P 1, R 1/4, F1 2/5; "w1 w2" → P 1, R 1/2, F1 2/3; "x" → 0.
    plan = {("en", "en"): gold, ("en", "es"): "w1", ("en", "zh"): "w1 w2",
            ("es", "en"): "x", ("es", "es"): gold, ("es", "zh"): "w1",
            ("zh", "en"): "w1 w2", ("zh", "zh"): "w1"}  # (zh, es) missing
    examples = [ex("q", q, c, gold) for q, c in plan]
    predictions = {f"q/{q}-{c}": text for (q, c), text in plan.items()}
    result = evaluate_predictions(examples, predictions, languages=["en", "es", "zh"])
    assert len(result.cells) == 8 and ("zh", "es") not in result.cells
    # G-XLT F1 = (100 + 40 + 66.67 + 0 + 100 + 40 + 66.67 + 40) / 8 = 453.33 / 8
    assert result.g_xlt.f1 == pytest.approx((100 + 40 + 200 / 3 + 0 + 100 + 40 + 200 / 3 + 40) / 8)
    assert result.g_xlt.exact_match == pytest.approx(200 / 8)
    assert result.g_xlt.cells == 8
    # XLT = (en-en 100, es-es 100, zh-zh 40) / 3
    assert result.xlt.f1 == pytest.approx(80.0)
    assert result.xlt.exact_match == pytest.approx(200 / 3)
    matrix = result.matrix("f1")
    assert math.isnan(matrix[2, 1]) and np.isnan(matrix).sum() == 1
    assert matrix[1, 2] == pytest.approx(40.0) and matrix[0, 2] == pytest.approx(200 / 3)
    data = json.loads(json.dumps(result.to_json()))
    assert data["matrix"]["f1"][2][1] is None
    assert data["num_cells"] == 8 and data["num_examples"] == 8
    assert data["xlt"]["cells"] == 3 and data["g_xlt"]["f1"] == pytest.approx(result.g_xlt.f1)


def test_language_order_defaults_to_first_appearance_and_appends_unlisted():
    examples = [ex("a", "zh", "zh", "x"), ex("b", "en", "en", "x"), ex("c", "en", "zh", "x")]
    assert evaluate_predictions(examples, {}).languages == ("zh", "en")
    assert evaluate_predictions(examples, {}, languages=["en"]).languages == ("en", "zh")


def test_bad_inputs():
    examples, predictions = build_2x2()
    with pytest.raises(ValueError, match="unknown examples, e.g. 'nope/en-en'"):
        evaluate_predictions(examples, {**predictions, "nope/en-en": "x"})
    no_answer = QAExample("z", "?", "en", "ctx", "en", (), source="set:file.json")
    with pytest.raises(ValueError, match="'z/en-en'.*no gold answer"):
        evaluate_predictions([no_answer], {})
    with pytest.raises(ValueError, match="no examples"):
        evaluate_predictions([], {})
    duplicate = QAExample("1", "?", "en", "Denver Broncos x", "en", (Answer("x", 15),))
    with pytest.raises(ValueError, match="duplicate example uid"):
        evaluate_predictions(examples + [duplicate], {})
    with pytest.raises(ValueError, match="metric"):
        evaluate_predictions(examples, predictions).matrix("accuracy")


def test_summary_of_several_sets_and_scalars():
    examples, predictions = build_2x2()
    summary = EvalSummary()
    summary.add(evaluate_predictions(examples, predictions, name="toy"))
    diagonal = [e for e in examples if e.question_lang == e.context_lang]
    summary.add(evaluate_predictions(diagonal, predictions={"1/en-en": "Denver Broncos"}, name="diag"))
    with pytest.raises(ValueError, match="already"):
        summary.add(evaluate_predictions(diagonal, {}, name="diag"))
    table = summary.table()
    assert table["toy"]["g_xlt_em"] == pytest.approx(50.0)
    # diag: en-en (EM 50, F1 50: example 2 unanswered), de-de (0, 0) → G-XLT = XLT = 25.
    assert table["diag"]["g_xlt_f1"] == pytest.approx(25.0) and table["diag"]["xlt_f1"] == pytest.approx(25.0)
    assert table["diag"]["num_cells"] == 2 and table["diag"]["num_examples"] == 3
    scalars = summary.sets["toy"].scalars()
    assert scalars["eval/toy/g_xlt_f1"] == pytest.approx(summary.sets["toy"].g_xlt.f1)
    assert scalars["eval/toy/f1/en-de"] == 100.0 and scalars["eval/toy/em/de-en"] == 50.0
    assert len(scalars) == 4 + 2 * 4
    json.dumps(summary.to_json())  # plain data all the way down


def test_evaluate_qa_decodes_then_scores():
    example = QAExample("q", "?", "en", "The cat sat on the mat", "en", (Answer("the mat", 15),))
    offsets = [None, None, (0, 3), (4, 7), (8, 11), (12, 14), (15, 18), (19, 22), None]
    feature = QAFeature(example.uid, 0, [0] * 9, [1] * 9, [0] * 9, offsets, 0, 0)
    start = np.full((1, 9), -5.0)
    end = np.full((1, 9), -5.0)
    start[0, 7], end[0, 7] = 3.0, 3.0  # "mat"
    result = evaluate_qa([example], [feature], start, end, name="one", n_best=5, max_answer_length=10)
    # "mat" vs gold "the mat" → both normalise to "mat": EM 100, F1 100.
    assert (result.cells[("en", "en")].exact_match, result.cells[("en", "en")].f1) == (100.0, 100.0)
    assert result.examples["q/en-en"].prediction == "mat"
    assert result.decode.to_json() == {"n_best": 5, "max_answer_length": 10, "no_valid_span": 0, "no_features": 0}
