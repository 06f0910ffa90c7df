"""Teacher and student language groups reported separately, before and after distillation (the paper's
ablation view, Zhao et al. 2024 §4.3).

Per group (``teachers``, ``students``, ``all``) the summary of
:func:`xdist.tasks.classification.metrics.disparity` over the group's languages: macro accuracy, std,
max–min, worst language, and the transfer gap = pivot accuracy − mean of the group's other languages.
The student group normally lacks the pivot (English is a teacher); its gap is still measured against
the pivot's accuracy when the pivot was evaluated, so "the students' gap" reads as the paper's.
:func:`compare_groups` puts two runs (before = stage 0, after = ALSACE) side by side with the change of
every figure, per group and per language, and the McNemar test per language when the paired
correctness is given.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from xdist.methods.alsace.selection import Selection
from xdist.tasks.classification.metrics import disparity, mcnemar_exact

GROUP_FIGURES = ("macro", "transfer_gap", "std", "max_min", "worst")


def group_disparity(accuracy: Mapping[str, float], selection: Selection, pivot: str = "en") -> dict[str, Any]:
    """``{group: summary}`` for ``teachers``, ``students`` and ``all`` (languages of the selection that
    were evaluated; a group with none is left out)."""
    groups = {"teachers": selection.teachers, "students": selection.students, "all": selection.ranking}
    out: dict[str, Any] = {}
    for name, languages in groups.items():
        scores = {lang: float(accuracy[lang]) for lang in languages if lang in accuracy}
        if not scores:
            continue
        summary = disparity(scores, pivot)
        if pivot not in scores and pivot in accuracy:
            summary["transfer_gap"] = float(accuracy[pivot] - np.mean(list(scores.values())))
        out[name] = {"languages": list(scores), **summary}
    return out


def compare_groups(
    before: Mapping[str, float],
    after: Mapping[str, float],
    selection: Selection,
    *,
    pivot: str = "en",
    correct_before: Mapping[str, Sequence[bool]] | None = None,
    correct_after: Mapping[str, Sequence[bool]] | None = None,
) -> dict[str, Any]:
    """Before/after per group (every :data:`GROUP_FIGURES` value and its change) and per language
    (accuracy before, after, change, group, McNemar's exact p-value when paired correctness is given)."""
    groups_before = group_disparity(before, selection, pivot)
    groups_after = group_disparity(after, selection, pivot)
    groups: dict[str, Any] = {}
    for name in groups_before.keys() & groups_after.keys():
        row: dict[str, Any] = {"languages": groups_after[name]["languages"]}
        for figure in GROUP_FIGURES:
            a, b = groups_before[name].get(figure), groups_after[name].get(figure)
            row[figure] = {"before": a, "after": b, "change": None if a is None or b is None else b - a}
        groups[name] = row
    languages: dict[str, Any] = {}
    for lang in selection.ranking:
        if lang not in before or lang not in after:
            continue
        entry = {"group": "teachers" if lang in selection.teachers else "students", "before": before[lang],
                 "after": after[lang], "change": after[lang] - before[lang]}  # fmt: skip
        if correct_before is not None and correct_after is not None and lang in correct_before:
            test = mcnemar_exact(correct_before[lang], correct_after[lang])
            entry["mcnemar"] = {"only_before": test.only_a, "only_after": test.only_b, "p_value": test.p_value}
        languages[lang] = entry
    order = [name for name in ("teachers", "students", "all") if name in groups]
    return {"pivot": pivot, "groups": {name: groups[name] for name in order}, "languages": languages}


def groups_markdown(comparison: Mapping[str, Any]) -> str:
    """The :func:`compare_groups` result as two Markdown tables (groups, then languages)."""

    def number(value: Any) -> str:
        return "–" if value is None else f"{value:.2f}"

    lines = ["| group | languages | figure | before | after | change |", "|---|---|---|---|---|---|"]
    for name, row in comparison["groups"].items():
        for figure in GROUP_FIGURES:
            cell = row[figure]
            lines.append(f"| {name} | {len(row['languages'])} | {figure} | {number(cell['before'])} | "
                         f"{number(cell['after'])} | {number(cell['change'])} |")  # fmt: skip
    lines += ["", "| language | group | before | after | change | McNemar p |", "|---|---|---|---|---|---|"]
    for lang, entry in comparison["languages"].items():
        p = entry.get("mcnemar", {}).get("p_value")
        lines.append(f"| {lang} | {entry['group']} | {number(entry['before'])} | {number(entry['after'])} | "
                     f"{number(entry['change'])} | {'–' if p is None else f'{p:.3g}'} |")  # fmt: skip
    return "\n".join(lines) + "\n"


def compare_runs_by_group(comparison: Any, selection: Selection) -> dict[str, dict[str, Any]]:
    """For an ``xdist compare`` result (:class:`xdist.compare.Comparison`): set → run → :func:`compare_groups`
    of that run (after) against the baseline (before). Per-language accuracy is the set's group metric,
    McNemar's pairs are the examples of the language present in both runs (paired by uid)."""
    out: dict[str, dict[str, Any]] = {}
    for set_name, set_comparison in comparison.sets.items():
        base = set_comparison.base
        metric, paired = base.view.group_metric, base.paired.metric
        before = {g: scores[metric] for g, scores in base.groups.items() if metric in scores}
        pivot = base.summary.get("pivot") or "en"
        for run, result in set_comparison.results.items():
            if run == set_comparison.baseline:
                continue
            after = {g: scores[metric] for g, scores in result.groups.items() if metric in scores}
            correct_before: dict[str, list[bool]] = {}
            correct_after: dict[str, list[bool]] = {}
            for uid, scores in base.examples.items():
                if uid in result.examples:
                    group = base.example_groups[uid]
                    correct_before.setdefault(group, []).append(bool(scores[paired]))
                    correct_after.setdefault(group, []).append(bool(result.examples[uid][paired]))
            out.setdefault(set_name, {})[run] = compare_groups(
                before, after, selection, pivot=pivot, correct_before=correct_before, correct_after=correct_after
            )
    return out


def groups_report_markdown(by_set: Mapping[str, Mapping[str, Any]], baseline: str, selection: Selection) -> str:
    """:func:`compare_runs_by_group` as Markdown: one section per set and run."""
    lines = [f"## Teacher and student groups (selection: {selection.mode}; teachers {', '.join(selection.teachers)};"
             f" students {', '.join(selection.students) or '-'})", ""]  # fmt: skip
    for set_name, runs in by_set.items():
        for run, comparison in runs.items():
            lines += [f"### {set_name}: {run} (after) vs {baseline} (before)", "", groups_markdown(comparison)]
    return "\n".join(lines)
