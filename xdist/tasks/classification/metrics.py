"""Cross-lingual classification metrics, McNemar's test, the per-language bar chart and prediction files.

Definitions (over the languages of one evaluation set, accuracies in percent):

* ``macro``: the mean of the per-language accuracies (each language weighs the same).
* ``transfer_gap``: the pivot language's accuracy minus the mean of the other languages' (XTREME's
  cross-lingual transfer gap; the pivot is the training language, default ``en``). None without the pivot
  or without another language.
* ``std``: the population standard deviation (``ddof=0``) of the per-language accuracies; ``max_min``: the
  highest minus the lowest; ``worst_language``: the lowest (ties: the first in language order).
* McNemar's exact test on paired correctness of two systems over the same examples: with ``b`` = examples
  only A gets right and ``c`` = only B gets right, ``p = min(1, 2 * BinomCDF(min(b, c); b + c, 1/2))``
  (the two-sided exact binomial test of ``b`` successes in ``b + c`` trials; 1 when ``b + c = 0``).
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from scipy.stats import binom


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
    """McNemar's exact (binomial) test on paired correctness vectors of equal length."""
    a = np.asarray(correct_a, dtype=bool)
    b = np.asarray(correct_b, dtype=bool)
    if a.shape != b.shape or a.ndim != 1:
        raise ValueError(f"paired correctness vectors must be 1-D and of equal length, got {a.shape} and {b.shape}")
    only_a, only_b = int((a & ~b).sum()), int((~a & b).sum())
    n = only_a + only_b
    p = 1.0 if n == 0 else float(min(1.0, 2.0 * binom.cdf(min(only_a, only_b), n, 0.5)))
    return McNemar(only_a, only_b, int((a & b).sum()), int((~a & ~b).sum()), p)


# --------------------------------------------------------------------------------------------------
# Figures and files
# --------------------------------------------------------------------------------------------------


def bar_chart_figure(scores: LanguageScores, title: str = "") -> Any:
    """A matplotlib Figure (Agg canvas, no pyplot state): one bar per language, the pivot highlighted, the
    macro average as a dashed line, the worst language in red, the numbers on the bars."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    langs = list(scores.accuracy)
    values = [scores.accuracy[lang] for lang in langs]
    figure = Figure(figsize=(max(4.0, 0.55 * len(langs) + 1.5), 3.6), dpi=100)
    FigureCanvasAgg(figure)
    axes = figure.add_subplot(1, 1, 1)
    worst = scores.summary.get("worst_language")
    colours = ["tab:orange" if lang == scores.pivot else "tab:red" if lang == worst else "tab:blue" for lang in langs]
    bars = axes.bar(langs, values, color=colours)
    for bar, value in zip(bars, values, strict=True):
        axes.text(bar.get_x() + bar.get_width() / 2, value, f"{value:.1f}", ha="center", va="bottom", fontsize=7)
    macro = scores.summary.get("macro")
    if macro is not None:
        axes.axhline(macro, color="black", linestyle="--", linewidth=1, label=f"macro {macro:.1f}")
        axes.legend(loc="lower right", fontsize=7)
    gap = scores.summary.get("transfer_gap")
    subtitle = f"gap ({scores.pivot} − others) {gap:.1f}, " if gap is not None else ""
    subtitle += f"max−min {scores.summary.get('max_min', 0.0):.1f}"
    axes.set_title(f"{title}\n{subtitle}" if title else subtitle, fontsize=9)
    axes.set_ylabel("accuracy (%)")
    axes.set_ylim(0, 100)
    figure.tight_layout()
    return figure


def bar_chart_image(scores: LanguageScores, title: str = "") -> np.ndarray:
    """The bar chart as an ``[H, W, 3]`` uint8 array (TensorBoard's ``add_image(..., dataformats="HWC")``)."""
    figure = bar_chart_figure(scores, title)
    figure.canvas.draw()
    return np.asarray(figure.canvas.buffer_rgba())[..., :3].copy()


def save_bar_chart(scores: LanguageScores, path: str | os.PathLike, title: str = "") -> Path:
    """Write the bar chart PNG to ``path``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    bar_chart_figure(scores, title).savefig(path)
    return path


def write_predictions(
    directory: str | os.PathLike, uids: Sequence[str], languages: Sequence[str], predictions: Sequence[int],
    labels: Sequence[int | None], class_names: Sequence[str], probabilities: np.ndarray | None = None,
) -> list[Path]:
    """One ``<language>.jsonl`` per language: ``{"uid", "prediction", "label", "correct"}`` per example (class
    names; ``label``/``correct`` null when unlabelled), plus ``probabilities`` when given. Returns the files."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    lines: dict[str, list[str]] = {}
    for i, (uid, lang, pred, gold) in enumerate(zip(uids, languages, predictions, labels, strict=True)):
        record: dict[str, Any] = {
            "uid": uid, "prediction": class_names[pred], "label": None if gold is None else class_names[gold],
            "correct": None if gold is None else bool(pred == gold),
        }
        if probabilities is not None:
            record["probabilities"] = [round(float(p), 6) for p in probabilities[i]]
        lines.setdefault(lang, []).append(json.dumps(record, ensure_ascii=False))
    paths = []
    for lang, rows in lines.items():
        path = directory / f"{lang}.jsonl"
        path.write_text("\n".join(rows) + "\n", encoding="utf-8")
        paths.append(path)
    return paths
