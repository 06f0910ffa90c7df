"""Compare the evaluation reports of several runs: summary tables, per-group scores and significance tests.

Works for every task: it reads only the task-agnostic :class:`~xdist.evaluation.result.EvalResult` of each
set (``metrics.json`` + ``example_scores/<set>.json``, written by :func:`xdist.evaluation.write_report`) —
``xdist eval --out`` — or of a training output directory, whose final evaluation is ``<dir>/eval/final``.
One run is the baseline (default: the first); every other run is compared with it per evaluation set:

- the summary columns of the set's view (QA: G-XLT and XLT F1/EM) of every run and the difference of the
  headline ones from the baseline;
- the group metric of every group (QA: F1 per (question language, context language) cell), side by side,
  and, when the result has a matrix, the difference matrix as a heatmap;
- a paired test per scope of the result's :class:`~xdist.evaluation.result.PairedSpec`, examples paired by
  uid: QA: a Wilcoxon signed-rank test on example-level F1 (Carrino et al., alpha 0.05) over all examples
  (``g_xlt``) and over the diagonal cells' examples (``xlt``); classification: McNemar's exact test on paired
  correctness; optionally per group.

Zero differences (Wilcoxon). Carrino et al.'s ``src/wilcoxon_test.py`` (ccasimiro88/self-distillation-gxlt-qa)
calls ``scipy.stats.wilcoxon(scores_a, scores_b)`` with scipy's defaults and calls a result significant
when ``p <= alpha``. We make the same call with those defaults spelled out: ``zero_method="wilcox"``
(pairs whose F1 is equal — most of them in QA, e.g. both exactly right or both 0 — are dropped before
ranking), ``correction=False``, two-sided, ``method="auto"``. Two deliberate differences from that
script: pairs are matched by example uid (the script pairs lines of two files by position, and its
example-score files leave unanswered questions out, which can misalign the pairs); and when *every* pair
is tied, the test is not run (scipy then returns a NaN p-value with a warning above 13 pairs and 1.0
below): statistic and p-value are None and the result is "not significant".

McNemar's exact test: with ``b`` = examples only the run gets right and ``c`` = only the baseline,
``p = min(1, 2 * BinomCDF(min(b, c); b + c, 1/2))``; no discordant pair: not run (None, not significant).

The functions that compute (:func:`wilcoxon_paired`, :func:`mcnemar_paired`, :func:`compare_reports`) are
separate from those that read and write files (:func:`load_report`, :func:`write_comparison`);
:func:`run_compare` chains them for ``xdist compare``.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
from matplotlib.figure import Figure
from scipy import stats

from xdist.evaluation import save_heatmap
from xdist.evaluation.report import check_file_name, matrix_figure
from xdist.evaluation.result import METRICS_VERSION, EvalResult, PairedSpec, View, matrix_json, mcnemar_p_value

ZERO_METHOD = "wilcox"
"""scipy's ``zero_method`` for the signed-rank test: tied pairs are dropped (the authors' setting)."""

# A group's score in metrics.json is the mean of its examples' scores × 100; allow float rounding only.
_GROUP_TOLERANCE = 1e-6

TEST_DESCRIPTIONS = {
    "wilcoxon": {"name": "wilcoxon signed-rank", "zero_method": ZERO_METHOD, "correction": False,
                 "alternative": "two-sided"},
    "mcnemar": {"name": "mcnemar exact", "alternative": "two-sided"},
}


# ---------------------------------------------------------------------------------------------------
# Significance tests
# ---------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class PairedTest:
    """A paired test of example scores ``a`` vs ``b`` (differences ``a - b``): Wilcoxon or McNemar."""

    statistic: float | None
    """Wilcoxon: scipy's two-sided statistic (the smaller of the signed-rank sums); McNemar: the smaller
    discordant count. None when the test was not run (every pair tied)."""

    p_value: float | None
    """Two-sided p-value; None when every pair is tied (the test is undefined)."""

    n_pairs: int
    n_nonzero: int
    """Pairs whose scores differ: the ones the test uses (``zero_method="wilcox"`` drops the rest)."""

    mean_difference: float
    """Mean of ``a - b`` over all pairs, in the scores' units (example F1 in [0, 1], correctness 0/1)."""

    alpha: float
    significant: bool
    """``p_value <= alpha`` (the authors' rule); False when the test was not run."""

    def to_json(self) -> dict:
        return {"statistic": self.statistic, "p_value": self.p_value, "n_pairs": self.n_pairs,
                "n_nonzero": self.n_nonzero, "mean_difference": self.mean_difference, "alpha": self.alpha,
                "significant": self.significant}


def _check_alpha(alpha: float) -> float:
    if not (isinstance(alpha, int | float) and 0.0 < alpha < 1.0):
        raise ValueError(f"alpha must be a number in (0, 1), got {alpha!r}")
    return float(alpha)


def _uid_mismatch(a: Sequence[str], b: Sequence[str], a_name: str, b_name: str) -> str | None:
    """A message describing how two uid collections differ, or None if they are the same set."""
    a_set, b_set = set(a), set(b)
    if a_set == b_set:
        return None
    only_a, only_b = sorted(a_set - b_set), sorted(b_set - a_set)
    parts = []
    if only_a:
        parts.append(f"{len(only_a)} uids only in {a_name} (e.g. {only_a[0]!r})")
    if only_b:
        parts.append(f"{len(only_b)} uids only in {b_name} (e.g. {only_b[0]!r})")
    return f"{len(only_a) + len(only_b)} uids differ: " + ", ".join(parts)


def _paired_arrays(a: Mapping[str, float], b: Mapping[str, float]) -> tuple[list[str], np.ndarray, np.ndarray]:
    """The uids, sorted (a fixed order: the statistics do not depend on it, float sums barely do), and both
    score vectors in that order. Both mappings must hold exactly the same, non-empty set of uids."""
    mismatch = _uid_mismatch(list(a), list(b), "a", "b")
    if mismatch:
        raise ValueError(f"paired test needs scores of the same examples: {mismatch}")
    if not a:
        raise ValueError("paired test needs at least one pair of scores")
    uids = sorted(a)
    x = np.array([a[uid] for uid in uids], dtype=np.float64)
    y = np.array([b[uid] for uid in uids], dtype=np.float64)
    return uids, x, y


def wilcoxon_paired(a: Mapping[str, float], b: Mapping[str, float], *, alpha: float = 0.05) -> PairedTest:
    """Wilcoxon signed-rank test of ``a`` vs ``b`` (uid → score), pairing scores by uid.

    Same call as the authors' script (``scipy.stats.wilcoxon`` defaults: ``zero_method="wilcox"``,
    no continuity correction, two-sided, ``method="auto"``); see the module docstring for the
    all-tied case. Both mappings must hold exactly the same uids; scores must be finite.
    """
    alpha = _check_alpha(alpha)
    uids, x, y = _paired_arrays(a, b)
    for values, side in ((x, "a"), (y, "b")):
        if not np.isfinite(values).all():
            bad = uids[int(np.flatnonzero(~np.isfinite(values))[0])]
            raise ValueError(f"paired test: score of {bad!r} in {side} is not a finite number")
    difference = x - y
    n_nonzero = int(np.count_nonzero(difference))
    mean_difference = float(difference.mean())
    if n_nonzero == 0:
        return PairedTest(None, None, len(uids), 0, mean_difference, alpha, False)
    result = stats.wilcoxon(x, y, zero_method=ZERO_METHOD, correction=False, alternative="two-sided",
                            method="auto")
    statistic, p_value = float(result.statistic), float(result.pvalue)
    return PairedTest(statistic, p_value, len(uids), n_nonzero, mean_difference, alpha, p_value <= alpha)


def mcnemar_paired(a: Mapping[str, float], b: Mapping[str, float], *, alpha: float = 0.05) -> PairedTest:
    """McNemar's exact test of paired correctness ``a`` vs ``b`` (uid → 1.0 right / 0.0 wrong).

    ``statistic`` is ``min(b, c)`` of the discordant counts, ``n_nonzero`` their sum (the pairs the test
    uses); with no discordant pair the test is not run (statistic and p-value None, not significant).
    """
    alpha = _check_alpha(alpha)
    uids, x, y = _paired_arrays(a, b)
    for values, side in ((x, "a"), (y, "b")):
        bad = np.flatnonzero((values != 0.0) & (values != 1.0))
        if bad.size:
            raise ValueError(f"McNemar's test: score of {uids[int(bad[0])]!r} in {side} is not 0 or 1")
    only_a, only_b = int(((x == 1) & (y == 0)).sum()), int(((x == 0) & (y == 1)).sum())
    n = only_a + only_b
    mean_difference = float((x - y).mean())
    if n == 0:
        return PairedTest(None, None, len(uids), 0, mean_difference, alpha, False)
    p_value = mcnemar_p_value(only_a, only_b)
    return PairedTest(float(min(only_a, only_b)), p_value, len(uids), n, mean_difference, alpha, p_value <= alpha)


def paired_test(kind: str, a: Mapping[str, float], b: Mapping[str, float], *, alpha: float = 0.05) -> PairedTest:
    """The paired test ``kind`` (``wilcoxon`` or ``mcnemar``, :attr:`PairedSpec.test`) of ``a`` vs ``b``."""
    if kind == "wilcoxon":
        return wilcoxon_paired(a, b, alpha=alpha)
    if kind == "mcnemar":
        return mcnemar_paired(a, b, alpha=alpha)
    raise ValueError(f"unknown paired test {kind!r}; expected 'wilcoxon' or 'mcnemar'")


# ---------------------------------------------------------------------------------------------------
# Reading reports
# ---------------------------------------------------------------------------------------------------


@dataclass
class Report:
    """One run's evaluation, read back from its report directory."""

    name: str
    """Display name of the run (default: the name of the directory given)."""

    path: Path
    """The report directory (holding ``metrics.json``)."""

    sets: dict[str, EvalResult]
    """Set name → result (groups, summary, example scores as written)."""


def _resolve_report_dir(path: Path) -> Path:
    for candidate in (path, path / "eval" / "final", path / "eval"):
        if (candidate / "metrics.json").is_file():
            return candidate
    raise FileNotFoundError(
        f"{path}: no metrics.json here, in eval/final/ (a training run's final evaluation) or in eval/ "
        "(xdist eval's default); expected a report directory or a training output directory")


def _read_json(path: Path) -> object:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise ValueError(f"{path}: not a readable JSON file ({error})") from error


def _field(data: object, key: str, path: Path, where: str, kind: type | tuple[type, ...]) -> object:
    if not isinstance(data, dict) or key not in data:
        raise ValueError(f"{path}: field '{where}{key}' is missing")
    value = data[key]
    if not isinstance(value, kind):
        raise ValueError(f"{path}: field '{where}{key}' has the wrong type ({type(value).__name__})")
    return value


def _load_set(report_dir: Path, set_name: str, summary: dict, metrics_path: Path) -> EvalResult:
    scores_path = report_dir / "example_scores" / f"{set_name}.json"
    if not scores_path.is_file():
        raise FileNotFoundError(f"{scores_path}: missing; the example-level scores of set {set_name!r} are "
                                "needed to compare runs (written by write_report next to metrics.json)")
    scores_json = _read_json(scores_path)
    if not isinstance(scores_json, dict):
        raise ValueError(f"{scores_path}: expected an object {{uid: {{scores..., group}}}}")
    groups = _field(summary, "groups", metrics_path, f"sets.{set_name}.", dict)
    for uid, entry in scores_json.items():
        if not isinstance(entry, dict) or entry.get("group") not in groups:
            raise ValueError(f"{scores_path}: uid {uid!r} names no group of set {set_name!r} in "
                             f"{metrics_path.name} (field 'group')")
        for key, value in entry.items():
            if key != "group" and (isinstance(value, bool) or not isinstance(value, int | float)
                                   or not 0.0 <= value <= 1.0):
                raise ValueError(f"{scores_path}: score '{key}' of {uid!r} must be a number in [0, 1], got {value!r}")
    try:
        result = EvalResult.from_json(summary, scores_json)
    except (KeyError, TypeError, ValueError) as error:
        raise ValueError(f"{metrics_path}: set {set_name!r} is not an evaluation result ({error!r})") from error
    if result.name != set_name:
        raise ValueError(f"{metrics_path}: sets.{set_name} holds the result of set {result.name!r}")

    # The example scores must be the ones the groups were computed from (not another run's or set's): a group
    # metric named like an example score is its mean over the group's examples × 100.
    for group, scores in result.groups.items():
        members = [uid for uid, g in result.example_groups.items() if g == group]
        if "count" in scores and len(members) != scores["count"]:
            raise ValueError(f"{scores_path}: {result.view.group_kind} {group} has {len(members)} example scores, "
                             f"but {metrics_path} says {scores['count']}; the files do not belong to the same "
                             "evaluation")
        for metric in scores:
            if members and metric in result.examples[members[0]]:
                mean = 100.0 * sum(result.examples[uid][metric] for uid in members) / len(members)
                if abs(mean - scores[metric]) > _GROUP_TOLERANCE:
                    raise ValueError(
                        f"{scores_path}: {result.view.group_kind} {group} has {len(members)} example scores "
                        f"averaging to {metric} {mean:.4f}, but {metrics_path} says {scores[metric]:.4f}; the files "
                        "do not belong to the same evaluation")
    return result


def load_report(path: str | os.PathLike, name: str | None = None) -> Report:
    """Read a report directory (``metrics.json`` + example scores) back into results.

    ``path`` is a report directory, or a training output directory (``<path>/eval/final``), or a checkpoint's
    evaluation by ``xdist eval`` (``<path>/eval``). ``name`` defaults to the last component of ``path``.
    Each set's example scores are checked against its group scores in ``metrics.json``.
    """
    given = Path(path)
    report_dir = _resolve_report_dir(given)
    metrics_path = report_dir / "metrics.json"
    metrics = _read_json(metrics_path)
    version = metrics.get("version") if isinstance(metrics, dict) else None
    if version != METRICS_VERSION:
        raise ValueError(f"{metrics_path}: metrics version {version!r}, this xdist reads {METRICS_VERSION}; "
                         "re-run `xdist eval` on the run's checkpoint to rewrite the report")
    sets_json = _field(metrics, "sets", metrics_path, "", dict)
    if not sets_json:
        raise ValueError(f"{metrics_path}: field 'sets' is empty; nothing was evaluated")
    sets = {}
    for set_name, summary in sets_json.items():
        if not isinstance(summary, dict):
            raise ValueError(f"{metrics_path}: field 'sets.{set_name}' is not an object")
        # Set names become paths here (example_scores/<set>.json) and in write_comparison (heatmaps/<set>/).
        check_file_name(f"{metrics_path}: evaluation set name", set_name)
        sets[set_name] = _load_set(report_dir, set_name, summary, metrics_path)
    return Report(name=name or given.resolve().name, path=report_dir, sets=sets)


# ---------------------------------------------------------------------------------------------------
# Comparison
# ---------------------------------------------------------------------------------------------------


@dataclass
class RunTests:
    """Significance tests of one run against the baseline on one set."""

    scopes: dict[str, PairedTest]
    """Per scope of the set's :class:`PairedSpec` (QA: ``g_xlt`` = all cells, ``xlt`` = the diagonal)."""

    groups: dict[str, PairedTest] = field(default_factory=dict)
    """Per group, when requested (``per_cell=True``)."""

    def to_json(self) -> dict:
        return {"scopes": {name: test.to_json() for name, test in self.scopes.items()},
                "groups": {group: test.to_json() for group, test in self.groups.items()}}


@dataclass
class SetComparison:
    """All runs on one evaluation set."""

    name: str
    baseline: str
    results: dict[str, EvalResult]
    """Run name → result, in the order the runs were given."""

    tests: dict[str, RunTests]
    """Run name → tests against the baseline (every run but the baseline)."""

    @property
    def base(self) -> EvalResult:
        return self.results[self.baseline]

    @property
    def paired(self) -> PairedSpec:
        """The baseline's test, over the scopes of every run (:func:`shared_spec`)."""
        return shared_spec(list(self.results.values()), self.base)

    @property
    def view(self) -> View:
        """The baseline's view, with the summary columns only other runs have appended (a branched model's
        supervised and zero-shot accuracy beside an ordinary baseline)."""
        columns = dict(self.base.view.columns)
        for result in self.results.values():
            for key, label in result.view.columns.items():
                columns.setdefault(key, label)
        return replace(self.base.view, columns=columns)

    def matrix(self, run: str, metric: str | None = None) -> np.ndarray:
        """``run``'s grid of ``metric`` in the baseline's axis order (NaN: no such group)."""
        return self.results[run].grid(metric, self.base.matrix.rows if self.base.matrix else None)

    def difference_matrix(self, run: str, metric: str | None = None) -> np.ndarray:
        """``run`` minus the baseline, per grid cell (points of the group metric)."""
        return self.matrix(run, metric) - self.matrix(self.baseline, metric)

    def summary(self) -> dict[str, dict[str, float | int | str | None]]:
        """Per run: its summary row, the run − baseline difference of each headline value, counts."""
        rows = {}
        base, view, scopes = self.base, self.view, self.paired.scopes
        for run, result in self.results.items():
            row = dict(result.summary)
            for scope, spec in scopes.items():
                # A scope's macro column (an MBLM run's supervised/zero-shot languages) for a run that did not
                # report it (the ordinary baseline): the mean of the group metric over the scope's groups.
                key = f"{scope}_macro"
                if key in view.columns and key not in row and spec.groups:
                    row[key] = float(np.mean([result.groups[g][view.group_metric] for g in spec.groups]))
            for key in base.view.headline:
                value, reference = result.summary.get(key), base.summary.get(key)
                row[f"{key}_difference"] = None if value is None or reference is None else value - reference
            row.setdefault("num_examples", len(result.examples))
            rows[run] = row
        return rows

    def group_metrics(self) -> tuple[str, ...]:
        """The group metrics tabled side by side (the matrix's, or the view's group metric)."""
        base = self.base
        return base.matrix.metrics if base.matrix is not None and base.matrix.metrics else (base.view.group_metric,)

    def to_json(self) -> dict:
        base, metric = self.base, self.base.view.group_metric
        groups = []
        for group in base.groups:
            row: dict = {"group": group}
            if base.matrix is not None and group in base.matrix.cells:
                row[base.matrix.row_name], row[base.matrix.column_name] = base.matrix.cells[group]
            for name in self.group_metrics():
                row[name] = {run: result.groups[group][name] for run, result in self.results.items()}
            row[f"{metric}_difference"] = {run: result.groups[group][metric] - base.groups[group][metric]
                                           for run, result in self.results.items() if run != self.baseline}
            groups.append(row)
        data = {"task": base.task, "paired": self.paired.to_json(), "summary": self.summary(), "groups": groups,
                "tests": {run: tests.to_json() for run, tests in self.tests.items()}}
        if base.matrix is not None:
            data["difference_matrix"] = {
                "rows": base.matrix.row_name, "columns": base.matrix.column_name,
                "labels": list(base.matrix.rows),
                metric: {run: matrix_json(self.difference_matrix(run, metric)) for run in self.tests}}
        return data


@dataclass
class Comparison:
    """Every run against the baseline on every evaluation set they share."""

    runs: dict[str, Path]
    """Run name → report directory, in the order given."""

    baseline: str
    alpha: float
    per_cell: bool
    """Tests per group (QA: per cell) too."""

    sets: dict[str, SetComparison]
    skipped_sets: dict[str, list[str]] = field(default_factory=dict)
    """Sets left out because some runs lack them: set → the runs that lack it."""

    def to_json(self) -> dict:
        used = list(dict.fromkeys(c.paired.test for c in self.sets.values()))
        return {
            "baseline": self.baseline,
            "runs": {name: str(path) for name, path in self.runs.items()},
            "test": {"alpha": self.alpha, "difference": "run - baseline", "paired_by": "uid",
                     **{kind: TEST_DESCRIPTIONS[kind] for kind in used}},
            "per_cell": self.per_cell,
            "sets": {name: comparison.to_json() for name, comparison in self.sets.items()},
            "skipped_sets": self.skipped_sets,
        }

    def to_markdown(self) -> str:
        """The comparison as GitHub-flavoured markdown tables."""
        lines = [
            f"# Comparison against `{self.baseline}`",
            "",
            "Runs: " + ", ".join(f"`{name}` ({path})" for name, path in self.runs.items()) + ".",
        ]
        for set_name, comparison in self.sets.items():
            lines += ["", *_set_markdown(set_name, comparison, self.per_cell, self.alpha)]
        if self.skipped_sets:
            lines += ["", "Sets not compared (missing in some runs): " + "; ".join(
                f"`{name}` (missing in {', '.join(runs)})" for name, runs in self.skipped_sets.items()) + "."]
        return "\n".join(lines) + "\n"


def _number(value: float | None, digits: int = 2, signed: bool = False) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "–"
    value = round(value, digits) + 0.0  # + 0.0 turns a rounded -0.0 into 0.0: no "-0.00" for float noise
    return f"{value:+.{digits}f}" if signed else f"{value:.{digits}f}"


def _test_row(run: str, scope: str, test: PairedTest) -> str:
    if test.p_value is None:
        statistic, p_value, verdict = "–", "– (all pairs tied)", "no"
    else:
        statistic, p_value = f"{test.statistic:g}", f"{test.p_value:.3g}"
        verdict = "**yes**" if test.significant else "no"
    mean_difference = _number(100 * test.mean_difference, signed=True)
    return (f"| {run} | {scope} | {test.n_pairs} | {test.n_nonzero} | {mean_difference} | "
            f"{statistic} | {p_value} | {verdict} |")


def _significance_text(paired: PairedSpec, alpha: float, label: str) -> str:
    if paired.test == "wilcoxon":
        return (f"Significance: Wilcoxon signed-rank test on example-level {label}, examples paired by uid, "
                f"two-sided, alpha = {alpha:g}; tied pairs are dropped (`zero_method=\"{ZERO_METHOD}\"`). "
                f"Mean Δ is the mean over examples of (run − baseline) × 100.")
    return (f"Significance: McNemar's exact test on paired correctness, examples paired by uid, two-sided, "
            f"alpha = {alpha:g}. Mean Δ is the mean over examples of (run − baseline) × 100 (accuracy points).")


def _set_markdown(set_name: str, comparison: SetComparison, per_cell: bool, alpha: float) -> list[str]:
    base, view = comparison.base, comparison.view
    columns = [(key, label) for key, label in view.columns.items()]
    headline = [key for key in view.headline]
    lines = [f"## `{set_name}` ({len(base.examples)} examples, {len(base.groups)} {view.group_kind}s)", "",
             _significance_text(comparison.paired, alpha, view.group_label), "",
             "| run | " + " | ".join(label for _, label in columns) + " | "
             + " | ".join(f"Δ{view.columns.get(key, key)}" for key in headline) + " |",
             "|---" + "|---:" * (len(columns) + len(headline)) + "|"]
    for run, row in comparison.summary().items():
        is_baseline = run == comparison.baseline
        values = [_number(row.get(key)) if not isinstance(row.get(key), str) else row[key] for key, _ in columns]
        differences = ["–" if is_baseline else _number(row[f"{key}_difference"], signed=True) for key in headline]
        lines.append(f"| {f'{run} (baseline)' if is_baseline else run} | " + " | ".join(values + differences) + " |")
    test_name = "Wilcoxon signed-rank" if base.paired.test == "wilcoxon" else "McNemar exact"
    lines += ["", f"{test_name} vs `{comparison.baseline}`:", "",
              f"| run | scope | pairs | non-zero | mean Δ{view.group_label} | statistic | p-value | significant |",
              "|---|---|---:|---:|---:|---:|---:|---|"]
    for run, tests in comparison.tests.items():
        for scope, test in tests.scopes.items():
            lines.append(_test_row(run, comparison.paired.scopes[scope].label, test))
    others = list(comparison.tests)
    metric, label = view.group_metric, view.group_label
    header = " | ".join([f"{comparison.baseline} {label}", *(f"{run} {label} | Δ{run}" for run in others)])
    lines += ["", f"Per-{view.group_kind} {label}"
              + (f" (* significant per-{view.group_kind} difference)" if per_cell else "") + ":", "",
              f"| {view.group_kind} | {header} |", "|---" + "|---:" * (1 + 2 * len(others)) + "|"]
    for group, scores in base.groups.items():
        parts = [_number(scores[metric])]
        for run in others:
            other = comparison.results[run].groups[group][metric]
            test = comparison.tests[run].groups.get(group)
            mark = "*" if test is not None and test.significant else ""
            parts += [_number(other), _number(other - scores[metric], signed=True) + mark]
        lines.append(f"| {group} | " + " | ".join(parts) + " |")
    return lines


def shared_spec(results: Sequence[EvalResult], base: EvalResult) -> PairedSpec:
    """``base``'s paired test over its own scopes, then those of the other results whose groups every result
    has (an MBLM run's supervised/zero-shot languages are groups of an ordinary baseline's result too)."""
    scopes = dict(base.paired.scopes)
    for result in results:
        for key, scope in result.paired.scopes.items():
            if key not in scopes and all(set(scope.groups or ()) <= set(r.groups) for r in results):
                scopes[key] = scope
    return replace(base.paired, scopes=scopes)


def _paired(kind: str, run: EvalResult, base: EvalResult, groups: tuple[str, ...] | None, alpha: float) -> PairedTest:
    return paired_test(kind, run.example_scores(groups=groups), base.example_scores(groups=groups), alpha=alpha)


def compare_reports(
    reports: Sequence[Report],
    baseline: str | None = None,
    alpha: float = 0.05,
    *,
    sets: Sequence[str] | None = None,
    per_cell: bool = False,
) -> Comparison:
    """Compare every report with the ``baseline`` one (by name; default the first) on shared sets.

    ``sets`` restricts the comparison to these sets (each must be in every report); by default every set
    that all reports have is compared and the others are listed in :attr:`Comparison.skipped_sets`.
    Runs must have been evaluated on the same examples of each compared set (same uids) by the same task,
    else a ValueError says how they differ. ``per_cell`` adds a test per group (QA: per G-XLT cell).
    """
    alpha = _check_alpha(alpha)
    if len(reports) < 2:
        raise ValueError(f"comparing needs at least two runs, got {len(reports)}")
    names = [report.name for report in reports]
    duplicates = sorted({name for name in names if names.count(name) > 1})
    if duplicates:
        raise ValueError(f"run names must be unique, {duplicates} appear more than once; name the runs explicitly")
    by_name = {report.name: report for report in reports}
    baseline = names[0] if baseline is None else baseline
    if baseline not in by_name:
        raise ValueError(f"baseline {baseline!r} is not one of the runs {names}")

    if sets is not None:
        for set_name in sets:
            lacking = [name for name in names if set_name not in by_name[name].sets]
            if lacking:
                raise ValueError(f"evaluation set {set_name!r} is missing in run(s) {lacking} "
                                 f"(reports at {[str(by_name[n].path) for n in lacking]})")
        chosen = list(dict.fromkeys(sets))
        skipped: dict[str, list[str]] = {}
    else:
        every = list(dict.fromkeys(s for report in reports for s in report.sets))
        chosen = [s for s in every if all(s in report.sets for report in reports)]
        skipped = {s: [name for name in names if s not in by_name[name].sets] for s in every if s not in chosen}
        if not chosen:
            listing = ", ".join(f"{report.name}: {sorted(report.sets)}" for report in reports)
            raise ValueError(f"the runs share no evaluation set ({listing}); nothing to compare")

    compared = {}
    for set_name in chosen:
        base = by_name[baseline].sets[set_name]
        for name in names:
            run = by_name[name].sets[set_name]
            if run.task != base.task or (run.paired.metric, run.paired.test) != (base.paired.metric, base.paired.test):
                raise ValueError(f"runs {name!r} and {baseline!r} scored set {set_name!r} differently (task "
                                 f"{run.task!r} vs {base.task!r}, test {run.paired.test} of {run.paired.metric!r} vs "
                                 f"{base.paired.test} of {base.paired.metric!r}); only results of the same task and "
                                 "tests compare")
            mismatch = _uid_mismatch(list(run.examples), list(base.examples), name, baseline)
            if mismatch:
                raise ValueError(f"runs {name!r} and {baseline!r} were not evaluated on the same examples of set "
                                 f"{set_name!r}: {mismatch}; paired tests need identical example sets")
        spec = shared_spec([by_name[name].sets[set_name] for name in names], base)
        tests = {}
        for name in names:
            if name == baseline:
                continue
            run = by_name[name].sets[set_name]
            tests[name] = RunTests(
                scopes={scope: _paired(spec.test, run, base, s.groups, alpha) for scope, s in spec.scopes.items()},
                groups={group: _paired(spec.test, run, base, (group,), alpha) for group in base.groups}
                if per_cell else {},
            )
        compared[set_name] = SetComparison(
            name=set_name, baseline=baseline, results={name: by_name[name].sets[set_name] for name in names},
            tests=tests)
    return Comparison(runs={report.name: report.path for report in reports}, baseline=baseline, alpha=alpha,
                      per_cell=per_cell, sets=compared, skipped_sets=skipped)


# ---------------------------------------------------------------------------------------------------
# Writing
# ---------------------------------------------------------------------------------------------------


def difference_heatmap_figure(comparison: SetComparison, run: str) -> Figure:
    """Heatmap of ``run`` minus the baseline per grid cell (group-metric points), diverging colours at 0."""
    base = comparison.base
    if base.matrix is None:
        raise ValueError(f"evaluation set {comparison.name!r} has no matrix layout to draw")
    delta = comparison.difference_matrix(run)
    finite = np.abs(delta[np.isfinite(delta)])
    # Symmetric limits put 0 at the colormap's neutral middle; at least ±1 point so that tiny noise is pale.
    limit = max(1.0, float(finite.max()) if finite.size else 0.0)
    labels = base.matrix.rows
    position = {cell: group for group, cell in base.matrix.cells.items()}
    group_tests = comparison.tests[run].groups

    def annotate(row: int, column: int, value: float) -> tuple[str, str]:
        test = group_tests.get(position.get((labels[row], labels[column]), ""))
        mark = "*" if test is not None and test.significant else ""
        return f"{value:+.1f}{mark}", "white" if abs(value) > 0.6 * limit else "black"

    view, summary = base.view, comparison.summary()[run]
    headline = ", ".join(f"{view.columns.get(key, key).split()[0]} {_number(summary[f'{key}_difference'], signed=True)}"
                         for key in view.headline)
    title = (f"{comparison.name}: {view.group_label} {run} − {comparison.baseline}\n{headline}"
             + (f" (* {view.group_kind} p ≤ {next(iter(group_tests.values())).alpha:g})" if group_tests else ""))
    return matrix_figure(delta, labels, title, cmap="RdBu", limits=(-limit, limit), label=f"Δ{view.group_label}",
                         annotate=annotate)


@dataclass
class ComparisonFiles:
    """Paths written by :func:`write_comparison`."""

    json: Path
    markdown: Path
    heatmaps: dict[str, dict[str, Path]] = field(default_factory=dict)
    """set → run → heatmap of the run (sets with a matrix)."""

    difference_heatmaps: dict[str, dict[str, Path]] = field(default_factory=dict)
    """set → run → heatmap of the run minus the baseline."""


def write_comparison(comparison: Comparison, out_dir: str | os.PathLike, *, heatmaps: bool = True) -> ComparisonFiles:
    """Write ``comparison.json``, ``comparison.md`` and, for sets with a matrix, heatmaps to ``out_dir``.

    Heatmaps: ``heatmaps/<set>/<run>.png`` (each run's matrix, drawn by the evaluation layer) and
    ``heatmaps/<set>/<run>-minus-<baseline>.png`` (difference, diverging colours, 0 = neutral).
    """
    out = Path(out_dir)
    for name in comparison.runs:
        check_file_name("run name", name, " (name the runs explicitly, e.g. --names ce,skd)")
    out.mkdir(parents=True, exist_ok=True)
    files = ComparisonFiles(json=out / "comparison.json", markdown=out / "comparison.md")
    files.json.write_text(json.dumps(comparison.to_json(), ensure_ascii=False, indent=2) + "\n", encoding="utf-8")
    files.markdown.write_text(comparison.to_markdown(), encoding="utf-8")
    if heatmaps:
        for set_name, set_comparison in comparison.sets.items():
            if set_comparison.base.matrix is None:
                continue
            directory = out / "heatmaps" / set_name
            files.heatmaps[set_name] = {run: save_heatmap(result, directory / f"{run}.png")
                                        for run, result in set_comparison.results.items()}
            files.difference_heatmaps[set_name] = {}
            for run in set_comparison.tests:
                path = directory / f"{run}-minus-{comparison.baseline}.png"
                difference_heatmap_figure(set_comparison, run).savefig(path, format="png")
                files.difference_heatmaps[set_name][run] = path
    return files


def run_compare(
    paths: Sequence[str | os.PathLike],
    *,
    names: Sequence[str] | None = None,
    baseline: str | None = None,
    sets: Sequence[str] | None = None,
    out: str | os.PathLike | None = None,
    alpha: float = 0.05,
    per_cell: bool = False,
) -> Comparison:
    """``xdist compare``: load the reports at ``paths``, compare them, write to ``out`` when given."""
    if names is not None and len(names) != len(paths):
        raise ValueError(f"--names gives {len(names)} names for {len(paths)} runs")
    reports = [load_report(path, None if names is None else names[i]) for i, path in enumerate(paths)]
    comparison = compare_reports(reports, baseline, alpha, sets=sets, per_cell=per_cell)
    if out is not None:
        write_comparison(comparison, out)
    return comparison
