"""Scoring one classification evaluation set from its logits into the task-agnostic
:class:`~xdist.evaluation.result.EvalResult`.

Predictions are the argmax of the class logits (ties: the lower class id). Groups are languages (in the
set's order) with their accuracy (percent) and example count; the summary is the disparity over languages
(:func:`xdist.tasks.classification.metrics.disparity`: macro average, transfer gap, std, max − min, worst
language); every labelled example has a ``correct`` score (1.0 / 0.0) under its uid, which ``xdist
compare`` pairs across runs for McNemar's exact test. Prediction files ``predictions/<set>/<lang>.json``
map uid → ``{prediction, label, correct, probabilities}`` (class names; unlabelled rows have null label).
A branched (MBLM) model's sets also report its supervised and zero-shot languages apart (macro accuracy of
each, and a McNemar scope each).
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np

from xdist.evaluation.result import EvalResult, PairedSpec, Scope, View
from xdist.tasks.classification.examples import ClassificationExample
from xdist.tasks.classification.metrics import LanguageScores, language_scores

VIEW = View(
    columns={"macro": "macro acc", "transfer_gap": "gap (pivot − rest)", "std": "std", "max_min": "max − min",
             "worst": "worst acc", "worst_language": "worst"},
    headline=("macro", "transfer_gap"),
    group_metric="accuracy",
    group_label="accuracy (%)",
    group_tags={"accuracy": "accuracy"},
    group_kind="language",
    figure_tag="accuracy_by_language",
)
"""How tables, logs and TensorBoard present a classification set."""


def softmax(logits: np.ndarray) -> np.ndarray:
    """Row-wise softmax in float64."""
    z = np.asarray(logits, dtype=np.float64)
    z = z - z.max(axis=-1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=-1, keepdims=True)


@dataclass
class SetScores:
    """Everything scored on one evaluation set (:meth:`result` is its :class:`EvalResult`)."""

    name: str
    class_names: list[str]
    examples: list[ClassificationExample]
    predictions: np.ndarray
    """Predicted class id per example ``[N]``."""
    probabilities: np.ndarray
    """Softmax of the class logits ``[N, C]``."""
    scores: LanguageScores
    supervised: list[str] | None = None
    """A branched model's supervised languages (None: an ordinary model): the summary adds the macro
    accuracy of these (``supervised_macro``) and of the others (``zero_shot_macro``), and ``xdist compare``
    tests each group of languages as a scope of its own."""

    def language_groups(self) -> dict[str, list[str]]:
        """``supervised``/``zero_shot`` -> the set's scored languages in each (empty without branches)."""
        if self.supervised is None:
            return {}
        scored = list(self.scores.accuracy)
        return {"supervised": [lang for lang in scored if lang in self.supervised],
                "zero_shot": [lang for lang in scored if lang not in self.supervised]}

    def correct(self) -> dict[str, float]:
        """uid -> 1.0 (right) / 0.0 (wrong), labelled examples only."""
        return {e.uid: float(p == e.label) for e, p in zip(self.examples, self.predictions, strict=True)
                if e.label is not None}

    def prediction_files(self) -> dict[str, dict[str, dict]]:
        """``predictions/<set>/<lang>.json`` -> uid -> prediction record."""
        files: dict[str, dict[str, dict]] = {}
        for e, p, probs in zip(self.examples, self.predictions, self.probabilities, strict=True):
            files.setdefault(f"predictions/{self.name}/{e.language}.json", {})[e.uid] = {
                "prediction": self.class_names[p], "label": None if e.label is None else self.class_names[e.label],
                "correct": None if e.label is None else bool(p == e.label),
                "probabilities": [round(float(x), 6) for x in probs],
            }
        return files

    def result(self) -> EvalResult:
        summary = dict(self.scores.summary)
        summary["num_examples"] = sum(self.scores.counts.values())
        scopes = {"all": Scope("all languages")}
        view = VIEW
        for kind, langs in self.language_groups().items():
            label = kind.replace("_", "-")
            summary[f"{kind}_macro"] = (float(np.mean([self.scores.accuracy[lang] for lang in langs]))
                                        if langs else None)
            if langs:
                scopes[kind] = Scope(f"{label} languages ({', '.join(langs)})", tuple(langs))
            view = replace(view, columns={**view.columns, f"{kind}_macro": f"{label} acc"})
        groups = {lang: {"accuracy": acc, "num_examples": self.scores.counts[lang]}
                  for lang, acc in self.scores.accuracy.items()}
        correct = self.correct()
        return EvalResult(
            name=self.name, task="classification", summary=summary, groups=groups,
            examples={uid: {"correct": value} for uid, value in correct.items()},
            example_groups={e.uid: e.language for e in self.examples if e.uid in correct},
            paired=PairedSpec("correct", "mcnemar", scopes),
            view=view, details={"class_names": list(self.class_names)}, files=self.prediction_files(),
        )


def score_set(
    name: str, examples: list[ClassificationExample], logits: np.ndarray, class_names: list[str], pivot: str = "en",
    supervised: list[str] | None = None,
) -> SetScores:
    """Score ``examples`` (in the order of ``logits``' rows) from their class logits ``[N, C]``; ``supervised``:
    a branched model's supervised languages (:attr:`SetScores.supervised`)."""
    logits = np.asarray(logits, dtype=np.float64)
    if logits.shape[0] != len(examples):
        raise ValueError(f"set {name!r}: {logits.shape[0]} logit rows for {len(examples)} examples")
    predictions = logits.argmax(axis=-1)
    languages = [e.language for e in examples]
    scores = language_scores(predictions.tolist(), [e.label for e in examples], languages, pivot=pivot,
                             order=list(dict.fromkeys(languages)))
    return SetScores(name=name, class_names=list(class_names), examples=list(examples), predictions=predictions,
                     probabilities=softmax(logits), scores=scores, supervised=supervised)
