"""Extractive-QA evaluation: official answer normalisation, n-best span decoding, G-XLT metrics, reports.

Typical use by the training loop, once per evaluation set::

    result = evaluate_qa(examples, features, start_logits, end_logits, name=source.name,
                         n_best=cfg.eval.n_best, max_answer_length=cfg.eval.max_answer_length)
    summary.add(result)
    ...
    write_report(summary, output_dir / "eval", heatmap=cfg.eval.heatmap)
    writer.add_image(f"eval/{result.name}/heatmap", heatmap_image(result), step, dataformats="HWC")
"""

from xdist.evaluation.decode import DecodeResult, SpanCandidate, decode_predictions
from xdist.evaluation.metrics import (
    Average,
    CellScore,
    DecodeInfo,
    EvalResult,
    EvalSummary,
    ExampleScore,
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
from xdist.evaluation.report import ReportFiles, heatmap_figure, heatmap_image, save_heatmap, write_report

__all__ = [
    "MLQA_LANGUAGES",
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
