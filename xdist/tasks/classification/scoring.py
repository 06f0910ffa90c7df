"""Scoring one classification evaluation set from its logits, and writing its report files.

:func:`score_set` turns the gathered class logits of a set into predictions (argmax; ties: the lower class
id), per-language accuracy with the disparity summary (:mod:`xdist.tasks.classification.metrics`) and a
per-example correctness score (1.0 / 0.0, by uid) — what ``xdist compare`` pairs for McNemar's test.
:func:`write_set_report` writes the per-language prediction files and the bar chart.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from xdist.tasks.classification.examples import ClassificationExample
from xdist.tasks.classification.metrics import (
    LanguageScores,
    bar_chart_image,
    language_scores,
    save_bar_chart,
    write_predictions,
)


def softmax(logits: np.ndarray) -> np.ndarray:
    """Row-wise softmax in float64."""
    z = np.asarray(logits, dtype=np.float64)
    z = z - z.max(axis=-1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=-1, keepdims=True)


@dataclass
class SetScores:
    """Everything scored on one evaluation set."""

    name: str
    class_names: list[str]
    uids: list[str]
    languages: list[str]
    predictions: np.ndarray
    """Predicted class id per example ``[N]``."""
    labels: list[int | None]
    probabilities: np.ndarray
    """Softmax of the class logits ``[N, C]``."""
    scores: LanguageScores
    examples: dict[str, float] = field(default_factory=dict)
    """uid -> 1.0 (correct) / 0.0 (wrong), labelled examples only."""

    def summary(self) -> dict[str, Any]:
        """``macro``, ``transfer_gap``, ``std``, ``max_min``, ``worst_language``, ``worst``, ``pivot``."""
        return dict(self.scores.summary)

    def to_json(self) -> dict[str, Any]:
        """The set's block of ``metrics.json``."""
        return {"accuracy": dict(self.scores.accuracy), "counts": dict(self.scores.counts), **self.summary()}


def score_set(
    name: str, examples: list[ClassificationExample], logits: np.ndarray, class_names: list[str], pivot: str = "en"
) -> SetScores:
    """Score ``examples`` (in the order of ``logits``' rows) from their class logits ``[N, C]``."""
    logits = np.asarray(logits, dtype=np.float64)
    if logits.shape[0] != len(examples):
        raise ValueError(f"set {name!r}: {logits.shape[0]} logit rows for {len(examples)} examples")
    predictions = logits.argmax(axis=-1)
    labels = [e.label for e in examples]
    languages = [e.language for e in examples]
    order = list(dict.fromkeys(languages))
    scores = language_scores(predictions.tolist(), labels, languages, pivot=pivot, order=order)
    per_example = {
        e.uid: float(p == e.label) for e, p in zip(examples, predictions, strict=True) if e.label is not None
    }
    return SetScores(
        name=name, class_names=list(class_names), uids=[e.uid for e in examples], languages=languages,
        predictions=predictions, labels=labels, probabilities=softmax(logits), scores=scores, examples=per_example,
    )


def write_set_report(result: SetScores, output_dir: str | os.PathLike, *, chart: bool = True) -> dict[str, Any]:
    """Write ``predictions/<set>/<lang>.jsonl`` and (``chart``) ``charts/<set>.png`` under ``output_dir``.

    Returns the written paths: ``{"predictions": [...], "chart": path or None}``.
    """
    output_dir = Path(output_dir)
    files = write_predictions(
        output_dir / "predictions" / result.name, result.uids, result.languages, result.predictions.tolist(),
        result.labels, result.class_names, result.probabilities,
    )
    path = None
    if chart and result.scores.accuracy:
        path = save_bar_chart(result.scores, output_dir / "charts" / f"{result.name}.png", title=result.name)
    return {"predictions": files, "chart": path}


def chart_image(result: SetScores) -> np.ndarray | None:
    """The bar chart as an ``[H, W, 3]`` uint8 image for TensorBoard (None without labelled examples)."""
    return bar_chart_image(result.scores, result.name) if result.scores.accuracy else None
