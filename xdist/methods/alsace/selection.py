"""ALSACE teacher-language selection (Zhao et al. 2024 §3.1; methods.md §C.3).

Input: the stage-0 model's class distributions on an **unlabelled parallel** set, ``probs[l, i, c]`` =
P(class c | instance i in language l), shape ``[L, N, C]`` (every language holds the same N instances in
the same order). Steps, each with its documented options:

1. **Pseudo-label by majority vote.** Every language votes for its argmax class; the instance's
   pseudo-label is the class with the most votes. The paper leaves ties open (``tie_break``):
   ``probability`` (default) — among the tied classes, the one with the highest probability summed over
   all languages (exact equality of those sums: the lowest class index); ``lowest`` — the lowest tied
   class index (what ``argmax`` over the vote counts does); ``exclude`` — a tied instance gets no
   pseudo-label and does not count in R_l. A language's own argmax breaks its ties by the lowest index
   (``numpy.argmax``), as in the authors' ``torch.argmax``.
2. **R_l**, the language's confidence on the pseudo-labels (``reliability``): ``probability`` (default) =
   mean over instances of the probability the language gives the pseudo-label, the paper's "average
   confidence score"; ``agreement`` = fraction of instances whose argmax equals the pseudo-label.
3. **S_l** (``normalise``): ``sum`` (default) = R_l / Σ R; ``softmax`` = exp(R_l) / Σ exp(R) (a
   second-hand summary of the paper's formula). Both are reported, with the languages whose side would
   change under the other normalisation.
4. **ξ = mean S** (= 1/L for both normalisations); teachers = {l : S_l > ξ} (``comparison: ">"``, default)
   or {S_l >= ξ} (``">="``); students = the rest. Equality is judged to ``1e-12`` absolute on S, so that
   the rounding of the normalisation never decides a side. With ``sum``, S_l > ξ iff R_l > mean R.

Alternatives (no model needed): a **fixed ranking** plus a number of students (the authors' released code
hard-codes the XNLI ranking below with 8 students; it implements no vote), a **fixed teacher list**, or a
seeded **random** split with a number of students (the paper's "no selection" ablation).

The **ranking** of a selection orders every language, teachers first: by S_l descending (vote; ties keep
the data order), as given (ranking), or the teacher list then the students in data order (teachers). In
every language pair of :mod:`xdist.data.parallel` the higher-ranked language comes first.

Output: :func:`write_selection` writes ``selection.json`` (options, vote counts, R_l, S_l, ξ, teachers,
students, instances used, ties) and a bar chart of S_l with ξ drawn and the teachers coloured
(:func:`selection_image` gives the same picture as an array for TensorBoard).
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from xdist.errors import UserError
from xdist.fileio import write_text_atomic
from xdist.methods.alsace.config import SelectionConfig

TieBreak = Literal["probability", "lowest", "exclude"]
Reliability = Literal["probability", "agreement"]
Normalise = Literal["sum", "softmax"]
Comparison = Literal[">", ">="]
Mode = Literal["vote", "ranking", "teachers", "random"]

XNLI_RANKING = ("en", "fr", "bg", "es", "de", "vi", "ru", "el", "zh", "th", "tr", "hi", "ar", "ur", "sw")
"""The authors' hard-coded XNLI ranking (pkunlp-icler/ALSACE ``tasks/xglue/dataset.py``)."""
XNLI_AUTHORS_STUDENTS = 8
"""``--ensemble_weak_number`` of the authors' XNLI script: the last 8 of the ranking are students."""
PAWSX_RANKING = ("en", "es", "fr", "de", "zh", "ko", "ja")
"""The authors' hard-coded PAWS-X ranking (``tasks/xtreme/dataset.py``); their number of students for
PAWS-X is not in the released scripts."""

SELECTION_FORMAT = "xdist-alsace-selection"
SELECTION_VERSION = 1
_EQUAL_ATOL = 1e-12


class SelectionError(UserError, ValueError):
    """Bad input to the selection (shapes, probabilities, languages) or a selection file that cannot be used."""


# --------------------------------------------------------------------------------------------------
# The steps
# --------------------------------------------------------------------------------------------------


@dataclass
class Vote:
    """Result of :func:`majority_vote` over N instances and C classes."""

    labels: np.ndarray
    """[N] int64 pseudo-label, -1 for an instance excluded by ``tie_break: exclude``."""
    counts: np.ndarray
    """[N, C] int64 number of languages whose argmax is each class."""
    tied: np.ndarray
    """[N] bool: more than one class has the maximum vote count."""


def check_probabilities(probs: np.ndarray, languages: Sequence[str]) -> np.ndarray:
    """``probs`` as float64 ``[L, N, C]`` after checking it; SelectionError saying what is wrong otherwise."""
    probs = np.asarray(probs)
    if probs.ndim != 3:
        raise SelectionError(f"class probabilities must be [languages, instances, classes], got shape {probs.shape}")
    n_lang, n_inst, n_cls = probs.shape
    if n_lang != len(languages):
        raise SelectionError(f"class probabilities hold {n_lang} languages but {len(languages)} are named")
    if len(set(languages)) != len(languages):
        raise SelectionError(f"languages named twice: {sorted(languages)}")
    if n_inst == 0 or n_cls < 2:
        raise SelectionError(f"need at least one instance and two classes, got {n_inst} and {n_cls}")
    probs = probs.astype(np.float64)
    if not np.isfinite(probs).all() or (probs < 0).any():
        raise SelectionError("class probabilities must be finite and >= 0 (pass softmax outputs, not logits)")
    worst = np.abs(probs.sum(-1) - 1.0).max()
    if worst > 1e-3:
        raise SelectionError(f"class probabilities must sum to 1 per instance (off by up to {worst:.3g})")
    return probs


def majority_vote(probs: np.ndarray, tie_break: TieBreak = "probability") -> Vote:
    """Pseudo-labels of ``probs`` [L, N, C] by majority vote of the languages' argmax (module docstring)."""
    n_lang, n_inst, n_cls = probs.shape
    predictions = probs.argmax(-1)  # [L, N]
    counts = np.zeros((n_inst, n_cls), dtype=np.int64)
    np.add.at(counts, (np.broadcast_to(np.arange(n_inst), predictions.shape), predictions), 1)
    top = counts.max(-1, keepdims=True)
    is_top = counts == top
    tied = is_top.sum(-1) > 1
    if tie_break == "probability":
        summed = probs.sum(0)  # [N, C]
        labels = np.where(is_top, summed, -np.inf).argmax(-1)
    elif tie_break in ("lowest", "exclude"):
        labels = is_top.argmax(-1)
        if tie_break == "exclude":
            labels = np.where(tied, -1, labels)
    else:
        raise SelectionError(f"tie_break must be 'probability', 'lowest' or 'exclude', got {tie_break!r}")
    return Vote(labels=labels.astype(np.int64), counts=counts, tied=tied)


def reliability(probs: np.ndarray, labels: np.ndarray, measure: Reliability = "probability") -> np.ndarray:
    """R_l [L]: each language's mean probability of the pseudo-label (``probability``) or its agreement rate
    with it (``agreement``), over the instances that have a pseudo-label (``labels >= 0``)."""
    used = labels >= 0
    if not used.any():
        raise SelectionError("no instance has a pseudo-label (every vote was tied and tie_break is 'exclude')")
    kept, kept_labels = probs[:, used], labels[used]
    if measure == "probability":
        return np.take_along_axis(kept, kept_labels[None, :, None], axis=-1)[..., 0].mean(-1)
    if measure == "agreement":
        return (kept.argmax(-1) == kept_labels[None]).mean(-1)
    raise SelectionError(f"reliability must be 'probability' or 'agreement', got {measure!r}")


def normalise_scores(scores: np.ndarray, how: Normalise = "sum") -> np.ndarray:
    """S_l from R_l: ``sum`` R / Σ R, or ``softmax`` exp(R) / Σ exp(R)."""
    scores = np.asarray(scores, dtype=np.float64)
    if how == "sum":
        total = scores.sum()
        if total <= 0:
            raise SelectionError("every language's R_l is 0: the 'sum' normalisation is undefined")
        return scores / total
    if how == "softmax":
        shifted = np.exp(scores - scores.max())
        return shifted / shifted.sum()
    raise SelectionError(f"normalise must be 'sum' or 'softmax', got {how!r}")


def threshold_split(normalised: np.ndarray, comparison: Comparison = ">") -> tuple[float, np.ndarray]:
    """(ξ = mean S, teacher mask [L]); equality judged to 1e-12 absolute (module docstring)."""
    xi = float(np.mean(normalised))
    if comparison == ">":
        return xi, normalised > xi + _EQUAL_ATOL
    if comparison == ">=":
        return xi, normalised >= xi - _EQUAL_ATOL
    raise SelectionError(f"comparison must be '>' or '>=', got {comparison!r}")


# --------------------------------------------------------------------------------------------------
# The selection
# --------------------------------------------------------------------------------------------------


@dataclass
class Selection:
    """A teacher/student split of a task's languages and how it was reached (``selection.json``)."""

    mode: Mode
    """``vote`` (computed from the model), ``ranking`` (fixed ranking + number of students), ``teachers``
    (fixed teacher list) or ``random`` (seeded random split, an ablation)."""
    languages: list[str]
    """Every language, in the data's order."""
    ranking: list[str]
    """Every language, highest first; teachers precede students (module docstring)."""
    teachers: list[str]
    """Teacher languages in ranking order."""
    students: list[str]
    """Student languages in ranking order."""
    options: dict[str, Any] = field(default_factory=dict)
    """The options that produced the split."""
    vote: dict[str, Any] | None = None
    """The majority-vote statistics when class probabilities were given (also in ``ranking``/``teachers``
    mode, for comparison): per-language votes, R_l (both measures), S_l (both normalisations), ξ, the
    data-driven split, instances used, ties."""

    def rank(self, language: str) -> int:
        """Position of ``language`` in the ranking (0 = highest)."""
        return self.ranking.index(language)

    def to_dict(self) -> dict[str, Any]:
        return {"format": SELECTION_FORMAT, "version": SELECTION_VERSION, "mode": self.mode,
                "languages": self.languages, "ranking": self.ranking, "teachers": self.teachers,
                "students": self.students, "options": self.options, "vote": self.vote}  # fmt: skip


def _vote_statistics(
    probs: np.ndarray,
    languages: Sequence[str],
    *,
    tie_break: TieBreak,
    reliability_measure: Reliability,
    normalise: Normalise,
    comparison: Comparison,
    class_names: Sequence[str] | None,
) -> tuple[dict[str, Any], np.ndarray, np.ndarray]:
    """(the ``vote`` section of the report, S [L] of the chosen normalisation, teacher mask [L])."""
    vote = majority_vote(probs, tie_break)
    used = vote.labels >= 0
    by_measure = {m: reliability(probs, vote.labels, m) for m in ("probability", "agreement")}
    r = by_measure[reliability_measure]
    other_normalise = "softmax" if normalise == "sum" else "sum"
    s, s_other = normalise_scores(r, normalise), normalise_scores(r, other_normalise)
    xi, teacher = threshold_split(s, comparison)
    _, teacher_other_norm = threshold_split(s_other, comparison)
    _, teacher_other_cmp = threshold_split(s, ">=" if comparison == ">" else ">")
    n_cls = probs.shape[-1]
    predictions = probs.argmax(-1)
    per_language = {}
    for index, language in enumerate(languages):
        per_language[language] = {
            "votes": np.bincount(predictions[index], minlength=n_cls).tolist(),
            "mean_probability": float(by_measure["probability"][index]),
            "agreement": float(by_measure["agreement"][index]),
            "R": float(r[index]),
            "S": float(s[index]),
            f"S_{other_normalise}": float(s_other[index]),
            "teacher": bool(teacher[index]),
        }
    order = _ranked(languages, s)
    section = {
        "instances": int(probs.shape[1]),
        "instances_used": int(used.sum()),
        "classes": list(class_names) if class_names is not None else list(range(n_cls)),
        "pseudo_label_counts": np.bincount(vote.labels[used], minlength=n_cls).tolist(),
        "ties": {"count": int(vote.tied.sum()), "instances": np.flatnonzero(vote.tied).tolist(),
                 "rule": tie_break},  # fmt: skip
        "per_language": per_language,
        "xi": xi,
        "teachers": [lang for lang in order if teacher[languages.index(lang)]],
        "students": [lang for lang in order if not teacher[languages.index(lang)]],
        "ranking": order,
        "differ_under_other_normalisation": {
            "normalise": other_normalise,
            "languages": [lang for i, lang in enumerate(languages) if teacher[i] != teacher_other_norm[i]],
        },
        "differ_under_other_comparison": [
            lang for i, lang in enumerate(languages) if teacher[i] != teacher_other_cmp[i]
        ],
    }
    return section, s, teacher


def _ranked(languages: Sequence[str], normalised: np.ndarray) -> list[str]:
    """Languages by S descending; equal S keeps the data order (stable sort)."""
    order = np.argsort(-np.asarray(normalised), kind="stable")
    return [languages[i] for i in order]


def select_teachers(
    languages: Sequence[str],
    probs: np.ndarray | None = None,
    *,
    mode: Mode = "vote",
    tie_break: TieBreak = "probability",
    reliability_measure: Reliability = "probability",
    normalise: Normalise = "sum",
    comparison: Comparison = ">",
    ranking: Sequence[str] | None = None,
    n_students: int | None = None,
    teachers: Sequence[str] | None = None,
    seed: int = 100,
    class_names: Sequence[str] | None = None,
) -> Selection:
    """The teacher/student split of ``languages`` (module docstring).

    ``probs`` [L, N, C] (languages in the order of ``languages``) is required for ``mode="vote"``; with it,
    the other modes also record the vote statistics. ``ranking`` + ``n_students`` serve ``mode="ranking"``,
    ``teachers`` serves ``mode="teachers"``, ``n_students`` + ``seed`` serve ``mode="random"`` (the paper's
    "no selection" ablation: a seeded random split).
    """
    languages = list(languages)
    options: dict[str, Any] = {"tie_break": tie_break, "reliability": reliability_measure,
                               "normalise": normalise, "comparison": comparison}  # fmt: skip
    vote_section = None
    if probs is not None:
        probs = check_probabilities(probs, languages)
        vote_section, s, teacher_mask = _vote_statistics(
            probs, languages, tie_break=tie_break, reliability_measure=reliability_measure, normalise=normalise,
            comparison=comparison, class_names=class_names,
        )
    elif len(set(languages)) != len(languages):
        raise SelectionError(f"languages named twice: {sorted(languages)}")

    if mode == "vote":
        if probs is None:
            raise SelectionError("mode 'vote' needs the model's class probabilities (run xdist select-teachers)")
        if not teacher_mask.any():
            raise SelectionError(
                f"no language scores above xi = {vote_section['xi']:.6g} (every R_l is equal): use comparison "
                "'>=', a fixed ranking or a fixed teacher list"
            )
        order = vote_section["ranking"]
        chosen = [lang for lang in order if teacher_mask[languages.index(lang)]]
    elif mode == "ranking":
        if ranking is None or n_students is None:
            raise SelectionError("mode 'ranking' needs 'ranking' and 'n_students'")
        order = list(ranking)
        _same_languages("ranking", order, languages)
        if not 0 <= n_students < len(order):
            raise SelectionError(f"n_students must be in [0, {len(order) - 1}] for {len(order)} languages, "
                                 f"got {n_students}")  # fmt: skip
        chosen = order[: len(order) - n_students]
        options.update(ranking=order, n_students=n_students)
    elif mode == "random":
        if n_students is None:
            raise SelectionError("mode 'random' needs 'n_students' (and 'seed')")
        if not 0 <= n_students < len(languages):
            raise SelectionError(f"n_students must be in [0, {len(languages) - 1}] for {len(languages)} languages, "
                                 f"got {n_students}")  # fmt: skip
        # The ablation "no selection, random split": a seeded permutation of the data's languages.
        order = [languages[i] for i in np.random.default_rng(seed).permutation(len(languages))]
        chosen = order[: len(order) - n_students]
        options.update(n_students=n_students, seed=seed)
    elif mode == "teachers":
        if not teachers:
            raise SelectionError("mode 'teachers' needs a non-empty 'teachers' list")
        unknown = [lang for lang in teachers if lang not in languages]
        if unknown or len(set(teachers)) != len(teachers):
            raise SelectionError(f"teachers {list(teachers)} must be distinct languages of the data {languages}"
                                 f"{f'; not in the data: {unknown}' if unknown else ''}")  # fmt: skip
        chosen = list(teachers)
        order = chosen + [lang for lang in languages if lang not in chosen]
        options.update(teachers=chosen)
    else:
        raise SelectionError(f"mode must be 'vote', 'ranking', 'teachers' or 'random', got {mode!r}")
    students = [lang for lang in order if lang not in chosen]
    return Selection(mode=mode, languages=languages, ranking=list(order), teachers=chosen, students=students,
                     options=options, vote=vote_section)  # fmt: skip


def _same_languages(what: str, given: Sequence[str], languages: Sequence[str]) -> None:
    missing = [lang for lang in languages if lang not in given]
    extra = [lang for lang in given if lang not in languages]
    if missing or extra or len(set(given)) != len(given):
        raise SelectionError(
            f"{what} {list(given)} must name every language of the data exactly once "
            f"(data: {list(languages)}; missing {missing}, not in the data {extra})"
        )


# --------------------------------------------------------------------------------------------------
# selection.json and the chart
# --------------------------------------------------------------------------------------------------


def write_selection(selection: Selection, output_dir: str | os.PathLike, *, chart: bool = True) -> dict[str, Path]:
    """Write ``selection.json`` (and ``selection.png`` when the vote was computed and ``chart``) atomically."""
    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    path = output_dir / "selection.json"
    write_text_atomic(path, json.dumps(selection.to_dict(), ensure_ascii=False, indent=2) + "\n")
    files = {"selection": path}
    if chart and selection.vote is not None:
        files["chart"] = output_dir / "selection.png"
        selection_figure(selection).savefig(files["chart"], format="png")
    return files


def load_selection(path: str | os.PathLike, languages: Sequence[str] | None = None) -> Selection:
    """Read a ``selection.json``; with ``languages`` (the data's), check that the split covers exactly them.

    SelectionError naming the file and what is wrong: not a selection file, a newer version, a language
    in both groups, or languages that are not the data's.
    """
    path = Path(path)
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise SelectionError(f"{path}: no selection file (run xdist select-teachers first)") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise SelectionError(f"{path}: not valid JSON ({error})") from None
    if not isinstance(raw, dict) or raw.get("format") != SELECTION_FORMAT:
        raise SelectionError(f"{path}: not an xdist selection file (no \"format\": \"{SELECTION_FORMAT}\")")
    if raw.get("version") != SELECTION_VERSION:
        raise SelectionError(f"{path}: selection format version {raw.get('version')!r}, this xdist reads "
                             f"{SELECTION_VERSION}")  # fmt: skip
    try:
        selection = Selection(mode=raw["mode"], languages=list(raw["languages"]), ranking=list(raw["ranking"]),
                              teachers=list(raw["teachers"]), students=list(raw["students"]),
                              options=dict(raw.get("options") or {}), vote=raw.get("vote"))  # fmt: skip
    except (KeyError, TypeError) as error:
        raise SelectionError(f"{path}: missing or malformed field {error}") from None
    both = set(selection.teachers) & set(selection.students)
    if both:
        raise SelectionError(f"{path}: languages {sorted(both)} are both teachers and students")
    if not selection.teachers:
        raise SelectionError(f"{path}: no teacher language")
    if selection.ranking != selection.teachers + selection.students:
        raise SelectionError(f"{path}: 'ranking' must be the teachers followed by the students")
    if languages is not None:
        languages = list(languages)
        not_in_data = [lang for lang in selection.ranking if lang not in languages]
        not_selected = [lang for lang in languages if lang not in selection.ranking]
        if not_in_data or not_selected:
            raise SelectionError(
                f"{path}: the selection's languages do not match the data's {languages}: "
                f"not in the data {not_in_data}, not in the selection {not_selected}; re-run xdist "
                "select-teachers on this data or fix the unlabelled source's languages"
            )
    return selection


def selection_figure(selection: Selection) -> Figure:
    """Bar chart of S_l in ranking order with ξ as a dashed line; teachers coloured, students grey."""
    if selection.vote is None:
        raise SelectionError("this selection has no vote statistics to draw (it was not computed from a model)")
    per_language = selection.vote["per_language"]
    order = selection.ranking
    values = [per_language[lang]["S"] for lang in order]
    colors = ["tab:blue" if lang in selection.teachers else "tab:gray" for lang in order]
    figure = Figure(figsize=(max(4.0, 0.45 * len(order) + 1.5), 3.2), dpi=100)
    FigureCanvasAgg(figure)
    axes = figure.add_subplot()
    axes.bar(range(len(order)), values, color=colors)
    xi = selection.vote["xi"]
    axes.axhline(xi, color="tab:red", linestyle="--", linewidth=1, label=f"ξ = {xi:.4f}")
    low, high = min(values), max(values)
    margin = max(high - low, 1e-6) * 0.5
    axes.set_ylim(max(0.0, low - margin), high + margin)  # S_l differ by little: zoom on them
    axes.set_xticks(range(len(order)), labels=order)
    axes.set_ylabel(f"S_l ({selection.options.get('normalise', 'sum')})")
    used = selection.vote["instances_used"]
    axes.set_title(f"ALSACE selection ({selection.mode}, {used} instances)\n{len(selection.teachers)} teachers "
                   f"(blue), {len(selection.students)} students (grey)", fontsize=9)  # fmt: skip
    axes.legend(fontsize=8, loc="upper right")
    figure.tight_layout()
    return figure


def selection_image(selection: Selection) -> np.ndarray:
    """:func:`selection_figure` as an ``H×W×3`` uint8 RGB array, for
    ``SummaryWriter.add_image(tag, image, step, dataformats="HWC")``."""
    canvas = selection_figure(selection).canvas
    canvas.draw()
    return np.asarray(canvas.buffer_rgba())[..., :3].copy()


def softmax(logits: np.ndarray) -> np.ndarray:
    """Row softmax over the last axis in float64 (class logits → the probabilities the selection reads)."""
    logits = np.asarray(logits, dtype=np.float64)
    shifted = logits - logits.max(-1, keepdims=True)
    exp = np.exp(shifted)
    return exp / exp.sum(-1, keepdims=True)


def scalars(selection: Selection) -> dict[str, float]:
    """TensorBoard scalars of a computed selection: ``select/R/<l>``, ``select/S/<l>``, ``select/xi``."""
    if selection.vote is None:
        return {}
    values = {"select/xi": float(selection.vote["xi"])}
    for lang, stats in selection.vote["per_language"].items():
        values[f"select/R/{lang}"] = float(stats["R"])
        values[f"select/S/{lang}"] = float(stats["S"])
    values["select/teachers"] = float(len(selection.teachers))
    values["select/ties"] = float(selection.vote["ties"]["count"])
    return {k: v for k, v in values.items() if math.isfinite(v)}


def select_from_config(
    cfg: SelectionConfig,
    languages: Sequence[str],
    probs: np.ndarray | None = None,
    class_names: Sequence[str] | None = None,
) -> Selection:
    """:func:`select_teachers` with the options of a ``method.alsace.selection`` section."""
    return select_teachers(
        languages, probs, mode=cfg.mode, tie_break=cfg.tie_break, reliability_measure=cfg.reliability,
        normalise=cfg.normalise, comparison=cfg.comparison, ranking=cfg.ranking, n_students=cfg.n_students,
        teachers=cfg.teachers, seed=cfg.seed, class_names=class_names,
    )  # fmt: skip
