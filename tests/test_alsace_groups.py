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
