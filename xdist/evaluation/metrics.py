"""EM/F1 per G-XLT cell, G-XLT and XLT averages, and example-level scores.

Scoring follows the official SQuAD v1.1 / MLQA v1 scripts: per example, the maximum over its gold
answers of exact match (normalised strings equal) and of token F1 (bag-of-tokens overlap of the
normalised strings; 0 when nothing overlaps, so an empty prediction scores 0 even against a gold
answer that normalises to nothing, whose EM is 1); per cell, the mean over the cell's examples × 100.
An example without a prediction scores 0 and is counted as unanswered, as the scripts do.

A cell is a (question language, context language) pair; answers are normalised for the context
language (:func:`xdist.evaluation.normalize.normalizer_for`). Following Carrino et al.'s ``scores.py``,
``G-XLT`` is the mean over all cells present (diagonal included) and ``XLT`` the mean over the diagonal
cells present; both are unweighted means of cell scores, not of examples.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from xdist.evaluation.decode import decode_predictions
from xdist.evaluation.normalize import Normalizer, Scheme, normalizer_for
from xdist.evaluation.result import (
    METRICS_VERSION,
    EvalResult,
    MatrixAxes,
    PairedSpec,
    Scope,
    View,
    as_result,
    matrix_json,
)
from xdist.tasks.qa.examples import Cell, QAExample, QAFeature, cell_name


def _token_f1(predicted_tokens: list[str], gold_tokens: list[str]) -> float:
    overlap = sum((Counter(predicted_tokens) & Counter(gold_tokens)).values())
    if overlap == 0:
        return 0.0
    precision = overlap / len(predicted_tokens)
    recall = overlap / len(gold_tokens)
    return 2 * precision * recall / (precision + recall)


def exact_match_score(prediction: str, gold: str, normalizer: Normalizer) -> float:
    """1.0 when the normalised prediction equals the normalised gold answer, else 0.0."""
    return float(normalizer.normalize(prediction) == normalizer.normalize(gold))


def f1_score(prediction: str, gold: str, normalizer: Normalizer) -> float:
    """Token F1 (in [0, 1]) between the normalised prediction and gold answer."""
    return _token_f1(normalizer.tokens(prediction), normalizer.tokens(gold))


def score_answer(prediction: str, golds: Sequence[str], normalizer: Normalizer) -> tuple[float, float]:
    """(EM, F1), each the maximum over the gold answers ``golds`` (which must not be empty).

    Same values as taking :func:`exact_match_score` and :func:`f1_score` per gold answer, with every
    string normalised once.
    """
    if not golds:
        raise ValueError("score_answer needs at least one gold answer")
    predicted = normalizer.normalize(prediction)
    predicted_tokens = predicted.split()
    exact = f1 = 0.0
    for gold in golds:
        normalized_gold = normalizer.normalize(gold)
        exact = max(exact, float(predicted == normalized_gold))
        f1 = max(f1, _token_f1(predicted_tokens, normalized_gold.split()))
    return exact, f1


@dataclass(frozen=True)
class ExampleScore:
    """Scores of one example; EM in {0, 1} and F1 in [0, 1] (not ×100)."""

    uid: str
    id: str
    """The dataset's question id (shared across the cells of parallel datasets)."""

    question_lang: str
    context_lang: str
    prediction: str | None
    """Predicted text, or None when no prediction was given (scored 0, counted as unanswered)."""

    exact_match: float
    f1: float


@dataclass(frozen=True)
class CellScore:
    """EM and F1 (×100) of one (question language, context language) cell."""

    question_lang: str
    context_lang: str
    exact_match: float
    f1: float
    count: int
    """Examples scored in the cell (unanswered ones included, at 0)."""

    unanswered: int
    """Examples that had no prediction at all."""

    empty_predictions: int
    """Examples whose prediction was the empty string (e.g. no valid span was decoded)."""

    normalizer: str
    """Normaliser used for the cell: ``squad-v1.1`` or ``mlqa-v1:<context language>``."""

    @property
    def cell(self) -> Cell:
        return (self.question_lang, self.context_lang)

    def to_json(self) -> dict:
        """Plain JSON-serialisable dict."""
        return {
            "question_lang": self.question_lang, "context_lang": self.context_lang,
            "exact_match": self.exact_match, "f1": self.f1, "count": self.count,
            "unanswered": self.unanswered, "empty_predictions": self.empty_predictions,
            "normalizer": self.normalizer,
        }


@dataclass(frozen=True)
class Average:
    """Unweighted mean over cells of EM and F1 (×100)."""

    exact_match: float
    f1: float
    cells: int
    """Number of cells averaged."""

    def to_json(self) -> dict:
        return {"exact_match": self.exact_match, "f1": self.f1, "cells": self.cells}


@dataclass(frozen=True)
class DecodeInfo:
    """How predictions were decoded from logits (present when they were)."""

    n_best: int
    max_answer_length: int
    no_valid_span: int
    """Examples without any valid span (predicted empty)."""

    no_features: int
    """Examples that no feature referred to (predicted empty)."""

    def to_json(self) -> dict:
        return {"n_best": self.n_best, "max_answer_length": self.max_answer_length,
                "no_valid_span": self.no_valid_span, "no_features": self.no_features}


def _average(cells: Iterable[CellScore]) -> Average | None:
    cells = list(cells)
    if not cells:
        return None
    return Average(
        exact_match=sum(c.exact_match for c in cells) / len(cells),
        f1=sum(c.f1 for c in cells) / len(cells),
        cells=len(cells),
    )


QA_VIEW = View(
    columns={"g_xlt_f1": "G-XLT F1", "g_xlt_em": "G-XLT EM", "xlt_f1": "XLT F1", "xlt_em": "XLT EM"},
    headline=("g_xlt_f1", "xlt_f1"), group_metric="f1", group_label="F1",
    group_tags={"f1": "f1", "exact_match": "em"}, group_kind="cell", figure_tag="g_xlt_heatmap",
)
"""How QA results are presented: G-XLT/XLT columns, F1 per cell, TensorBoard tags ``f1/<cell>``, ``em/<cell>``."""


@dataclass
class QAResult:
    """Evaluation of one QA set: cell scores, G-XLT/XLT averages and every example's score.

    The task-agnostic form that reports, the monitor and ``xdist compare`` read is :meth:`result`.
    """

    name: str
    languages: tuple[str, ...]
    """Order of the matrix axes (rows: question language, columns: context language)."""

    cells: dict[Cell, CellScore]
    examples: dict[str, ExampleScore]
    """uid → score, in the order the examples were given."""

    scheme: str = "auto"
    """Normalisation scheme requested (``auto``, ``squad``, ``mlqa``); the per-cell result is in
    :attr:`CellScore.normalizer`."""

    decode: DecodeInfo | None = None

    @property
    def g_xlt(self) -> Average:
        """Mean over every cell present (diagonal included)."""
        average = _average(self.cells.values())
        assert average is not None  # evaluate_predictions refuses empty example lists
        return average

    @property
    def xlt(self) -> Average | None:
        """Mean over the diagonal cells present (question language = context language); None if none."""
        return _average(c for c in self.cells.values() if c.question_lang == c.context_lang)

    def matrix(self, metric: str = "f1", languages: Sequence[str] | None = None) -> np.ndarray:
        """``[len(languages), len(languages)]`` array of ``metric`` (``f1``/``exact_match``); NaN = no cell.

        ``languages`` (default :attr:`languages`) orders the axes and must hold every language of the cells.
        """
        if metric not in ("f1", "exact_match"):
            raise ValueError(f"metric must be 'f1' or 'exact_match', got {metric!r}")
        languages = self.languages if languages is None else languages
        position = {lang: i for i, lang in enumerate(languages)}
        values = np.full((len(languages), len(languages)), np.nan)
        for (question_lang, context_lang), score in self.cells.items():
            values[position[question_lang], position[context_lang]] = getattr(score, metric)
        return values

    def example_f1(self) -> dict[str, float]:
        """uid → example F1 in [0, 1]: the paired samples of a significance test (Wilcoxon)."""
        return {uid: score.f1 for uid, score in self.examples.items()}

    def predictions_by_cell(self) -> dict[Cell, dict[str, str]]:
        """cell → {dataset question id: predicted text}: the official scripts' prediction-file format.

        Unanswered examples are left out, as a prediction file would leave them out.
        """
        by_cell: dict[Cell, dict[str, str]] = {cell: {} for cell in self.cells}
        for score in self.examples.values():
            if score.prediction is not None:
                by_cell[(score.question_lang, score.context_lang)][score.id] = score.prediction
        return by_cell

    def scalars(self, prefix: str = "eval") -> dict[str, float]:
        """Flat ``{tag: value}`` for TensorBoard: G-XLT, XLT and every cell, EM and F1."""
        return self.result().scalars(prefix)

    def summary(self) -> dict[str, float | int | None]:
        """G-XLT and XLT EM/F1, cell and example counts: the set's row of ``metrics.json``'s summary."""
        xlt = self.xlt
        return {
            "g_xlt_f1": self.g_xlt.f1, "g_xlt_em": self.g_xlt.exact_match,
            "xlt_f1": None if xlt is None else xlt.f1, "xlt_em": None if xlt is None else xlt.exact_match,
            "num_cells": len(self.cells), "num_examples": len(self.examples),
        }

    def result(self) -> QAResult:
        """The task-agnostic :class:`EvalResult`: groups are the ``q-c`` cells, examples are scored by EM
        and F1 (paired by uid for the Wilcoxon test on F1, over all cells and over the diagonal), the
        matrix is question × context language, and the prediction files go with it."""
        names = {cell: cell_name(*cell) for cell in self.cells}
        dropped = ("question_lang", "context_lang", "normalizer")
        groups = {names[cell]: {k: v for k, v in score.to_json().items() if k not in dropped}
                  for cell, score in self.cells.items()}
        diagonal = tuple(names[cell] for cell in self.cells if cell[0] == cell[1])
        scopes = {"g_xlt": Scope("G-XLT (all cells)")}
        if diagonal:
            scopes["xlt"] = Scope("XLT (diagonal)", diagonal)
        files = {f"predictions/{self.name}/{names[cell]}.json": answers
                 for cell, answers in self.predictions_by_cell().items()}
        return EvalResult(
            name=self.name, task="qa", summary=self.summary(), groups=groups,
            examples={uid: {"exact_match": s.exact_match, "f1": s.f1} for uid, s in self.examples.items()},
            example_groups={uid: cell_name(s.question_lang, s.context_lang) for uid, s in self.examples.items()},
            paired=PairedSpec(metric="f1", test="wilcoxon", scopes=scopes), view=QA_VIEW,
            matrix=MatrixAxes(rows=self.languages, columns=self.languages, cells={names[c]: c for c in self.cells},
                              row_name="question_lang", column_name="context_lang", metrics=("f1", "exact_match")),
            details=self.to_json(), files=files,
        )

    def to_json(self) -> dict:
        """Summary as plain data (no per-example scores): what ``metrics.json`` holds for the set."""
        xlt = self.xlt
        return {
            "name": self.name,
            "languages": list(self.languages),
            "scheme": self.scheme,
            "g_xlt": self.g_xlt.to_json(),
            "xlt": None if xlt is None else xlt.to_json(),
            "num_examples": len(self.examples),
            "num_cells": len(self.cells),
            "unanswered": sum(c.unanswered for c in self.cells.values()),
            "empty_predictions": sum(c.empty_predictions for c in self.cells.values()),
            "cells": [score.to_json() for score in self.cells.values()],
            "matrix": {"rows": "question_lang", "columns": "context_lang",
                       "f1": matrix_json(self.matrix("f1")), "exact_match": matrix_json(self.matrix("exact_match"))},
            "decode": None if self.decode is None else self.decode.to_json(),
        }


@dataclass
class EvalSummary:
    """Results of several evaluation sets, keyed by set name (the sets of :class:`EvalConfig`).

    Holds :class:`EvalResult` objects or a task's richer ones that convert to it (``result()``).
    """

    sets: dict[str, Any] = field(default_factory=dict)

    def add(self, result: Any) -> None:
        """Add one set's result; set names must be unique."""
        if result.name in self.sets:
            raise ValueError(f"evaluation set {result.name!r} is already in the summary")
        self.sets[result.name] = result

    def table(self) -> dict[str, dict[str, Any]]:
        """Per set: its summary row (QA: G-XLT and XLT EM/F1, cell and example counts)."""
        return {name: dict(as_result(result).summary) for name, result in self.sets.items()}

    def to_json(self) -> dict:
        """``{"version": METRICS_VERSION, "summary": table(), "sets": {name: EvalResult.to_json()}}``."""
        results = {name: as_result(result) for name, result in self.sets.items()}
        return {"version": METRICS_VERSION, "summary": {name: dict(r.summary) for name, r in results.items()},
                "sets": {name: r.to_json() for name, r in results.items()}}


def _language_order(examples: Sequence[QAExample], languages: Sequence[str] | None) -> tuple[str, ...]:
    order = list(languages or [])
    for example in examples:
        for lang in example.cell:
            if lang not in order:
                order.append(lang)
    return tuple(order)


def evaluate_predictions(
    examples: Sequence[QAExample],
    predictions: Mapping[str, str],
    *,
    name: str = "eval",
    scheme: Scheme = "auto",
    languages: Sequence[str] | None = None,
) -> QAResult:
    """Score ``predictions`` (uid → text) against ``examples``' gold answers, per G-XLT cell.

    ``languages`` fixes the order of the matrix axes; languages not listed follow in order of first
    appearance. Every example is scored (a missing prediction scores 0 and is counted as unanswered);
    a prediction whose uid is not among the examples, an example without gold answers, or two examples
    with the same uid (same question id in the same cell) are errors.
    """
    if not examples:
        raise ValueError(f"evaluation set {name!r}: no examples to evaluate")
    known = {example.uid for example in examples}
    stray = [uid for uid in predictions if uid not in known]
    if stray:
        raise ValueError(f"evaluation set {name!r}: {len(stray)} predictions for unknown examples, e.g. {stray[0]!r}")

    normalizers: dict[str, Normalizer] = {}
    per_cell: dict[Cell, list[ExampleScore]] = {}
    scores: dict[str, ExampleScore] = {}
    for example in examples:
        if not example.answers:
            raise ValueError(f"evaluation set {name!r}: example {example.uid!r} (source {example.source!r}) "
                             "has no gold answer")
        if example.uid in scores:  # uid = id + cell, so this also keeps prediction files one answer per id
            raise ValueError(f"evaluation set {name!r}: duplicate example uid {example.uid!r} (question id "
                             f"{example.id!r} twice in cell {example.question_lang}-{example.context_lang})")
        if example.context_lang not in normalizers:
            normalizers[example.context_lang] = normalizer_for(example.context_lang, scheme)
        prediction = predictions.get(example.uid)
        if prediction is None:
            exact = f1 = 0.0
        else:
            golds = [answer.text for answer in example.answers]
            exact, f1 = score_answer(prediction, golds, normalizers[example.context_lang])
        score = ExampleScore(example.uid, example.id, example.question_lang, example.context_lang,
                             prediction, exact, f1)
        scores[example.uid] = score
        per_cell.setdefault(example.cell, []).append(score)

    order = _language_order(examples, languages)
    position = {lang: i for i, lang in enumerate(order)}
    cells = {}
    for cell in sorted(per_cell, key=lambda c: (position[c[0]], position[c[1]])):
        members = per_cell[cell]
        cells[cell] = CellScore(
            question_lang=cell[0], context_lang=cell[1],
            exact_match=100.0 * sum(s.exact_match for s in members) / len(members),
            f1=100.0 * sum(s.f1 for s in members) / len(members),
            count=len(members),
            unanswered=sum(s.prediction is None for s in members),
            empty_predictions=sum(s.prediction == "" for s in members),
            normalizer=normalizers[cell[1]].name,
        )
    return QAResult(name=name, languages=order, cells=cells, examples=scores, scheme=scheme)


def evaluate_qa(
    examples: Sequence[QAExample],
    features: Sequence[QAFeature],
    start_logits: np.ndarray,
    end_logits: np.ndarray,
    *,
    name: str = "eval",
    n_best: int = 20,
    max_answer_length: int = 30,
    scheme: Scheme = "auto",
    languages: Sequence[str] | None = None,
) -> QAResult:
    """Decode answers from logits (:func:`decode_predictions`) and score them (:func:`evaluate_predictions`)."""
    decoded = decode_predictions(examples, features, start_logits, end_logits,
                                 n_best=n_best, max_answer_length=max_answer_length)
    result = evaluate_predictions(examples, decoded.predictions, name=name, scheme=scheme, languages=languages)
    result.decode = DecodeInfo(n_best=n_best, max_answer_length=max_answer_length,
                               no_valid_span=len(decoded.no_valid_span), no_features=len(decoded.no_features))
    return result
