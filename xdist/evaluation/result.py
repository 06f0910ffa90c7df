"""The task-agnostic evaluation result: what the report, the monitor and ``xdist compare`` read.

A task's :meth:`~xdist.tasks.base.Task.score` returns one :class:`EvalResult` per evaluation set:

* ``summary``: the set's headline numbers (QA: ``g_xlt_f1``, ``g_xlt_em``, ``xlt_f1``, ``xlt_em``, counts;
  classification: ``macro``, ``transfer_gap``, ``std``, ...), the row of ``metrics.json``'s summary table;
* ``groups``: scores per group (QA: a (question, context) language cell ``"en-de"``; classification: a
  language), each a dict of numbers;
* ``examples``: per-example scores keyed by a stable uid (the same uid in every run evaluated on the same
  data), and ``example_groups``: each uid's group; ``paired`` says which per-example score two runs are
  compared on, with which test (Wilcoxon signed-rank on QA's F1, McNemar's exact test on correctness) and
  over which scopes (named subsets of the groups: QA's ``g_xlt`` = all cells, ``xlt`` = the diagonal);
* ``matrix`` (optional): how groups lie on a rows × columns grid, for heatmaps (QA: question × context
  language);
* ``view``: which summary keys the tables show and how groups are labelled;
* ``details``: the task's own JSON, written into ``metrics.json`` beside the generic keys (QA: the cell
  list with normalisers, decoding counts); ``files``: extra report files (prediction files), not compared.

``metrics.json`` = ``{"version": METRICS_VERSION, "summary": {set: summary}, "sets": {set: to_json()}}``;
:func:`EvalResult.from_json` reads a set back (``xdist compare``), the per-example scores coming from
``example_scores/<set>.json``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
from scipy.stats import binom

METRICS_VERSION = 2
"""Version of ``metrics.json`` and ``example_scores/<set>.json`` (1: QA-only files without a version)."""

_GENERIC_KEYS = ("task", "name", "summary", "groups", "paired", "matrix", "view")


@dataclass(frozen=True)
class Scope:
    """A named subset of the groups over which runs are compared example by example."""

    label: str
    """How tables name it (``G-XLT (all cells)``)."""

    groups: tuple[str, ...] | None = None
    """The groups in the scope; None = every group."""


def mcnemar_p_value(only_a: int, only_b: int) -> float:
    """McNemar's exact (binomial) two-sided p-value from the discordant counts ``b`` (only A right) and ``c``
    (only B right): ``min(1, 2 * BinomCDF(min(b, c); b + c, 1/2))``; 1 when there is no discordant pair.
    The one definition behind ``xdist compare`` and the classification metrics."""
    n = only_a + only_b
    return 1.0 if n == 0 else float(min(1.0, 2.0 * binom.cdf(min(only_a, only_b), n, 0.5)))


@dataclass(frozen=True)
class PairedSpec:
    """How two runs are compared on one set, example by example (paired by uid)."""

    metric: str
    """The per-example score compared (QA: ``f1`` in [0, 1]; classification: ``correct`` in {0, 1})."""

    test: Literal["wilcoxon", "mcnemar"]
    """``wilcoxon``: signed-rank test of the paired scores; ``mcnemar``: exact test of paired correctness
    (scores 0/1)."""

    scopes: dict[str, Scope] = field(default_factory=lambda: {"all": Scope("all examples")})
    """Scopes tested by default, in order (a test per group is optional: ``xdist compare --per-cell``)."""

    def to_json(self) -> dict[str, Any]:
        return {"metric": self.metric, "test": self.test,
                "scopes": {name: {"label": s.label, "groups": None if s.groups is None else list(s.groups)}
                           for name, s in self.scopes.items()}}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> PairedSpec:
        scopes = {name: Scope(s["label"], None if s["groups"] is None else tuple(s["groups"]))
                  for name, s in data["scopes"].items()}
        return cls(data["metric"], data["test"], scopes)


@dataclass(frozen=True)
class MatrixAxes:
    """Groups laid out on a grid (heatmaps): group → (row label, column label)."""

    rows: tuple[str, ...]
    columns: tuple[str, ...]
    cells: dict[str, tuple[str, str]]
    row_name: str = "rows"
    """What the rows are (``question_lang``)."""
    column_name: str = "columns"
    metrics: tuple[str, ...] = ()
    """Group metrics drawn as grids (``metrics.json`` holds one grid per metric); the first is the heatmap's."""

    def grid(self, groups: dict[str, dict[str, float]], metric: str) -> np.ndarray:
        """``[rows, columns]`` of ``groups[g][metric]``; NaN where no group lies."""
        position_r = {label: i for i, label in enumerate(self.rows)}
        position_c = {label: i for i, label in enumerate(self.columns)}
        values = np.full((len(self.rows), len(self.columns)), np.nan)
        for group, (row, column) in self.cells.items():
            if group in groups:
                values[position_r[row], position_c[column]] = groups[group][metric]
        return values

    def to_json(self, groups: dict[str, dict[str, float]]) -> dict[str, Any]:
        data: dict[str, Any] = {"rows": self.row_name, "columns": self.column_name,
                                "row_labels": list(self.rows), "column_labels": list(self.columns),
                                "cells": {group: list(cell) for group, cell in self.cells.items()},
                                "metrics": list(self.metrics)}
        for metric in self.metrics:
            data[metric] = matrix_json(self.grid(groups, metric))
        return data

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> MatrixAxes:
        return cls(tuple(data["row_labels"]), tuple(data["column_labels"]),
                   {group: (cell[0], cell[1]) for group, cell in data["cells"].items()},
                   data["rows"], data["columns"], tuple(data["metrics"]))


@dataclass(frozen=True)
class View:
    """How tables present a result (the compare report, logs)."""

    columns: dict[str, str]
    """Summary key → column header, in table order (``{"g_xlt_f1": "G-XLT F1", ...}``)."""

    headline: tuple[str, ...]
    """Summary keys that headline the set: in heatmap titles and, as run − baseline differences, in
    ``xdist compare`` (QA: ``g_xlt_f1``, ``xlt_f1``)."""

    group_metric: str
    """The per-group score shown in per-group tables, heatmaps and bar charts (``f1``, ``accuracy``)."""

    group_label: str
    """Its header (``F1``)."""

    group_tags: dict[str, str] = field(default_factory=dict)
    """Group metric → TensorBoard tag segment (``{"f1": "f1", "exact_match": "em"}``: ``eval/<set>/em/<group>``)."""

    group_kind: str = "group"
    """What a group is, in words (``cell``, ``language``)."""

    figure_tag: str = "chart"
    """TensorBoard image tag of the set's figure: ``eval/<set>/<figure_tag>`` (QA: ``g_xlt_heatmap``)."""

    def to_json(self) -> dict[str, Any]:
        return {"columns": dict(self.columns), "headline": list(self.headline),
                "group_metric": self.group_metric, "group_label": self.group_label,
                "group_tags": dict(self.group_tags), "group_kind": self.group_kind, "figure_tag": self.figure_tag}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> View:
        return cls(dict(data["columns"]), tuple(data["headline"]), data["group_metric"], data["group_label"],
                   dict(data["group_tags"]), data["group_kind"], data["figure_tag"])


def matrix_json(values: np.ndarray) -> list[list[float | None]]:
    """A score matrix as JSON lists, an absent cell (NaN) as null."""
    return [[None if math.isnan(v) else float(v) for v in row] for row in values]


@dataclass
class EvalResult:
    """One evaluation set's scores, in a form every consumer reads without knowing the task."""

    name: str
    task: str
    summary: dict[str, Any]
    """Headline numbers (and a few labels, e.g. a worst language); ``None`` where undefined."""

    groups: dict[str, dict[str, float]]
    """Group → metric → value (counts included), in display order."""

    examples: dict[str, dict[str, float]]
    """uid → per-example scores (``paired.metric`` among them), in the order the examples were scored."""

    example_groups: dict[str, str]
    """uid → its group."""

    paired: PairedSpec
    view: View
    matrix: MatrixAxes | None = None
    details: dict[str, Any] = field(default_factory=dict)
    """The task's own ``metrics.json`` entries for the set (keys other than the generic ones)."""

    files: dict[str, Any] = field(default_factory=dict, compare=False)
    """Extra report files: path relative to the report directory → JSON data (prediction files)."""

    def __post_init__(self) -> None:
        self.details = {key: value for key, value in self.details.items() if key not in _GENERIC_KEYS}
        missing = [uid for uid in self.examples if uid not in self.example_groups]
        if missing:
            raise ValueError(f"evaluation set {self.name!r}: example {missing[0]!r} has no group")

    def example_scores(self, metric: str | None = None, groups: tuple[str, ...] | None = None) -> dict[str, float]:
        """uid → ``metric`` (default ``paired.metric``) of the examples in ``groups`` (None: all)."""
        metric = metric or self.paired.metric
        wanted = None if groups is None else set(groups)
        return {uid: scores[metric] for uid, scores in self.examples.items()
                if wanted is None or self.example_groups[uid] in wanted}

    def grid(self, metric: str | None = None, rows: tuple[str, ...] | None = None) -> np.ndarray:
        """The matrix of ``metric`` (default the matrix's first), axes in ``rows`` order when given (square
        matrices only); a ValueError when the result has no matrix."""
        if self.matrix is None:
            raise ValueError(f"evaluation set {self.name!r} ({self.task}) has no matrix layout")
        metric = metric or self.matrix.metrics[0]
        axes = self.matrix if rows is None else MatrixAxes(rows, rows, self.matrix.cells, self.matrix.row_name,
                                                           self.matrix.column_name, self.matrix.metrics)
        return axes.grid(self.groups, metric)

    def scalars(self, prefix: str = "eval") -> dict[str, float]:
        """Flat ``{tag: value}`` for TensorBoard: every numeric summary value (counts ``num_*`` left out) as
        ``<prefix>/<set>/<key>``, and each group's ``view.group_tags`` metrics as ``<prefix>/<set>/<tag>/<group>``."""
        tags = {f"{prefix}/{self.name}/{key}": float(value) for key, value in self.summary.items()
                if isinstance(value, int | float) and not isinstance(value, bool) and not key.startswith("num_")}
        for group, scores in self.groups.items():
            for metric, tag in self.view.group_tags.items():
                tags[f"{prefix}/{self.name}/{tag}/{group}"] = scores[metric]
        return tags

    def to_json(self) -> dict[str, Any]:
        """The set's entry in ``metrics.json`` (no per-example scores: those go to ``example_scores/``)."""
        data = {key: value for key, value in self.details.items() if key not in _GENERIC_KEYS}
        data.update({"task": self.task, "name": self.name, "summary": dict(self.summary),
                     "groups": {group: dict(scores) for group, scores in self.groups.items()},
                     "paired": self.paired.to_json(), "view": self.view.to_json(),
                     "matrix": None if self.matrix is None else self.matrix.to_json(self.groups)})
        return data

    def example_scores_json(self) -> dict[str, dict[str, Any]]:
        """``example_scores/<set>.json``: uid → {its scores, ``group``}."""
        return {uid: {**scores, "group": self.example_groups[uid]} for uid, scores in self.examples.items()}

    @classmethod
    def from_json(cls, data: dict[str, Any], example_scores: dict[str, dict[str, Any]]) -> EvalResult:
        """Rebuild a result from its ``metrics.json`` entry and ``example_scores`` file (KeyError/TypeError/
        ValueError on malformed input; :func:`xdist.compare.load_report` turns them into messages)."""
        examples, example_groups = {}, {}
        for uid, entry in example_scores.items():
            example_groups[uid] = entry["group"]
            examples[uid] = {key: float(value) for key, value in entry.items() if key != "group"}
        matrix = data.get("matrix")
        return cls(
            name=data["name"], task=data["task"], summary=dict(data["summary"]),
            groups={group: dict(scores) for group, scores in data["groups"].items()},
            examples=examples, example_groups=example_groups, paired=PairedSpec.from_json(data["paired"]),
            view=View.from_json(data["view"]), matrix=None if matrix is None else MatrixAxes.from_json(matrix),
            details={key: value for key, value in data.items() if key not in _GENERIC_KEYS},
        )


def as_result(value: Any) -> EvalResult:
    """``value`` as an :class:`EvalResult`: itself, or a task's richer scoring object converted by its
    ``result()`` method (QA's :class:`xdist.evaluation.metrics.QAResult`)."""
    if isinstance(value, EvalResult):
        return value
    convert = getattr(value, "result", None)
    if convert is None:
        raise TypeError(f"expected an EvalResult (or an object with .result()), got {type(value).__name__}")
    return convert()
