"""Classification metrics against hand-computed cases; one set's EvalResult, report files and chart.
McNemar's exact test against SciPy's binomial test, and through ``xdist compare`` on two classification
results."""

from __future__ import annotations

import json

import numpy as np
import pytest
from scipy.stats import binomtest

from xdist.tasks.classification.examples import ClassificationExample
from xdist.tasks.classification.metrics import disparity, language_scores, mcnemar_exact
from xdist.tasks.classification.scoring import score_set


def test_disparity_by_hand():
    summary = disparity({"en": 80.0, "de": 70.0, "sw": 55.0, "zh": 65.0})
    assert summary["macro"] == pytest.approx(67.5)
    assert summary["transfer_gap"] == pytest.approx(80.0 - (70 + 55 + 65) / 3)  # 16.666...
    # population std: deviations 12.5, 2.5, -12.5, -2.5 -> sqrt((156.25*2 + 6.25*2) / 4)
    assert summary["std"] == pytest.approx(((156.25 * 2 + 6.25 * 2) / 4) ** 0.5)
    assert summary["max_min"] == 25.0 and summary["worst_language"] == "sw" and summary["worst"] == 55.0
    assert disparity({"de": 60.0, "fr": 50.0}, pivot="fr")["transfer_gap"] == -10.0
    assert disparity({"de": 60.0, "fr": 50.0})["transfer_gap"] is None  # no pivot
    assert disparity({"en": 60.0})["transfer_gap"] is None  # nothing to compare with
    assert disparity({"a": 50.0, "b": 40.0, "c": 40.0})["worst_language"] == "b"  # ties: first


def test_language_scores_skip_unlabelled_and_keep_order():
    scores = language_scores(
        predictions=[0, 1, 2, 0, 1, 1, 2], labels=[0, 1, 1, None, 1, 0, None],
        languages=["en", "en", "en", "en", "fr", "fr", "sw"], order=["sw", "fr", "en"],
    )
    assert list(scores.accuracy) == ["fr", "en"]  # sw has no labelled example
    assert scores.accuracy["en"] == pytest.approx(200 / 3) and scores.accuracy["fr"] == 50.0
    assert scores.counts == {"fr": 2, "en": 3}
    assert scores.summary["transfer_gap"] == pytest.approx(200 / 3 - 50)


def test_mcnemar_exact_matches_scipy_binomtest():
    rng = np.random.default_rng(12345)
    for n in (1, 2, 7, 30, 101, 500):
        for bias in (0.5, 0.6, 0.9):
            a, b = rng.random(n) < bias, rng.random(n) < 0.55
            result = mcnemar_exact(a, b)
            discordant = result.only_a + result.only_b
            assert result.only_a == int((a & ~b).sum()) and result.only_b == int((~a & b).sum())
            assert result.both + result.neither + discordant == n
            expected = 1.0 if discordant == 0 else binomtest(result.only_a, discordant, 0.5).pvalue
            assert result.p_value == pytest.approx(expected, rel=1e-12, abs=1e-300)
    assert mcnemar_exact([False] * 6 + [True] * 4, [True] * 10).p_value == pytest.approx(2 / 64)  # b=0, c=6
    with pytest.raises(ValueError, match="equal length"):
        mcnemar_exact([True], [True, False])


def ex(i, lang, label):
    return ClassificationExample(instance=f"s:{i}", language=lang, text_a="a", text_b="b", label=label)


def test_a_set_scored_by_hand_into_its_result_and_report(tmp_path):
    from xdist.evaluation import write_report

    examples = [ex(0, "en", 0), ex(1, "en", 2), ex(0, "de", 0), ex(1, "de", 1), ex(2, "de", None)]
    logits = np.array([[2.0, 1, 0], [0, 0, 1], [0, 3, 0], [1, 1, 0], [0, 0, 5]])  # row 3: a tie -> class 0
    scored = score_set("x", examples, logits, ["e", "n", "c"], pivot="en")
    assert scored.predictions.tolist() == [0, 2, 1, 0, 2]
    result = scored.result()
    assert result.groups == {"en": {"accuracy": 100.0, "num_examples": 2}, "de": {"accuracy": 0.0, "num_examples": 2}}
    assert result.summary["transfer_gap"] == 100.0 and result.summary["macro"] == 50.0
    assert result.summary["worst_language"] == "de" and result.summary["num_examples"] == 4
    assert result.examples == {"s:0/en": {"correct": 1.0}, "s:1/en": {"correct": 1.0}, "s:0/de": {"correct": 0.0},
                               "s:1/de": {"correct": 0.0}}  # the unlabelled row is not scored
    assert result.paired.test == "mcnemar" and result.view.group_kind == "language"
    files = write_report(result, tmp_path)
    assert files.heatmaps["x"].name == "x.png" and files.heatmaps["x"].parent.name == "charts"
    de = json.loads((tmp_path / "predictions" / "x" / "de.json").read_text())
    assert de["s:1/de"] == {"prediction": "e", "label": "n", "correct": False,
                            "probabilities": pytest.approx([0.422319, 0.422319, 0.155362], abs=1e-6)}
    assert de["s:2/de"]["label"] is None and de["s:2/de"]["correct"] is None
    metrics = json.loads(files.metrics.read_text())
    assert metrics["sets"]["x"]["task"] == "classification" and metrics["sets"]["x"]["class_names"] == ["e", "n", "c"]


def test_two_runs_compare_with_mcnemar_per_language(tmp_path):
    from xdist.compare import compare_reports, load_report
    from xdist.evaluation import write_report

    rng = np.random.default_rng(7)
    examples = [ex(i, lang, int(rng.integers(3))) for lang in ("en", "de", "sw") for i in range(40)]
    gold = np.array([e.label for e in examples])
    runs = {}
    for name, accuracy in (("base", 0.45), ("better", 0.75)):
        right = rng.random(len(examples)) < accuracy
        predictions = np.where(right, gold, (gold + 1) % 3)
        write_report(score_set("xnli", examples, np.eye(3)[predictions], ["e", "n", "c"]).result(), tmp_path / name)
        runs[name] = predictions == gold
    comparison = compare_reports([load_report(tmp_path / "base"), load_report(tmp_path / "better")], per_cell=True)
    tests = comparison.sets["xnli"].tests["better"]
    for scope, rows in (("all", slice(None)), ("en", slice(0, 40)), ("sw", slice(80, 120))):
        a, b = runs["base"][rows], runs["better"][rows]
        only_a, only_b = int((a & ~b).sum()), int((~a & b).sum())
        test = tests.scopes[scope] if scope == "all" else tests.groups[scope]
        assert test.n_nonzero == only_a + only_b
        assert test.p_value == pytest.approx(binomtest(only_a, only_a + only_b, 0.5).pvalue, rel=1e-12)
    markdown = comparison.to_markdown()
    assert "McNemar" in markdown and "macro acc" in markdown and "| sw |" in markdown


def test_branched_runs_report_supervised_and_zero_shot_apart_and_compare_with_an_ordinary_baseline(tmp_path):
    from xdist.compare import compare_reports, load_report
    from xdist.evaluation import write_report

    rng = np.random.default_rng(11)
    languages = ("en", "de", "sw", "zh")
    examples = [ex(i, lang, int(rng.integers(3))) for lang in languages for i in range(30)]
    gold = np.array([e.label for e in examples])
    runs = {}
    for name, accuracy, supervised in (("base", 0.4, None), ("mblm", 0.7, ["en", "zh"])):
        right = rng.random(len(examples)) < accuracy
        predictions = np.where(right, gold, (gold + 2) % 3)
        scored = score_set("xnli", examples, np.eye(3)[predictions], ["e", "n", "c"], supervised=supervised)
        write_report(scored.result(), tmp_path / name)
        runs[name] = (predictions == gold, scored)
    base, mblm = runs["base"][1].result(), runs["mblm"][1].result()
    assert "supervised_macro" not in base.summary and set(base.paired.scopes) == {"all"}
    accuracy = {lang: group["accuracy"] for lang, group in mblm.groups.items()}
    assert mblm.summary["supervised_macro"] == pytest.approx((accuracy["en"] + accuracy["zh"]) / 2)
    assert mblm.summary["zero_shot_macro"] == pytest.approx((accuracy["de"] + accuracy["sw"]) / 2)
    assert mblm.paired.scopes["zero_shot"].groups == ("de", "sw")

    # The baseline first: its test, plus the MBLM run's scopes (their languages are groups of both runs).
    comparison = compare_reports([load_report(tmp_path / "base"), load_report(tmp_path / "mblm")])
    tests = comparison.sets["xnli"].tests["mblm"].scopes
    assert list(tests) == ["all", "supervised", "zero_shot"]
    rows = np.isin([e.language for e in examples], ["de", "sw"])
    a, b = runs["base"][0][rows], runs["mblm"][0][rows]
    only_a, only_b = int((a & ~b).sum()), int((~a & b).sum())
    assert tests["zero_shot"].n_nonzero == only_a + only_b
    assert tests["zero_shot"].p_value == pytest.approx(binomtest(only_a, only_a + only_b, 0.5).pvalue, rel=1e-12)
    summary = comparison.sets["xnli"].summary()
    base_accuracy = {lang: group["accuracy"] for lang, group in base.groups.items()}
    assert summary["base"]["zero_shot_macro"] == pytest.approx((base_accuracy["de"] + base_accuracy["sw"]) / 2)
    assert summary["mblm"]["supervised_macro"] == mblm.summary["supervised_macro"]
    markdown = comparison.to_markdown()
    assert "zero-shot acc" in markdown and "zero-shot languages (de, sw)" in markdown
