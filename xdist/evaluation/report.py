"""Evaluation output on disk: ``metrics.json``, official-format prediction files, G-XLT heatmaps.

Layout under ``output_dir``::

    metrics.json                         summary + per set: cells, G-XLT, XLT, counts, normalisers
    predictions/<set>/<q>-<c>.json       {question id: answer text}: feed to evaluate-v1.1.py / MLQA's script
    example_scores/<set>.json            {uid: {"exact_match": 0|1, "f1": 0..1}} for significance tests
    heatmaps/<set>.png                   F1 matrix, rows = question language, columns = context language

Figures are drawn on matplotlib's object API with the Agg canvas (no pyplot global state, no display),
so they are safe in training processes and threads.
"""

from __future__ import annotations

import json
import math
import os
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from xdist.data.examples import cell_name
from xdist.evaluation.metrics import EvalResult, EvalSummary

_SAFE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")


@dataclass
class ReportFiles:
    """Paths written by :func:`write_report`."""

    metrics: Path
    predictions: dict[str, dict[str, Path]] = field(default_factory=dict)
    """set → ``"<q>-<c>"`` → prediction file."""

    example_scores: dict[str, Path] = field(default_factory=dict)
    heatmaps: dict[str, Path] = field(default_factory=dict)


def check_file_name(kind: str, name: str, hint: str = "") -> str:
    """``name``, which becomes part of a file path; a ValueError naming ``kind`` unless it is a plain name."""
    if not _SAFE_NAME.fullmatch(name):
        raise ValueError(
            f"{kind} {name!r} cannot be used in a file name; expected letters, digits, '.', '_', '-'{hint}"
        )
    return name


def _write_json(path: Path, data: object) -> None:
    """Write JSON atomically (temporary file + rename), so a reader never sees half a file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f".{path.name}.tmp")
    temporary.write_text(json.dumps(data, ensure_ascii=False, indent=2) + "\n", encoding="utf-8")
    os.replace(temporary, path)


def matrix_figure(
    values: np.ndarray,
    languages: Sequence[str],
    title: str,
    *,
    cmap: str,
    limits: tuple[float, float],
    label: str,
    annotate: Callable[[int, int, float], tuple[str, str]],
) -> Figure:
    """A language x language matrix as a heatmap (rows: question, columns: context language; NaN: blank).

    ``annotate(row, column, value)`` gives each present cell's text and its colour; ``label`` names the
    colour bar. The per-run heatmaps here and the difference heatmaps of :mod:`xdist.compare` are drawn by it.
    """
    n = len(languages)
    size = max(3.5, 0.55 * n + 1.8)
    figure = Figure(figsize=(size + 0.9, size), dpi=100)
    FigureCanvasAgg(figure)
    axes = figure.add_subplot()
    image = axes.imshow(np.ma.masked_invalid(values), cmap=cmap, vmin=limits[0], vmax=limits[1])
    axes.set_xticks(range(n), labels=list(languages))
    axes.set_yticks(range(n), labels=list(languages))
    axes.set_xlabel("context language")
    axes.set_ylabel("question language")
    for row in range(n):
        for column in range(n):
            value = values[row, column]
            if not math.isnan(value):
                text, color = annotate(row, column, value)
                axes.text(column, row, text, ha="center", va="center", fontsize=8, color=color)
    axes.set_title(title, fontsize=9)
    figure.colorbar(image, ax=axes, fraction=0.046, pad=0.04, label=label)
    figure.tight_layout()
    return figure


def heatmap_figure(result: EvalResult, metric: str = "f1") -> Figure:
    """The G-XLT matrix of ``result`` as an annotated heatmap (rows: question, columns: context language)."""
    label = "F1" if metric == "f1" else "EM"
    xlt = result.xlt
    g_xlt = getattr(result.g_xlt, metric)
    xlt_text = "n/a" if xlt is None else f"{getattr(xlt, metric):.1f}"

    values = result.matrix(metric)
    low, high = fitted_limits(values)

    def annotate(row: int, column: int, value: float) -> tuple[str, str]:
        # Dark text on the bright (high) end of viridis, light text on the dark end.
        return f"{value:.1f}", "black" if value > low + 0.6 * (high - low) else "white"

    return matrix_figure(
        values, result.languages, f"{result.name}: G-XLT {label} {g_xlt:.1f}, XLT {label} {xlt_text}",
        cmap="viridis", limits=(low, high), label=f"{label} (scale fitted to the cells: {low:.1f} to {high:.1f})",
        annotate=annotate,
    )


def fitted_limits(values: np.ndarray) -> tuple[float, float]:
    """Colour limits spanning the finite cells, so cells that differ get visibly different colours.

    A fixed 0-100 scale paints a matrix of 4-7 F1 (a model that learnt little) in one colour. The limits
    are the cells' minimum and maximum, widened to at least one point (a constant matrix) and kept in
    [0, 100]; the colour bar shows them.
    """
    finite = values[np.isfinite(values)]
    if finite.size == 0:
        return 0.0, 100.0
    low, high = float(finite.min()), float(finite.max())
    if high - low < 1.0:
        middle = (high + low) / 2
        low, high = middle - 0.5, middle + 0.5
    return max(low, 0.0), min(high, 100.0)


def heatmap_image(result: EvalResult, metric: str = "f1") -> np.ndarray:
    """The heatmap as an ``H×W×3`` uint8 RGB array, e.g. for
    ``SummaryWriter.add_image(tag, image, step, dataformats="HWC")``."""
    figure = heatmap_figure(result, metric)
    canvas = figure.canvas
    canvas.draw()
    return np.asarray(canvas.buffer_rgba())[..., :3].copy()


def save_heatmap(result: EvalResult, path: str | os.PathLike, metric: str = "f1") -> Path:
    """Write the heatmap of ``result`` as a PNG file and return its path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    heatmap_figure(result, metric).savefig(path, format="png")
    return path


def write_report(
    results: EvalSummary | EvalResult | Mapping[str, EvalResult],
    output_dir: str | os.PathLike,
    *,
    heatmap: bool = True,
) -> ReportFiles:
    """Write ``metrics.json``, per-cell prediction files, example scores and (optionally) heatmaps.

    ``results``: one set's :class:`EvalResult`, an :class:`EvalSummary`, or a mapping set name → result.
    ``heatmap`` is :attr:`xdist.config.EvalConfig.heatmap`.
    """
    if isinstance(results, EvalResult):
        summary = EvalSummary()
        summary.add(results)
    elif isinstance(results, EvalSummary):
        summary = results
    else:
        summary = EvalSummary()
        for set_name, result in results.items():
            if set_name != result.name:
                raise ValueError(f"results[{set_name!r}] holds the result of set {result.name!r}")
            summary.add(result)
    output_dir = Path(output_dir)
    for set_name, result in summary.sets.items():
        check_file_name("evaluation set name", set_name)
        for lang in result.languages:
            check_file_name("language code", lang)

    files = ReportFiles(metrics=output_dir / "metrics.json")
    _write_json(files.metrics, summary.to_json())
    for set_name, result in summary.sets.items():
        files.predictions[set_name] = {}
        for (question_lang, context_lang), answers in result.predictions_by_cell().items():
            cell = cell_name(question_lang, context_lang)
            path = output_dir / "predictions" / set_name / f"{cell}.json"
            _write_json(path, answers)
            files.predictions[set_name][cell] = path
        scores = {uid: {"exact_match": s.exact_match, "f1": s.f1} for uid, s in result.examples.items()}
        files.example_scores[set_name] = output_dir / "example_scores" / f"{set_name}.json"
        _write_json(files.example_scores[set_name], scores)
        if heatmap:
            files.heatmaps[set_name] = save_heatmap(result, output_dir / "heatmaps" / f"{set_name}.png")
    return files
