"""Compare the evaluation reports of several runs: G-XLT/XLT tables, per-cell F1 and significance tests.

Inputs are report directories written by :func:`xdist.evaluation.write_report` (``metrics.json``,
``example_scores/<set>.json``, ``predictions/<set>/<q>-<c>.json``) — ``xdist eval --out`` — or training
output directories, whose final evaluation is ``<dir>/eval/final``. One run is the baseline (default:
the first); every other run is compared with it per evaluation set:

- G-XLT and XLT F1/EM of every run and their difference from the baseline;
- the F1 of every (question language, context language) cell, side by side, and the difference matrix;
- a Wilcoxon signed-rank test on example-level F1 (Carrino et al., alpha 0.05), examples paired by uid,
  over all examples of the set (``g_xlt`` scope) and over the diagonal cells' examples (``xlt`` scope);
  optionally per cell.

Zero differences. Carrino et al.'s ``src/wilcoxon_test.py`` (ccasimiro88/self-distillation-gxlt-qa)
calls ``scipy.stats.wilcoxon(scores_a, scores_b)`` with scipy's defaults and calls a result significant
when ``p <= alpha``. We make the same call with those defaults spelled out: ``zero_method="wilcox"``
(pairs whose F1 is equal — most of them in QA, e.g. both exactly right or both 0 — are dropped before
ranking), ``correction=False``, two-sided, ``method="auto"``. Two deliberate differences from that
script: pairs are matched by example uid (the script pairs lines of two files by position, and its
example-score files leave unanswered questions out, which can misalign the pairs); and when *every* pair
is tied, the test is not run (scipy then returns a NaN p-value with a warning above 13 pairs and 1.0
below): statistic and p-value are None and the result is "not significant".

The functions that compute (:func:`wilcoxon_paired`, :func:`compare_reports`) are separate from those
that read and write files (:func:`load_report`, :func:`write_comparison`); :func:`run_compare` chains
them for ``xdist compare``.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from matplotlib.figure import Figure
from scipy import stats

from xdist.evaluation import CellScore, DecodeInfo, EvalResult, ExampleScore, save_heatmap
from xdist.evaluation.metrics import matrix_json
from xdist.evaluation.report import check_file_name, matrix_figure
from xdist.tasks.qa.examples import Cell, cell_name

ZERO_METHOD = "wilcox"
"""scipy's ``zero_method`` for the signed-rank test: tied pairs are dropped (the authors' setting)."""

# A cell's F1/EM in metrics.json is the mean of its examples' scores × 100; allow float rounding only.
_CELL_TOLERANCE = 1e-6


# ---------------------------------------------------------------------------------------------------
# Significance test
# ---------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class PairedTest:
    """Wilcoxon signed-rank test of paired example scores ``a`` vs ``b`` (differences ``a - b``)."""

    statistic: float | None
    """scipy's two-sided statistic (the smaller of the signed-rank sums); None when every pair is tied."""

    p_value: float | None
    """Two-sided p-value; None when every pair is tied (the test is undefined)."""

    n_pairs: int
    n_nonzero: int
    """Pairs whose scores differ: the ones the test ranks (``zero_method="wilcox"`` drops the rest)."""

    mean_difference: float
    """Mean of ``a - b`` over all pairs, in the scores' units (example F1 in [0, 1])."""

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


def wilcoxon_paired(a: Mapping[str, float], b: Mapping[str, float], *, alpha: float = 0.05) -> PairedTest:
    """Wilcoxon signed-rank test of ``a`` vs ``b`` (uid → score), pairing scores by uid.

    Same call as the authors' script (``scipy.stats.wilcoxon`` defaults: ``zero_method="wilcox"``,
    no continuity correction, two-sided, ``method="auto"``); see the module docstring for the
    all-tied case. Both mappings must hold exactly the same uids; scores must be finite.
    """
    alpha = _check_alpha(alpha)
    mismatch = _uid_mismatch(list(a), list(b), "a", "b")
    if mismatch:
        raise ValueError(f"paired test needs scores of the same examples: {mismatch}")
    if not a:
        raise ValueError("paired test needs at least one pair of scores")
    uids = sorted(a)  # a fixed order: the statistic does not depend on it, float sums barely do
    x = np.array([a[uid] for uid in uids], dtype=np.float64)
    y = np.array([b[uid] for uid in uids], dtype=np.float64)
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
    """Set name → result, cells and example scores as written (predictions from the prediction files)."""


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
    where = f"sets.{set_name}."
    languages = tuple(_field(summary, "languages", metrics_path, where, list))
    cells: dict[Cell, CellScore] = {}
    for i, cell_json in enumerate(_field(summary, "cells", metrics_path, where, list)):
        try:
            cell = CellScore(**cell_json)
        except TypeError as error:
            raise ValueError(f"{metrics_path}: field '{where}cells.{i}' is not a cell score ({error})") from error
        cells[cell.cell] = cell
    decode_json = summary.get("decode")
    try:
        decode = None if decode_json is None else DecodeInfo(**decode_json)
    except TypeError as error:
        raise ValueError(f"{metrics_path}: field '{where}decode' is not decode info ({error})") from error

    # uid = "<question id>/<q>-<c>" (QAExample.uid); language codes may hold '-', so the cell is found by
    # looking the whole "<q>-<c>" tail up among the cells metrics.json lists, never by splitting it.
    tails: dict[str, Cell] = {}
    for q, c in cells:
        tail = cell_name(q, c)
        if tail in tails:
            raise ValueError(f"{metrics_path}: cells {tails[tail]} and {(q, c)} of set {set_name!r} give the same "
                             f"uid suffix {tail!r}; example uids cannot be assigned to cells")
        tails[tail] = (q, c)

    scores_path = report_dir / "example_scores" / f"{set_name}.json"
    if not scores_path.is_file():
        raise FileNotFoundError(f"{scores_path}: missing; the example-level scores of set {set_name!r} are "
                                "needed to compare runs (written by write_report next to metrics.json)")
    scores_json = _read_json(scores_path)
    if not isinstance(scores_json, dict):
        raise ValueError(f"{scores_path}: expected an object {{uid: {{exact_match, f1}}}}")
    predictions: dict[Cell, dict[str, str]] = {}
    for cell in cells:
        prediction_path = report_dir / "predictions" / set_name / f"{cell_name(*cell)}.json"
        # Unanswered examples are absent from a prediction file; a missing file leaves every prediction None.
        loaded = _read_json(prediction_path) if prediction_path.is_file() else {}
        if not isinstance(loaded, dict):
            raise ValueError(f"{prediction_path}: expected an object {{question id: answer text}}")
        predictions[cell] = loaded

    examples: dict[str, ExampleScore] = {}
    totals: dict[Cell, list[float]] = {cell: [0, 0.0, 0.0] for cell in cells}  # count, EM sum, F1 sum
    for uid, entry in scores_json.items():
        question_id, _, tail = uid.rpartition("/")
        if not question_id or tail not in tails:
            raise ValueError(f"{scores_path}: uid {uid!r} does not end in '/<q>-<c>' for a cell of set "
                             f"{set_name!r} in {metrics_path.name}")
        exact = _field(entry, "exact_match", scores_path, f"{uid}.", int | float)
        f1 = _field(entry, "f1", scores_path, f"{uid}.", int | float)
        if not (0.0 <= f1 <= 1.0 and 0.0 <= exact <= 1.0):
            raise ValueError(f"{scores_path}: scores of {uid!r} must lie in [0, 1], got EM {exact!r}, F1 {f1!r}")
        cell = tails[tail]
        examples[uid] = ExampleScore(uid, question_id, cell[0], cell[1], predictions[cell].get(question_id),
                                     float(exact), float(f1))
        totals[cell][0] += 1
        totals[cell][1] += exact
        totals[cell][2] += f1

    # The example scores must be the ones the cells were computed from (not another run's or set's).
    for cell, (count, exact_sum, f1_sum) in totals.items():
        score = cells[cell]
        if count != score.count or (count and (
                abs(100.0 * f1_sum / count - score.f1) > _CELL_TOLERANCE
                or abs(100.0 * exact_sum / count - score.exact_match) > _CELL_TOLERANCE)):
            raise ValueError(f"{scores_path}: cell {cell[0]}-{cell[1]} has {count} example scores averaging to "
                             f"F1 {100.0 * f1_sum / max(count, 1):.4f}, but {metrics_path} says {score.count} "
                             f"examples, F1 {score.f1:.4f}; the files do not belong to the same evaluation")
    scheme = summary.get("scheme", "auto")
    return EvalResult(name=set_name, languages=languages, cells=cells, examples=examples,
                      scheme=scheme if isinstance(scheme, str) else "auto", decode=decode)


def load_report(path: str | os.PathLike, name: str | None = None) -> Report:
    """Read a report directory (``metrics.json`` + example scores + prediction files) back into results.

    ``path`` is a report directory, or a training output directory (``<path>/eval/final``), or a checkpoint
    evaluated by ``xdist eval`` without ``--out`` (``<path>/eval``). ``name`` defaults to the last component
    of ``path``. Each set's example scores are checked against the cell scores in ``metrics.json``.
    """
    given = Path(path)
    report_dir = _resolve_report_dir(given)
    metrics_path = report_dir / "metrics.json"
    metrics = _read_json(metrics_path)
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

    g_xlt: PairedTest
    """All examples of the set."""

    xlt: PairedTest | None
    """Examples of the diagonal cells (question language = context language); None if the set has none."""

    cells: dict[Cell, PairedTest] = field(default_factory=dict)
    """Per cell, when requested (``per_cell=True``)."""

    def to_json(self) -> dict:
        return {"g_xlt": self.g_xlt.to_json(), "xlt": None if self.xlt is None else self.xlt.to_json(),
                "cells": {cell_name(*cell): test.to_json() for cell, test in self.cells.items()}}


@dataclass
class SetComparison:
    """All runs on one evaluation set."""

    name: str
    languages: tuple[str, ...]
    """Matrix axis order (the baseline's)."""

    baseline: str
    results: dict[str, EvalResult]
    """Run name → result, in the order the runs were given."""

    tests: dict[str, RunTests]
    """Run name → tests against the baseline (every run but the baseline)."""

    def matrix(self, run: str, metric: str = "f1") -> np.ndarray:
        """``run``'s cell scores in the baseline's language order (NaN: no such cell)."""
        return self.results[run].matrix(metric, self.languages)

    def difference_matrix(self, run: str, metric: str = "f1") -> np.ndarray:
        """``run`` minus the baseline, per cell (F1 or EM points)."""
        return self.matrix(run, metric) - self.matrix(self.baseline, metric)

    def summary(self) -> dict[str, dict[str, float | int | None]]:
        """Per run: G-XLT and XLT F1/EM, their difference from the baseline, counts."""
        rows = {}
        base = self.results[self.baseline]
        for run, result in self.results.items():
            xlt, base_xlt = result.xlt, base.xlt
            rows[run] = {
                "g_xlt_f1": result.g_xlt.f1, "g_xlt_em": result.g_xlt.exact_match,
                "xlt_f1": None if xlt is None else xlt.f1, "xlt_em": None if xlt is None else xlt.exact_match,
                "g_xlt_f1_difference": result.g_xlt.f1 - base.g_xlt.f1,
                "xlt_f1_difference": None if xlt is None or base_xlt is None else xlt.f1 - base_xlt.f1,
                "num_cells": len(result.cells), "num_examples": len(result.examples),
            }
        return rows

    def to_json(self) -> dict:
        cells = []
        for cell in self.results[self.baseline].cells:
            row: dict = {"question_lang": cell[0], "context_lang": cell[1]}
            for metric in ("f1", "exact_match"):
                row[metric] = {run: getattr(result.cells[cell], metric) for run, result in self.results.items()}
            row["f1_difference"] = {run: result.cells[cell].f1 - self.results[self.baseline].cells[cell].f1
                                    for run, result in self.results.items() if run != self.baseline}
            cells.append(row)
        return {
            "languages": list(self.languages),
            "summary": self.summary(),
            "cells": cells,
            "difference_matrix": {"rows": "question_lang", "columns": "context_lang",
                                  "f1": {run: matrix_json(self.difference_matrix(run)) for run in self.tests}},
            "tests": {run: tests.to_json() for run, tests in self.tests.items()},
        }


@dataclass
class Comparison:
    """Every run against the baseline on every evaluation set they share."""

    runs: dict[str, Path]
    """Run name → report directory, in the order given."""

    baseline: str
    alpha: float
    per_cell: bool
    sets: dict[str, SetComparison]
    skipped_sets: dict[str, list[str]] = field(default_factory=dict)
    """Sets left out because some runs lack them: set → the runs that lack it."""

    def to_json(self) -> dict:
        return {
            "baseline": self.baseline,
            "runs": {name: str(path) for name, path in self.runs.items()},
            "test": {"name": "wilcoxon signed-rank", "scores": "example-level F1 in [0, 1], paired by uid",
                     "zero_method": ZERO_METHOD, "correction": False, "alternative": "two-sided",
                     "alpha": self.alpha, "difference": "run - baseline"},
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
            "",
            f"Significance: Wilcoxon signed-rank test on example-level F1, examples paired by uid, two-sided, "
            f"alpha = {self.alpha:g}; tied pairs are dropped (`zero_method=\"{ZERO_METHOD}\"`). "
            "Mean ΔF1 is the mean over examples of (run − baseline) × 100; G-XLT/XLT are means over cells.",
        ]
        for set_name, comparison in self.sets.items():
            lines += ["", *_set_markdown(set_name, comparison, self.per_cell)]
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


def _set_markdown(set_name: str, comparison: SetComparison, per_cell: bool) -> list[str]:
    base = comparison.results[comparison.baseline]
    lines = [f"## `{set_name}` ({len(base.examples)} examples, {len(base.cells)} cells)", "",
             "| run | G-XLT F1 | G-XLT EM | XLT F1 | XLT EM | ΔG-XLT F1 | ΔXLT F1 |",
             "|---|---:|---:|---:|---:|---:|---:|"]
    for run, row in comparison.summary().items():
        is_baseline = run == comparison.baseline
        differences = ("–", "–") if is_baseline else (_number(row["g_xlt_f1_difference"], signed=True),
                                                      _number(row["xlt_f1_difference"], signed=True))
        lines.append(f"| {f'{run} (baseline)' if is_baseline else run} | {_number(row['g_xlt_f1'])} | "
                     f"{_number(row['g_xlt_em'])} | {_number(row['xlt_f1'])} | {_number(row['xlt_em'])} | "
                     f"{differences[0]} | {differences[1]} |")
    lines += ["", f"Wilcoxon signed-rank vs `{comparison.baseline}`:", "",
              "| run | scope | pairs | non-zero | mean ΔF1 | statistic | p-value | significant |",
              "|---|---|---:|---:|---:|---:|---:|---|"]
    for run, tests in comparison.tests.items():
        lines.append(_test_row(run, "G-XLT (all cells)", tests.g_xlt))
        if tests.xlt is not None:
            lines.append(_test_row(run, "XLT (diagonal)", tests.xlt))
    others = list(comparison.tests)
    header = " | ".join([f"{comparison.baseline} F1", *(f"{run} F1 | Δ{run}" for run in others)])
    lines += ["", "Per-cell F1" + (" (* significant per-cell difference)" if per_cell else "") + ":", "",
              f"| cell | {header} |", "|---" + "|---:" * (1 + 2 * len(others)) + "|"]
    for cell, score in base.cells.items():
        parts = [_number(score.f1)]
        for run in others:
            other = comparison.results[run].cells[cell]
            test = comparison.tests[run].cells.get(cell)
            mark = "*" if test is not None and test.significant else ""
            parts += [_number(other.f1), _number(other.f1 - score.f1, signed=True) + mark]
        lines.append(f"| {cell[0]}-{cell[1]} | " + " | ".join(parts) + " |")
    return lines


def _example_f1(result: EvalResult, cells: Sequence[Cell]) -> dict[str, float]:
    """uid -> example F1 of ``result``'s examples in ``cells`` (the whole set is ``result.example_f1()``)."""
    wanted = set(cells)
    return {uid: s.f1 for uid, s in result.examples.items() if (s.question_lang, s.context_lang) in wanted}


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
    Runs must have been evaluated on the same examples of each compared set (same uids), else a
    ValueError says how many uids differ. ``per_cell`` adds a test per G-XLT cell.
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
            mismatch = _uid_mismatch(list(by_name[name].sets[set_name].examples), list(base.examples), name, baseline)
            if mismatch:
                raise ValueError(f"runs {name!r} and {baseline!r} were not evaluated on the same examples of set "
                                 f"{set_name!r}: {mismatch}; paired tests need identical example sets")
        diagonal = [cell for cell in base.cells if cell[0] == cell[1]]
        tests = {}
        for name in names:
            if name == baseline:
                continue
            run = by_name[name].sets[set_name]
            tests[name] = RunTests(
                g_xlt=wilcoxon_paired(run.example_f1(), base.example_f1(), alpha=alpha),
                xlt=wilcoxon_paired(_example_f1(run, diagonal), _example_f1(base, diagonal), alpha=alpha)
                if diagonal else None,
                cells={cell: wilcoxon_paired(_example_f1(run, [cell]), _example_f1(base, [cell]), alpha=alpha)
                       for cell in base.cells} if per_cell else {},
            )
        compared[set_name] = SetComparison(
            name=set_name, languages=base.languages, baseline=baseline,
            results={name: by_name[name].sets[set_name] for name in names}, tests=tests)
    return Comparison(runs={report.name: report.path for report in reports}, baseline=baseline, alpha=alpha,
                      per_cell=per_cell, sets=compared, skipped_sets=skipped)


# ---------------------------------------------------------------------------------------------------
# Writing
# ---------------------------------------------------------------------------------------------------


def difference_heatmap_figure(comparison: SetComparison, run: str) -> Figure:
    """Heatmap of ``run`` minus the baseline per cell (F1 points), diverging colours centred at 0."""
    delta = comparison.difference_matrix(run)
    finite = np.abs(delta[np.isfinite(delta)])
    # Symmetric limits put 0 at the colormap's neutral middle; at least ±1 point so that tiny noise is pale.
    limit = max(1.0, float(finite.max()) if finite.size else 0.0)
    languages = comparison.languages
    cell_tests = comparison.tests[run].cells

    def annotate(row: int, column: int, value: float) -> tuple[str, str]:
        test = cell_tests.get((languages[row], languages[column]))
        mark = "*" if test is not None and test.significant else ""
        return f"{value:+.1f}{mark}", "white" if abs(value) > 0.6 * limit else "black"

    summary = comparison.summary()[run]
    title = (f"{comparison.name}: F1 {run} − {comparison.baseline}\n"
             f"G-XLT {summary['g_xlt_f1_difference']:+.2f}, "
             f"XLT {_number(summary['xlt_f1_difference'], signed=True)}"
             + (f" (* cell p ≤ {cell_tests[next(iter(cell_tests))].alpha:g})" if cell_tests else ""))
    return matrix_figure(delta, languages, title, cmap="RdBu", limits=(-limit, limit), label="ΔF1", annotate=annotate)


@dataclass
class ComparisonFiles:
    """Paths written by :func:`write_comparison`."""

    json: Path
    markdown: Path
    heatmaps: dict[str, dict[str, Path]] = field(default_factory=dict)
    """set → run → F1 heatmap of the run."""

    difference_heatmaps: dict[str, dict[str, Path]] = field(default_factory=dict)
    """set → run → heatmap of the run minus the baseline."""


def write_comparison(comparison: Comparison, out_dir: str | os.PathLike, *, heatmaps: bool = True) -> ComparisonFiles:
    """Write ``comparison.json``, ``comparison.md`` and heatmaps to ``out_dir``.

    Heatmaps: ``heatmaps/<set>/<run>.png`` (each run's F1 matrix, drawn by the evaluation layer) and
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
