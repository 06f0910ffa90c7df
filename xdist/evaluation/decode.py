"""SQuAD v1 n-best span decoding: start/end logits of every window of an example → one answer text.

Semantics are those of Hugging Face's ``postprocess_qa_predictions`` (``examples/pytorch/question-
answering/utils_qa.py``, without the SQuAD v2 null answer), which is the decoding of BERT's
``run_squad.py`` that published SQuAD/MLQA/XQuAD numbers use:

1. per feature (window), the ``n_best`` highest start logits and the ``n_best`` highest end logits, taken
   over *all* positions (question and special tokens compete for the slots and are rejected afterwards);
2. every (start, end) pair of those is a candidate if both tokens lie in the context (offset not None),
   ``start <= end`` and ``end - start + 1 <= max_answer_length``; its score is
   ``start_logit + end_logit``;
3. the candidates of all windows of the example are ranked by score; the best one's text is
   ``context[offsets[start][0]:offsets[end][1]]``; the first ``n_best`` form the n-best list, with a
   softmax over their scores as probabilities.

Written here rather than imported because transformers ships this only as an example script (not an
importable API), works on ``datasets`` rows rather than our records, and loops over every pair in Python.

Deterministic ties (the reference's order depends on numpy's unstable argsort): among equal logits the
lower token index enters the top-``n_best`` first; among equal span scores the earlier window
(:attr:`QAFeature.window`, then input order), then the lower start, then the lower end token wins.

Deviation: an example without any valid span gets the empty prediction ``""`` (the reference writes the
placeholder text ``"empty"``; both score 0 unless a gold answer is literally "empty"). Such examples
are listed in :attr:`DecodeResult.no_valid_span`, examples without any feature in ``no_features``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from xdist.tasks.qa.examples import QAExample, QAFeature


@dataclass(frozen=True)
class SpanCandidate:
    """One entry of an example's n-best list."""

    text: str
    score: float
    """``start_logit + end_logit``."""

    probability: float
    """Softmax of ``score`` over the example's n-best list."""

    start_logit: float
    end_logit: float
    window: int
    """:attr:`QAFeature.window` of the feature the span was found in."""

    start_token: int
    end_token: int
    """Token indices in that feature (inclusive)."""

    start_char: int
    end_char: int
    """Character span in the context (end exclusive): ``text == context[start_char:end_char]``."""

    def to_json(self) -> dict:
        """Plain JSON-serialisable dict."""
        return {
            "text": self.text, "score": self.score, "probability": self.probability,
            "start_logit": self.start_logit, "end_logit": self.end_logit, "window": self.window,
            "start_token": self.start_token, "end_token": self.end_token,
            "start_char": self.start_char, "end_char": self.end_char,
        }


@dataclass
class DecodeResult:
    """Decoded answers of a list of examples, keyed by :attr:`QAExample.uid`."""

    predictions: dict[str, str]
    """uid → predicted answer text (``""`` when the example has no valid span or no feature)."""

    nbest: dict[str, list[SpanCandidate]] | None = None
    """uid → up to ``n_best`` candidates, best first (only when asked for: ``keep_nbest=True``)."""

    no_valid_span: list[str] = field(default_factory=list)
    """uids of examples whose windows held no valid span (predicted ``""``)."""

    no_features: list[str] = field(default_factory=list)
    """uids of examples that no feature refers to (predicted ``""``)."""


def _top_indices(logits: np.ndarray, k: int) -> np.ndarray:
    """Indices of the ``k`` largest values of each row, largest first; ties: lower index first."""
    # A stable sort of the negated row orders equal logits by index. Sorting 384 values per row is
    # cheap next to the forward pass, and argpartition would make tie order unspecified.
    return np.argsort(-logits, axis=1, kind="stable")[:, :k]


def _check_inputs(examples: Sequence[QAExample], features: Sequence[QAFeature], start_logits: np.ndarray,
                  end_logits: np.ndarray, n_best: int, max_answer_length: int) -> None:
    if n_best <= 0 or max_answer_length <= 0:
        raise ValueError(f"n_best ({n_best}) and max_answer_length ({max_answer_length}) must be positive")
    if start_logits.ndim != 2 or start_logits.shape != end_logits.shape:
        raise ValueError(
            f"start_logits and end_logits must both have shape [n_features, seq_len]; got "
            f"{start_logits.shape} and {end_logits.shape}"
        )
    if start_logits.shape[0] != len(features):
        raise ValueError(f"got logits for {start_logits.shape[0]} features but {len(features)} features")
    if not (np.isfinite(start_logits).all() and np.isfinite(end_logits).all()):
        raise ValueError("start_logits/end_logits contain NaN or infinite values")
    example_index: dict[str, int] = {}
    for i, example in enumerate(examples):
        if example.uid in example_index:
            raise ValueError(f"duplicate example uid {example.uid!r} (examples {example_index[example.uid]} "
                             f"and {i}, source {example.source!r})")
        example_index[example.uid] = i
    seq_len = start_logits.shape[1]
    for i, feature in enumerate(features):
        if feature.example_uid not in example_index:
            raise ValueError(f"feature {i} (window {feature.window}) refers to example {feature.example_uid!r}, "
                             "which is not among the examples given")
        beyond = feature.offsets[seq_len:]
        if any(offset is not None for offset in beyond):
            raise ValueError(
                f"feature {i} of example {feature.example_uid!r}: context tokens beyond the {seq_len} logit "
                f"positions (offsets has {len(feature.offsets)} entries); the logits must cover the context"
            )


def _feature_candidates(feature: QAFeature, starts: np.ndarray, ends: np.ndarray, start_row: np.ndarray,
                        end_row: np.ndarray, max_answer_length: int) -> tuple[np.ndarray, ...]:
    """Valid (start, end) pairs among one feature's top starts × top ends, and their scores."""
    offsets = feature.offsets
    n_offsets = len(offsets)
    start_ok = np.fromiter((s < n_offsets and offsets[s] is not None for s in starts.tolist()), bool, len(starts))
    end_ok = np.fromiter((e < n_offsets and offsets[e] is not None for e in ends.tolist()), bool, len(ends))
    length = ends[None, :] - starts[:, None] + 1
    valid = start_ok[:, None] & end_ok[None, :] & (length >= 1) & (length <= max_answer_length)
    rows, cols = np.nonzero(valid)
    span_starts, span_ends = starts[rows], ends[cols]
    return span_starts, span_ends, start_row[span_starts], end_row[span_ends]


def decode_predictions(
    examples: Sequence[QAExample],
    features: Sequence[QAFeature],
    start_logits: np.ndarray,
    end_logits: np.ndarray,
    *,
    n_best: int = 20,
    max_answer_length: int = 30,
    keep_nbest: bool = False,
) -> DecodeResult:
    """Decode the best answer span of every example from its features' start/end logits.

    ``start_logits``/``end_logits``: arrays ``[len(features), seq_len]`` (row i belongs to
    ``features[i]``); any array-like numpy accepts (convert torch tensors with ``.float().cpu().numpy()``).
    ``n_best`` and ``max_answer_length`` are :class:`xdist.config.EvalConfig`'s fields of the same names.
    See the module docstring for the exact rules.
    """
    start_logits = np.asarray(start_logits, dtype=np.float64)
    end_logits = np.asarray(end_logits, dtype=np.float64)
    _check_inputs(examples, features, start_logits, end_logits, n_best, max_answer_length)
    k = min(n_best, start_logits.shape[1])
    top_starts = _top_indices(start_logits, k)
    top_ends = _top_indices(end_logits, k)

    features_of: dict[str, list[int]] = {example.uid: [] for example in examples}
    for i, feature in enumerate(features):
        features_of[feature.example_uid].append(i)

    result = DecodeResult(predictions={}, nbest={} if keep_nbest else None)
    for example in examples:
        feature_ids = sorted(features_of[example.uid], key=lambda i: (features[i].window, i))
        if not feature_ids:
            result.predictions[example.uid] = ""
            result.no_features.append(example.uid)
            if keep_nbest:
                result.nbest[example.uid] = []
            continue
        parts = []
        for rank, i in enumerate(feature_ids):
            s, e, s_logit, e_logit = _feature_candidates(
                features[i], top_starts[i], top_ends[i], start_logits[i], end_logits[i], max_answer_length)
            parts.append((np.full(len(s), rank), np.full(len(s), i), s, e, s_logit, e_logit))
        columns = (np.concatenate(column) for column in zip(*parts, strict=True))
        ranks, feature_of, span_s, span_e, s_logit, e_logit = columns
        if len(span_s) == 0:
            result.predictions[example.uid] = ""
            result.no_valid_span.append(example.uid)
            if keep_nbest:
                result.nbest[example.uid] = []
            continue
        scores = s_logit + e_logit
        # lexsort: last key is primary. Best score first, then earlier window, lower start, lower end.
        order = np.lexsort((span_e, span_s, ranks, -scores))[:n_best]
        candidates = [
            _candidate(example, features[feature_of[j]], int(span_s[j]), int(span_e[j]), s_logit[j], e_logit[j])
            for j in (order if keep_nbest else order[:1])
        ]
        result.predictions[example.uid] = candidates[0][0]
        if keep_nbest:
            top_scores = scores[order]
            probabilities = np.exp(top_scores - top_scores.max())
            probabilities /= probabilities.sum()
            ranked = zip(candidates, top_scores, probabilities, strict=True)
            result.nbest[example.uid] = [
                SpanCandidate(text, float(score), float(p), float(sl), float(el), window, st, et, sc, ec)
                for (text, sl, el, window, st, et, sc, ec), score, p in ranked
            ]
    return result


def _candidate(example: QAExample, feature: QAFeature, start: int, end: int, start_logit: float,
               end_logit: float) -> tuple:
    start_char = feature.offsets[start][0]
    end_char = feature.offsets[end][1]
    if not 0 <= start_char <= end_char <= len(example.context):
        raise ValueError(
            f"example {example.uid!r} (source {example.source!r}), window {feature.window}: tokens {start}..{end} "
            f"map to characters {start_char}..{end_char}, outside the context of {len(example.context)} "
            "characters or reversed; the feature's offsets do not belong to this context"
        )
    text = example.context[start_char:end_char]
    return (text, start_logit, end_logit, feature.window, start, end, start_char, end_char)
