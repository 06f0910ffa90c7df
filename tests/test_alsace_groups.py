"""Teacher/student group disparity before and after distillation, against hand-computed values."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.stats import binomtest

from xdist.methods.alsace.groups import compare_groups, group_disparity, groups_markdown
from xdist.methods.alsace.selection import select_teachers


def selection():
    return select_teachers(["en", "de", "fr", "sw", "ur"], mode="teachers", teachers=["en", "de", "fr"])


def test_group_disparity_by_hand():
    accuracy = {"en": 80.0, "de": 70.0, "fr": 72.0, "sw": 50.0, "ur": 54.0}
    groups = group_disparity(accuracy, selection())
    assert groups["teachers"]["languages"] == ["en", "de", "fr"]
    assert groups["teachers"]["macro"] == pytest.approx(74.0)
    assert groups["teachers"]["transfer_gap"] == pytest.approx(80 - 71)
    assert groups["teachers"]["std"] == pytest.approx(np.std([80, 70, 72]))
    assert groups["students"]["macro"] == pytest.approx(52.0)
    assert groups["students"]["transfer_gap"] == pytest.approx(80 - 52)  # against the pivot, outside the group
    assert groups["students"]["max_min"] == pytest.approx(4.0) and groups["students"]["worst_language"] == "sw"
    assert groups["all"]["transfer_gap"] == pytest.approx(80 - np.mean([70, 72, 50, 54]))
    assert "students" not in group_disparity({"en": 1.0, "de": 2.0}, selection())


def test_before_after_with_mcnemar():
    before = {"en": 80.0, "de": 70.0, "fr": 72.0, "sw": 50.0, "ur": 54.0}
    after = {"en": 79.0, "de": 71.0, "fr": 72.0, "sw": 56.0, "ur": 57.0}
    rng = np.random.default_rng(0)
    correct_before = {lang: rng.random(40) < 0.5 for lang in before}
    correct_after = {lang: rng.random(40) < 0.6 for lang in before}
    comparison = compare_groups(before, after, selection(), correct_before=correct_before,
                                correct_after=correct_after)  # fmt: skip
    students = comparison["groups"]["students"]
    assert students["macro"]["change"] == pytest.approx(56.5 - 52.0)
    assert students["transfer_gap"]["after"] == pytest.approx(79 - 56.5)
    assert comparison["languages"]["sw"]["change"] == pytest.approx(6.0)
    assert comparison["languages"]["sw"]["group"] == "students"
    a, b = correct_before["ur"], correct_after["ur"]
    only_before, only_after = int((a & ~b).sum()), int((~a & b).sum())
    expected = binomtest(only_before, only_before + only_after, 0.5).pvalue
    assert comparison["languages"]["ur"]["mcnemar"]["p_value"] == pytest.approx(expected)
    text = groups_markdown(comparison)
    assert "| students | 2 | macro | 52.00 | 56.50 | 4.50 |" in text
    assert text.count("\n| ") == 3 * 5 + 5 + 1  # 15 group rows, 5 language rows, the second header


def classification_result(name: str, correct: dict[str, list[int]]):
    """A classification-shaped EvalResult: accuracy per language from per-example correctness."""
    from xdist.evaluation.result import EvalResult, PairedSpec, View

    examples, groups_of = {}, {}
    for lang, values in correct.items():
        for i, value in enumerate(values):
            uid = f"xnli:{i}/{lang}"
            examples[uid], groups_of[uid] = {"correct": float(value)}, lang
    groups = {lang: {"accuracy": 100.0 * np.mean(v), "count": len(v)} for lang, v in correct.items()}
    view = View(columns={"macro": "macro"}, headline=("macro",), group_metric="accuracy", group_label="acc",
                group_kind="language")  # fmt: skip
    summary = {"macro": float(np.mean([g["accuracy"] for g in groups.values()])), "pivot": "en"}
    return EvalResult(name=name, task="classification", summary=summary, groups=groups, examples=examples,
                      example_groups=groups_of, paired=PairedSpec("correct", "mcnemar"), view=view)  # fmt: skip


def test_groups_of_an_xdist_compare_result(tmp_path):
    from pathlib import Path

    from xdist.compare import Report, compare_reports
    from xdist.methods.alsace.groups import compare_runs_by_group, groups_report_markdown

    rng = np.random.default_rng(1)
    langs = ["en", "de", "fr", "sw", "ur"]
    before = {lang: rng.integers(0, 2, 30).tolist() for lang in langs}
    after = {lang: rng.integers(0, 2, 30).tolist() for lang in langs}
    reports = [Report("stage0", Path(tmp_path), {"xnli": classification_result("xnli", before)}),
               Report("alsace", Path(tmp_path), {"xnli": classification_result("xnli", after)})]  # fmt: skip
    comparison = compare_reports(reports)
    by_set = compare_runs_by_group(comparison, selection())
    result = by_set["xnli"]["alsace"]
    students_before = np.mean([100 * np.mean(before[x]) for x in ("sw", "ur")])
    students_after = np.mean([100 * np.mean(after[x]) for x in ("sw", "ur")])
    assert result["groups"]["students"]["macro"]["change"] == pytest.approx(students_after - students_before)
    a, b = np.array(before["sw"], bool), np.array(after["sw"], bool)
    n_a, n_b = int((a & ~b).sum()), int((~a & b).sum())
    assert result["languages"]["sw"]["mcnemar"]["only_before"] == n_a
    assert result["languages"]["sw"]["mcnemar"]["p_value"] == pytest.approx(binomtest(n_a, n_a + n_b, 0.5).pvalue)
    assert "### xnli: alsace (after) vs stage0 (before)" in groups_report_markdown(by_set, "stage0", selection())


def test_compare_command_with_a_selection(tmp_path, capsys):
    """``xdist compare BEFORE AFTER --selection FILE --out DIR`` prints and writes the group view."""
    import json

    from xdist.cli import main
    from xdist.evaluation import write_report
    from xdist.methods.alsace.selection import write_selection

    rng = np.random.default_rng(2)
    langs = ["en", "de", "fr", "sw", "ur"]
    for name in ("stage0", "alsace"):
        correct = {lang: rng.integers(0, 2, 20).tolist() for lang in langs}
        write_report({"xnli": classification_result("xnli", correct)}, tmp_path / name, heatmap=False)
    write_selection(selection(), tmp_path / "selection")
    status = main(["compare", str(tmp_path / "stage0"), str(tmp_path / "alsace"), "--selection",
                   str(tmp_path / "selection" / "selection.json"), "--out", str(tmp_path / "compare")])  # fmt: skip
    assert status == 0
    printed = capsys.readouterr().out
    assert "## Teacher and student groups (selection: teachers" in printed and "| students | 2 | macro |" in printed
    written = json.loads((tmp_path / "compare" / "groups.json").read_text())
    assert set(written["xnli"]["alsace"]["groups"]) == {"teachers", "students", "all"}
    assert (tmp_path / "compare" / "groups.md").read_text() in printed
