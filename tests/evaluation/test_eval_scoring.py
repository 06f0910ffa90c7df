"""Which rules score an eval set (``eval.sets[].metric``): XQuAD by the SQuAD v1.1 script, MLQA by MLQA's.

The oracle is the official SQuAD v1.1 ``evaluate-v1.1.py`` logic, written out below as the script has it
(normalize_answer, f1_score, exact_match_score, max over ground truths, mean x 100), on hand-made Chinese,
German and Spanish cells where SQuAD's and MLQA's rules disagree.
"""

from __future__ import annotations

import re
import string
from collections import Counter

import pytest

from xdist.config import ConfigError, SourceConfig, load_config
from xdist.evaluation import evaluate_predictions
from xdist.tasks.qa.examples import Answer, QAExample


def official_normalize_answer(s):
    def remove_articles(text):
        return re.sub(r"\b(a|an|the)\b", " ", text)

    def white_space_fix(text):
        return " ".join(text.split())

    def remove_punc(text):
        exclude = set(string.punctuation)
        return "".join(ch for ch in text if ch not in exclude)

    return white_space_fix(remove_articles(remove_punc(s.lower())))


def official_f1_score(prediction, ground_truth):
    prediction_tokens = official_normalize_answer(prediction).split()
    ground_truth_tokens = official_normalize_answer(ground_truth).split()
    common = Counter(prediction_tokens) & Counter(ground_truth_tokens)
    num_same = sum(common.values())
    if num_same == 0:
        return 0
    precision = 1.0 * num_same / len(prediction_tokens)
    recall = 1.0 * num_same / len(ground_truth_tokens)
    return (2 * precision * recall) / (precision + recall)


def official_exact_match_score(prediction, ground_truth):
    return official_normalize_answer(prediction) == official_normalize_answer(ground_truth)


def official_cell_scores(cases):
    f1 = sum(max(official_f1_score(p, g) for g in golds) for p, golds in cases) / len(cases)
    em = sum(max(official_exact_match_score(p, g) for g in golds) for p, golds in cases) / len(cases)
    return 100.0 * em, 100.0 * f1


# (prediction, gold answers) per context language; chosen where SQuAD's and MLQA's rules part ways.
CASES = {
    "zh": [("北京大学", ["北京大学。"]), ("北京", ["北京大学"]), ("《红楼梦》", ["红楼梦", "《红楼梦》的作者"]),
           ("1949年", ["1949 年"])],
    "de": [("der Hund", ["Hund"]), ("die Stadt Berlin", ["Berlin"]), ("„Faust“", ["Faust"]), ("ein Jahr", ["Jahr"])],
    "es": [("¿el año 1990?", ["1990"]), ("la casa", ["casa"]), ("los reyes", ["reyes católicos"]),
           ("«Don Quijote»", ["Don Quijote"])],
}


def examples_and_predictions():
    examples, predictions = [], {}
    for lang, cases in CASES.items():
        for i, (prediction, golds) in enumerate(cases):
            context = " ".join(golds) + " ..."
            answers = tuple(Answer(text=g, start=context.index(g)) for g in golds)
            example = QAExample(id=f"{lang}{i}", question="?", question_lang="en", context=context,
                                context_lang=lang, answers=answers)
            examples.append(example)
            predictions[example.uid] = prediction
    return examples, predictions


def test_xquad_defaults_to_squad_v11_scoring_and_matches_the_official_logic():
    source = SourceConfig(name="xquad", format="xquad", path="xquad")
    assert source.scoring == "squad"
    examples, predictions = examples_and_predictions()
    result = evaluate_predictions(examples, predictions, name="xquad", scheme=source.scoring)
    for cell in result.cells.values():
        expected_em, expected_f1 = official_cell_scores(CASES[cell.context_lang])
        assert cell.normalizer == "squad-v1.1"
        assert cell.exact_match == pytest.approx(expected_em, abs=1e-9), cell.context_lang
        assert cell.f1 == pytest.approx(expected_f1, abs=1e-9), cell.context_lang
    # MLQA's rules give different numbers on these cells: the choice of metric matters here.
    mlqa = evaluate_predictions(examples, predictions, name="xquad", scheme="mlqa")
    for squad_cell, mlqa_cell in zip(result.cells.values(), mlqa.cells.values(), strict=True):
        assert mlqa_cell.f1 > squad_cell.f1 + 10, squad_cell.context_lang


def test_metric_defaults_by_format_and_explicit_choice(tmp_path):
    assert SourceConfig(name="m", format="mlqa", path="mlqa/test").scoring == "mlqa"
    assert SourceConfig(name="t", format="tydiqa", path="t.json").scoring == "squad"
    assert SourceConfig(name="x", format="xquad", path="xquad", metric="mlqa").scoring == "mlqa"
    config = tmp_path / "c.yaml"
    config.write_text("eval:\n  sets:\n    - {name: x, format: xquad, path: xquad, metric: official}\n")
    with pytest.raises(ConfigError, match=r"sets\[0\]\.metric.*expected .squad. or .mlqa. or null"):
        load_config(config)
