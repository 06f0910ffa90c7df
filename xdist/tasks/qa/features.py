"""Tokenised QA features: SQuAD-style sliding windows over the context, as Hugging Face's ``run_qa.py``.

Each example becomes one or more fixed-length features ``[CLS] question [SEP] context-window [SEP]
[PAD]...``. The fast tokenizer does the windowing itself (``truncation="only_second"``,
``return_overflowing_tokens``, ``stride=doc_stride`` tokens of overlap between consecutive windows,
``padding="max_length"``) and gives character offsets, from which the answer's token span is found.

Two things ``run_qa.py`` does not do and this module does:

* **Questions are cut to ``max_query_length`` tokens** (the original BERT/``run_squad`` recipe that
  Carrino et al. use). The pair encoding has no "truncate the first sequence to N, window the second"
  mode, so the question *text* is cut at the end offset of its ``max_query_length``-th token and the
  pair is then encoded natively (:func:`truncate_questions`).
* The answer span is trimmed of surrounding whitespace before it is mapped to tokens, so an answer
  that starts with a space maps to its first word, not to the token before it.

Targets follow SQuAD v1.1 training: the first answer's first and last token when the answer lies
entirely inside the window, else both at the CLS index.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from xdist.config import FeatureConfig
from xdist.data.shards import ArraySpec, ShardError, ShardRecord
from xdist.data.sources import DataError
from xdist.tasks.qa.examples import QAExample, QAFeature, cell_name

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerFast

log = logging.getLogger(__name__)

DEFAULT_BATCH_SIZE = 256
"""Examples per tokenizer call: large enough for the Rust tokenizer's batch parallelism, small enough
that one batch of features stays a few MB."""


@dataclass
class FeatureStats:
    """Counts gathered while featurising; a quality report for manifests and logs."""

    examples: int = 0
    features: int = 0
    max_features_per_example: int = 0
    questions_truncated: int = 0
    """Questions longer than ``max_query_length`` tokens, cut to it."""
    answers_not_token_aligned: int = 0
    """Examples whose first answer starts or ends inside a token (the target span covers whole tokens)."""
    answers_outside_windows: int = 0
    """Examples whose first answer lies entirely inside no window (every feature targets CLS)."""
    examples_without_answer: int = 0
    """Examples with no (non-blank) answer: every feature targets CLS (fine for evaluation only)."""

    @property
    def features_per_example(self) -> float:
        """Mean number of windows per example."""
        return self.features / self.examples if self.examples else 0.0

    def merge(self, other: FeatureStats) -> FeatureStats:
        """Add ``other``'s counts into this one; returns ``self``."""
        for name, value in asdict(other).items():
            if name == "max_features_per_example":
                self.max_features_per_example = max(self.max_features_per_example, value)
            else:
                setattr(self, name, getattr(self, name) + value)
        return self

    def to_dict(self) -> dict[str, Any]:
        """Plain data for manifests (with the mean features per example)."""
        return {**asdict(self), "features_per_example": self.features_per_example}

    def summary(self) -> str:
        """One line for the log."""
        return (
            f"{self.examples} examples -> {self.features} features ({self.features_per_example:.2f} per example, "
            f"max {self.max_features_per_example}); questions truncated: {self.questions_truncated}; answers not "
            f"on token boundaries: {self.answers_not_token_aligned}; answers outside every window: "
            f"{self.answers_outside_windows}; examples without answer: {self.examples_without_answer}"
        )


@dataclass
class FeatureResult:
    """What :func:`featurize` returns."""

    features: list[QAFeature]
    stats: FeatureStats = field(default_factory=FeatureStats)


def truncate_questions(
    questions: Sequence[str], tokenizer: PreTrainedTokenizerFast, max_query_length: int
) -> tuple[list[str], int]:
    """Questions stripped of surrounding whitespace and cut to at most ``max_query_length`` tokens.

    A question is cut at the end character of its ``max_query_length``-th token, so its re-tokenised text
    is (in practice) the first ``max_query_length`` tokens of the original. If a cut inside a word
    re-tokenises into more pieces, the cut repeats on the shorter text. Returns the questions and the
    number that were cut.
    """
    result = [question.strip() for question in questions]
    truncated: set[int] = set()
    pending = list(range(len(result)))
    while pending:
        encoded = tokenizer(
            [result[i] for i in pending], add_special_tokens=False, return_offsets_mapping=True,
            return_attention_mask=False, return_token_type_ids=False,
        )
        still_long = []
        for i, offsets in zip(pending, encoded["offset_mapping"], strict=True):
            if len(offsets) <= max_query_length:
                continue
            cut = offsets[max_query_length - 1][1]
            if 0 < cut < len(result[i]):  # a cut that does not shorten the text would never converge
                result[i] = result[i][:cut].rstrip()
                truncated.add(i)
                still_long.append(i)
        pending = still_long
    return result, len(truncated)


def _answer_span(example: QAExample) -> tuple[int, int] | None:
    """Character span [start, end) of the first answer without surrounding whitespace (None: no answer)."""
    if not example.answers:
        return None
    answer = example.answers[0]
    lead = len(answer.text) - len(answer.text.lstrip())
    start, end = answer.start + lead, answer.start + len(answer.text.rstrip())
    return (start, end) if end > start else None


def _featurize_batch(
    batch: list[QAExample], tokenizer: PreTrainedTokenizerFast, cfg: FeatureConfig, stats: FeatureStats
) -> Iterator[QAFeature]:
    questions, n_truncated = truncate_questions([e.question for e in batch], tokenizer, cfg.max_query_length)
    stats.questions_truncated += n_truncated
    encoded = tokenizer(
        questions,
        [e.context for e in batch],
        truncation="only_second",
        max_length=cfg.max_length,
        stride=cfg.doc_stride,
        return_overflowing_tokens=True,
        return_offsets_mapping=True,
        return_token_type_ids=True,
        return_attention_mask=True,
        padding="max_length",
    )
    sample_of = encoded["overflow_to_sample_mapping"]
    windows = [0] * len(batch)
    answer_found = [False] * len(batch)
    spans = [_answer_span(example) for example in batch]
    cls_id = tokenizer.cls_token_id
    # The encodings are the Rust objects behind the batch, one per window; reading their fields
    # directly avoids building the whole batch's Python lists twice.
    for encoding, b in zip(encoded.encodings, sample_of, strict=True):
        example = batch[b]
        sequence_ids = encoding.sequence_ids
        offsets = [offset if seq == 1 else None for offset, seq in zip(encoding.offsets, sequence_ids, strict=True)]
        ids = encoding.ids
        cls_index = ids.index(cls_id) if cls_id is not None and cls_id in ids else 0
        start_position = end_position = cls_index
        span = spans[b]
        context_tokens = [k for k, seq in enumerate(sequence_ids) if seq == 1]
        if span is not None and context_tokens:
            first, last = context_tokens[0], context_tokens[-1]
            a_start, a_end = span
            if offsets[first][0] <= a_start and offsets[last][1] >= a_end:
                start, end = first, last
                while start < last and offsets[start][1] <= a_start:  # first token ending after the start
                    start += 1
                while end > start and offsets[end][0] >= a_end:  # last token starting before the end
                    end -= 1
                start_position, end_position = start, end
                if not answer_found[b]:
                    answer_found[b] = True
                    if offsets[start][0] != a_start or offsets[end][1] != a_end:
                        stats.answers_not_token_aligned += 1
        yield QAFeature(
            example_uid=example.uid,
            window=windows[b],
            input_ids=ids,
            attention_mask=encoding.attention_mask,
            token_type_ids=encoding.type_ids,
            offsets=offsets,
            start_position=start_position,
            end_position=end_position,
            question_lang=example.question_lang,
            context_lang=example.context_lang,
            source=example.source,
        )
        windows[b] += 1
    stats.examples += len(batch)
    stats.features += len(sample_of)
    stats.max_features_per_example = max(stats.max_features_per_example, *windows)
    for span, found in zip(spans, answer_found, strict=True):
        if span is None:
            stats.examples_without_answer += 1
        elif not found:
            stats.answers_outside_windows += 1


def iter_features(
    examples: Iterable[QAExample],
    tokenizer: PreTrainedTokenizerFast,
    cfg: FeatureConfig,
    stats: FeatureStats | None = None,
    batch_size: int = DEFAULT_BATCH_SIZE,
) -> Iterator[QAFeature]:
    """Features of ``examples`` in order (each example's windows in order), tokenised in batches.

    Streaming form of :func:`featurize` for large sets (the full G-XLT matrix does not fit in memory as
    Python lists); pass ``stats`` to collect the counts.
    """
    if not getattr(tokenizer, "is_fast", False):
        raise DataError(f"{type(tokenizer).__name__} is not a fast tokenizer; use load_tokenizer()")
    if batch_size <= 0:
        raise ValueError(f"batch_size must be positive, got {batch_size}")
    stats = stats if stats is not None else FeatureStats()
    batch: list[QAExample] = []
    for example in examples:
        batch.append(example)
        if len(batch) == batch_size:
            yield from _featurize_batch(batch, tokenizer, cfg, stats)
            batch = []
    if batch:
        yield from _featurize_batch(batch, tokenizer, cfg, stats)


def featurize(
    examples: Iterable[QAExample],
    tokenizer: PreTrainedTokenizerFast,
    cfg: FeatureConfig,
    batch_size: int = DEFAULT_BATCH_SIZE,
) -> FeatureResult:
    """All features of ``examples`` in a list, with their :class:`FeatureStats` (logged)."""
    stats = FeatureStats()
    features = list(iter_features(examples, tokenizer, cfg, stats, batch_size))
    log.info("featurised %s", stats.summary())
    return FeatureResult(features=features, stats=stats)


# --------------------------------------------------------------------------------------------------
# Shard records
# --------------------------------------------------------------------------------------------------

MODEL_INPUTS = ("input_ids", "attention_mask", "token_type_ids")
"""The arrays a ``transformers`` QA model takes as inputs."""

LABELS = ("start_positions", "end_positions")
"""The label arrays (token indices, scalars per sample), named as the ``*ForQuestionAnswering`` forward names them."""


def qa_fields(max_length: int) -> dict[str, ArraySpec]:
    """The array fields of a QA shard set: what :func:`shard_record` writes."""
    sequence = (max_length,)
    return {"input_ids": ArraySpec("int32", sequence), "attention_mask": ArraySpec("uint8", sequence),
            "token_type_ids": ArraySpec("uint8", sequence), "start_positions": ArraySpec("int64", ()),
            "end_positions": ArraySpec("int64", ())}


def shard_record(feature: QAFeature) -> ShardRecord:
    """``feature`` as a shard record: ids (int32), masks (uint8), answer positions (int64 scalars), the
    ``q-c`` cell as its group and the languages as meta. Raises :class:`ShardError` naming the example and
    window for ragged sequences, positions outside the window, or values that do not fit their dtype."""
    where = f"example {feature.example_uid!r}, window {feature.window}"
    lengths = [len(feature.input_ids), len(feature.attention_mask), len(feature.token_type_ids)]
    length = lengths[0]
    if length <= 0:
        raise ShardError(f"{where}: input_ids is empty")
    if len(set(lengths)) != 1:
        raise ShardError(f"{where}: input_ids, attention_mask and token_type_ids have {lengths} tokens (one "
                         "length per feature)")
    for name in LABELS:
        value = getattr(feature, name[: -len("s")])
        if not 0 <= value < length:
            raise ShardError(f"{where}: {name[: -len('s')]}={value} is outside [0, {length})")
    if feature.start_position > feature.end_position:
        raise ShardError(f"{where}: start_position {feature.start_position} > end_position {feature.end_position}")
    if not feature.question_lang or not feature.context_lang:
        raise ShardError(f"{where}: question_lang and context_lang must be set")
    input_ids = np.asarray(feature.input_ids, dtype=np.int64)
    if input_ids.min() < 0 or input_ids.max() > np.iinfo(np.int32).max:
        raise ShardError(f"{where}: input_ids outside the int32 range")
    small = {}
    for name in ("attention_mask", "token_type_ids"):
        values = np.asarray(getattr(feature, name), dtype=np.int64)
        if values.min() < 0 or values.max() > 255:
            raise ShardError(f"{where}: {name} values must lie in [0, 255] to be stored as uint8")
        small[name] = values.astype(np.uint8)
    arrays = {"input_ids": input_ids.astype(np.int32), **small,
              "start_positions": np.asarray(feature.start_position, dtype=np.int64),
              "end_positions": np.asarray(feature.end_position, dtype=np.int64)}
    return ShardRecord(
        uid=feature.example_uid, part=feature.window, arrays=arrays,
        group=cell_name(feature.question_lang, feature.context_lang), source=feature.source,
        meta={"question_lang": feature.question_lang, "context_lang": feature.context_lang},
    )
