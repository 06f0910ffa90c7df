"""Cross-lingual classification metrics: accuracy per language and its disparity over languages.

Definitions (over the languages of one evaluation set, accuracies in percent):

* ``macro``: the mean of the per-language accuracies (each language weighs the same).
* ``transfer_gap``: the pivot language's accuracy minus the mean of the other languages' (XTREME's
  cross-lingual transfer gap; the pivot is the training language, default ``en``). None without the pivot
  or without another language.
* ``std``: the population standard deviation (``ddof=0``) of the per-language accuracies; ``max_min``: the
  highest minus the lowest; ``worst_language``: the lowest (ties: the first in language order).

:func:`mcnemar_exact` tests two systems' paired correctness vectors (``xdist compare`` runs the same test on
uid-keyed scores, :func:`xdist.compare.mcnemar_paired`); the bar chart is
:func:`xdist.evaluation.report.bar_figure`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from xdist.evaluation.result import mcnemar_p_value


@dataclass
class LanguageScores:
    """Accuracy per language of one evaluation set and the disparity summary over languages."""

    accuracy: dict[str, float]
    """Percent accuracy per language, in language order."""

    counts: dict[str, int]
    """Scored (labelled) examples per language."""

    pivot: str = "en"
    summary: dict[str, Any] = field(default_factory=dict)
    """``macro``, ``transfer_gap``, ``std``, ``max_min``, ``worst_language``, ``worst``, ``pivot``."""


def disparity(accuracy: dict[str, float], pivot: str = "en") -> dict[str, Any]:
    """The summary over languages of ``accuracy`` (see the module docstring)."""
    if not accuracy:
        raise ValueError("no languages to summarise")
    langs = list(accuracy)
    values = np.array([accuracy[lang] for lang in langs], dtype=np.float64)
    others = [accuracy[lang] for lang in langs if lang != pivot]
    gap = None
    if pivot in accuracy and others:
        gap = float(accuracy[pivot] - np.mean(others))
    worst = int(np.argmin(values))
    return {
        "macro": float(values.mean()),
        "transfer_gap": gap,
        "std": float(values.std()),
        "max_min": float(values.max() - values.min()),
        "worst_language": langs[worst],
        "worst": float(values[worst]),
        "pivot": pivot,
    }


def language_scores(
    predictions: Sequence[int], labels: Sequence[int | None], languages: Sequence[str], pivot: str = "en",
    order: Sequence[str] | None = None,
) -> LanguageScores:
    """Per-language accuracy of ``predictions`` against ``labels`` (None = unlabelled, not scored)."""
    correct: dict[str, int] = {}
    counts: dict[str, int] = {}
    for pred, gold, lang in zip(predictions, labels, languages, strict=True):
        counts.setdefault(lang, 0)
        correct.setdefault(lang, 0)
        if gold is None:
            continue
        counts[lang] += 1
        correct[lang] += int(pred == gold)
    langs = [lang for lang in (order or counts) if counts.get(lang)]
    accuracy = {lang: 100.0 * correct[lang] / counts[lang] for lang in langs}
    return LanguageScores(
        accuracy=accuracy, counts={lang: counts[lang] for lang in langs}, pivot=pivot,
        summary=disparity(accuracy, pivot) if accuracy else {},
    )


@dataclass(frozen=True)
class McNemar:
    """McNemar's exact test of two systems' paired correctness."""

    only_a: int
    """Examples system A gets right and B wrong (b)."""
    only_b: int
    """Examples B gets right and A wrong (c)."""
    both: int
    neither: int
    p_value: float


def mcnemar_exact(correct_a: Sequence[bool], correct_b: Sequence[bool]) -> McNemar:
    """McNemar's exact (binomial) test on paired correctness vectors of equal length:
    ``p = min(1, 2 * BinomCDF(min(b, c); b + c, 1/2))`` with ``b``/``c`` the examples only A/only B gets
    right (1 when ``b + c = 0``). The same test as :func:`xdist.compare.mcnemar_paired`, on vectors."""
    a = np.asarray(correct_a, dtype=bool)
    b = np.asarray(correct_b, dtype=bool)
    if a.shape != b.shape or a.ndim != 1:
        raise ValueError(f"paired correctness vectors must be 1-D and of equal length, got {a.shape} and {b.shape}")
    only_a, only_b = int((a & ~b).sum()), int((~a & b).sum())
    return McNemar(only_a, only_b, int((a & b).sum()), int((~a & ~b).sum()), mcnemar_p_value(only_a, only_b))
