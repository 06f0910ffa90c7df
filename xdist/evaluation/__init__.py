"""Evaluation: the task-agnostic result and report (:mod:`~xdist.evaluation.result`,
:mod:`~xdist.evaluation.report`), and extractive QA's scoring (official answer normalisation, n-best span
decoding, G-XLT metrics).

Typical use for QA, once per evaluation set (what :meth:`xdist.tasks.qa.task.QATask.score` does)::

    result = evaluate_qa(examples, features, start_logits, end_logits, name=source.name,
                         n_best=cfg.eval.n_best, max_answer_length=cfg.eval.max_answer_length).result()
    summary.add(result)
    ...
    write_report(summary, output_dir / "eval", heatmap=cfg.eval.heatmap)
    writer.add_image(f"eval/{result.name}/{result.view.figure_tag}", figure_image(figure_of(result)), step,
                     dataformats="HWC")
"""

from xdist.evaluation.decode import DecodeResult, SpanCandidate, decode_predictions
from xdist.evaluation.metrics import (
    Average,
    CellScore,
    DecodeInfo,
    EvalSummary,
    ExampleScore,
    QAResult,
    evaluate_predictions,
    evaluate_qa,
    exact_match_score,
    f1_score,
    score_answer,
)
from xdist.evaluation.normalize import (
    MLQA_LANGUAGES,
    Normalizer,
    mixed_segmentation,
    normalize_mlqa,
    normalize_squad,
    normalizer_for,
)
from xdist.evaluation.report import (
    ReportFiles,
    bar_figure,
    figure_image,
    figure_of,
    heatmap_figure,
    heatmap_image,
    save_heatmap,
    write_report,
)
from xdist.evaluation.result import METRICS_VERSION, EvalResult, MatrixAxes, PairedSpec, Scope, View, as_result

__all__ = [
    "METRICS_VERSION",
    "MLQA_LANGUAGES",
    "MatrixAxes",
    "PairedSpec",
    "QAResult",
    "Scope",
    "View",
    "as_result",
    "bar_figure",
    "figure_image",
    "figure_of",
    "Average",
    "CellScore",
    "DecodeInfo",
    "DecodeResult",
    "EvalResult",
    "EvalSummary",
    "ExampleScore",
    "Normalizer",
    "ReportFiles",
    "SpanCandidate",
    "decode_predictions",
    "evaluate_predictions",
    "evaluate_qa",
    "exact_match_score",
    "f1_score",
    "heatmap_figure",
    "heatmap_image",
    "mixed_segmentation",
    "normalize_mlqa",
    "normalize_squad",
    "normalizer_for",
    "save_heatmap",
    "score_answer",
    "write_report",
]
