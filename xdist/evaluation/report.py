"""Evaluation output on disk, for any task: ``metrics.json``, the task's prediction files, example scores,
and one figure per set (a heatmap when the result has a matrix, else a bar chart per group).

Layout under ``output_dir`` (QA's files as the example)::

    metrics.json                         {"version", "summary": {set: row}, "sets": {set: EvalResult.to_json()}}
    predictions/<set>/<q>-<c>.json       the task's files (QA: {question id: answer text}, the official format)
    example_scores/<set>.json            {uid: {per-example scores, "group"}} for paired significance tests
    heatmaps/<set>.png                   matrix results: the group metric on the grid (QA: F1, question x context)
    charts/<set>.png                     other results: the group metric per group, as bars

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
from typing import Any

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from xdist.evaluation.metrics import EvalSummary
from xdist.evaluation.result import EvalResult, as_result
from xdist.fileio import write_text_atomic

_SAFE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")


@dataclass
class ReportFiles:
    """Paths written by :func:`write_report`."""

    metrics: Path
    predictions: dict[str, dict[str, Path]] = field(default_factory=dict)
    """set → file stem (QA: ``"<q>-<c>"``) → the task's file (:attr:`EvalResult.files`)."""

    example_scores: dict[str, Path] = field(default_factory=dict)
    heatmaps: dict[str, Path] = field(default_factory=dict)
    """set → its figure (a heatmap, or a bar chart for results without a matrix)."""


def check_file_name(kind: str, name: str, hint: str = "") -> str:
    """``name``, which becomes part of a file path; a ValueError naming ``kind`` unless it is a plain name."""
    if not _SAFE_NAME.fullmatch(name):
        raise ValueError(
            f"{kind} {name!r} cannot be used in a file name; expected letters, digits, '.', '_', '-'{hint}"
        )
    return name


def _write_json(path: Path, data: object) -> None:
    """Write JSON atomically (:func:`xdist.fileio.write_text_atomic`), so a reader never sees half a file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    write_text_atomic(path, json.dumps(data, ensure_ascii=False, indent=2) + "\n")


def matrix_figure(
    values: np.ndarray,
    languages: Sequence[str],
    title: str,
    *,
    cmap: str,
    limits: tuple[float, float],
    label: str,
    annotate: Callable[[int, int, float], tuple[str, str]],
    axis_names: tuple[str, str] = ("question language", "context language"),
) -> Figure:
    """A square matrix over ``languages`` as a heatmap (rows, columns named by ``axis_names``; NaN: blank).

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
    axes.set_xlabel(axis_names[1])
    axes.set_ylabel(axis_names[0])
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


def _axis_name(name: str) -> str:
    return name.replace("_lang", " language").replace("_", " ")


def _headline(result: EvalResult, metric: str) -> str:
    """``"G-XLT F1 83.3, XLT F1 n/a"``: the headline summary values (those of ``metric``'s family)."""
    label = result.view.group_label if metric == result.view.group_metric else metric
    parts = []
    for key in result.view.headline:
        value = result.summary.get(key)
        parts.append(f"{result.view.columns.get(key, key)} {'n/a' if value is None else f'{value:.1f}'}")
    if metric != result.view.group_metric:
        parts = [f"{label} per {result.view.group_kind}"]
    return ", ".join(parts)


def heatmap_figure(result: Any, metric: str | None = None) -> Figure:
    """The matrix of ``result`` (an :class:`EvalResult` with ``matrix``, or a task result that converts to
    one) as an annotated heatmap of ``metric`` (default the view's group metric; QA: F1 per cell)."""
    result = as_result(result)
    metric = metric or result.view.group_metric
    label = result.view.group_label if metric == result.view.group_metric else metric
    matrix = result.matrix
    if matrix is None or matrix.rows != matrix.columns:
        raise ValueError(f"evaluation set {result.name!r} has no square matrix to draw")
    values = result.grid(metric)
    low, high = fitted_limits(values)

    def annotate(row: int, column: int, value: float) -> tuple[str, str]:
        # Dark text on the bright (high) end of viridis, light text on the dark end.
        return f"{value:.1f}", "black" if value > low + 0.6 * (high - low) else "white"

    return matrix_figure(
        values, matrix.rows, f"{result.name}: {_headline(result, metric)}",
        cmap="viridis", limits=(low, high), label=f"{label} (scale fitted to the cells: {low:.1f} to {high:.1f})",
        annotate=annotate, axis_names=(_axis_name(matrix.row_name), _axis_name(matrix.column_name)),
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


def bar_figure(result: Any, metric: str | None = None) -> Figure:
    """The group metric of ``result`` per group as bars (results without a matrix, e.g. accuracy per
    language), the headline values in the title."""
    result = as_result(result)
    metric = metric or result.view.group_metric
    groups = list(result.groups)
    values = [result.groups[group][metric] for group in groups]
    figure = Figure(figsize=(max(4.0, 0.55 * len(groups) + 1.5), 3.6), dpi=100)
    FigureCanvasAgg(figure)
    axes = figure.add_subplot()
    bars = axes.bar(groups, values, color="tab:blue")
    for bar, value in zip(bars, values, strict=True):
        axes.text(bar.get_x() + bar.get_width() / 2, value, f"{value:.1f}", ha="center", va="bottom", fontsize=7)
    axes.set_ylim(0, 100)
    axes.set_ylabel(result.view.group_label if metric == result.view.group_metric else metric)
    axes.set_title(f"{result.name}: {_headline(result, metric)}", fontsize=9)
    figure.tight_layout()
    return figure


def figure_of(result: Any) -> Figure:
    """The set's figure: its heatmap when it has a square matrix, else its bar chart."""
    result = as_result(result)
    square = result.matrix is not None and result.matrix.rows == result.matrix.columns
    return heatmap_figure(result) if square else bar_figure(result)


def figure_image(figure: Figure) -> np.ndarray:
    """A figure as an ``H×W×3`` uint8 RGB array, e.g. for
    ``SummaryWriter.add_image(tag, image, step, dataformats="HWC")``."""
    canvas = figure.canvas
    canvas.draw()
    return np.asarray(canvas.buffer_rgba())[..., :3].copy()


def heatmap_image(result: Any, metric: str | None = None) -> np.ndarray:
    """The heatmap as an ``H×W×3`` uint8 RGB array (see :func:`figure_image`)."""
    return figure_image(heatmap_figure(result, metric))


def save_heatmap(result: Any, path: str | os.PathLike, metric: str | None = None) -> Path:
    """Write the heatmap of ``result`` as a PNG file and return its path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    heatmap_figure(result, metric).savefig(path, format="png")
    return path


def write_report(
    results: EvalSummary | EvalResult | Mapping[str, EvalResult] | Any,
    output_dir: str | os.PathLike,
    *,
    heatmap: bool = True,
) -> ReportFiles:
    """Write ``metrics.json``, the tasks' prediction files, example scores and (optionally) figures.

    ``results``: one set's :class:`EvalResult` (or a task result with ``result()``), an
    :class:`EvalSummary`, or a mapping set name → result. ``heatmap`` is
    :attr:`xdist.config.EvalConfig.heatmap` (a bar chart stands in for results without a matrix).
    """
    if isinstance(results, EvalSummary):
        summary = results
    elif not isinstance(results, Mapping):
        summary = EvalSummary()
        summary.add(results)
    else:
        summary = EvalSummary()
        for set_name, result in results.items():
            if set_name != result.name:
                raise ValueError(f"results[{set_name!r}] holds the result of set {result.name!r}")
            summary.add(result)
    output_dir = Path(output_dir)
    converted = {set_name: as_result(result) for set_name, result in summary.sets.items()}
    for set_name, result in converted.items():
        check_file_name("evaluation set name", set_name)
        for name in (*result.groups, *(result.matrix.rows if result.matrix else ())):
            check_file_name(f"{result.view.group_kind} name", name)

    files = ReportFiles(metrics=output_dir / "metrics.json")
    _write_json(files.metrics, summary.to_json())
    for set_name, result in converted.items():
        files.predictions[set_name] = {}
        for relative, data in result.files.items():
            path = output_dir / relative
            _write_json(path, data)
            files.predictions[set_name][path.stem] = path
        files.example_scores[set_name] = output_dir / "example_scores" / f"{set_name}.json"
        _write_json(files.example_scores[set_name], result.example_scores_json())
        if heatmap:
            square = result.matrix is not None and result.matrix.rows == result.matrix.columns
            path = output_dir / ("heatmaps" if square else "charts") / f"{set_name}.png"
            path.parent.mkdir(parents=True, exist_ok=True)
            figure_of(result).savefig(path, format="png")
            files.heatmaps[set_name] = path
    return files
