"""Extractive QA (SQuAD v1.1 family; XQuAD, MLQA, TyDi QA GoldP) as a :class:`xdist.tasks.base.Task`.

Reading: :mod:`xdist.tasks.qa.readers` (and cross-lingual sampling, :mod:`xdist.tasks.qa.sampling`);
features: sliding windows, :mod:`xdist.tasks.qa.features`; model: ``*ForQuestionAnswering``,
:mod:`xdist.tasks.qa.model`; scoring: n-best span decoding and EM/F1 per (question language, context
language) cell, G-XLT and XLT (:mod:`xdist.evaluation`).
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
import torch.nn.functional as F

from xdist.config import DataConfig, EvalConfig, JobConfig, ModelConfig, SourceConfig
from xdist.data.shards import ShardRecord
from xdist.errors import ConfigValueError
from xdist.tasks.base import EvalData, SourceRead
from xdist.tasks.qa.examples import QAExample
from xdist.tasks.qa.features import MODEL_INPUTS, FeatureStats, featurize, iter_features, shard_record
from xdist.tasks.qa.model import build_qa_model, load_qa_model
from xdist.tasks.qa.readers import read_source

if TYPE_CHECKING:
    from xdist.evaluation.result import EvalResult

log = logging.getLogger("xdist.eval")


@dataclass
class QAEvalData(EvalData):
    """A QA evaluation set: :class:`EvalData` plus how its answers are normalised."""

    scoring: str = "squad"
    """Answer normalisation of the scores (``eval.sets[].metric``, or the format's default)."""


class QATask:
    """Extractive QA: logits ``[B, 2, L]`` (start, end), span cross-entropy, EM/F1 per G-XLT cell."""

    name = "qa"
    model_inputs = MODEL_INPUTS

    # ---- data -------------------------------------------------------------------------------------

    def read(self, source: SourceConfig, data: DataConfig, *, epoch: int = 0) -> SourceRead:
        result = read_source(source, data, epoch=epoch)
        reports = {"sampling": result.sampling.to_dict()} if result.sampling is not None else {}
        return SourceRead(examples=result.examples, skipped=result.skipped, notes=result.notes, reports=reports)

    def new_feature_stats(self) -> FeatureStats:
        return FeatureStats()

    def shard_records(
        self, examples: Iterable[QAExample], tokenizer: Any, cfg: JobConfig, stats: FeatureStats,
        source: SourceConfig,
    ) -> Iterator[ShardRecord]:
        for feature in iter_features(examples, tokenizer, cfg.features, stats):
            yield shard_record(feature)

    def eval_data(self, source: SourceConfig, cfg: JobConfig, tokenizer: Any) -> QAEvalData:
        from xdist.evaluation.normalize import normalizer_for

        read = self.read(source, cfg.data)
        index = next((i for i, s in enumerate(cfg.eval.sets) if s is source), "?")
        for language in sorted({e.context_lang for e in read.examples}):
            try:  # a scoring rule that cannot apply is a config error now, not after training
                normalizer_for(language, source.scoring)
            except ValueError as err:
                raise ConfigValueError(f"config field 'eval.sets[{index}].metric' (set {source.name!r}): {err}; "
                                       "use metric: squad for this set") from None
        if read.skipped.total:
            log.warning("eval set %s: %s", source.name, read.skipped.summary())
        featurized = featurize(read.examples, tokenizer, cfg.features)
        features = featurized.features
        inputs = {name: np.asarray([getattr(f, name) for f in features], dtype=np.int64).reshape(len(features), -1)
                  for name in MODEL_INPUTS}
        return QAEvalData(name=source.name, inputs=inputs, examples=read.examples, features=features,
                          scoring=source.scoring)

    # ---- model ------------------------------------------------------------------------------------

    def build_model(
        self, cfg: ModelConfig, *, tokenizer: Any = None, checkpoint: str | Path | None = None,
        ds_config: dict | None = None,
    ) -> Any:
        if checkpoint is not None:
            return load_qa_model(checkpoint, ds_config=ds_config)
        if tokenizer is None:
            raise ValueError("QATask.build_model: a tokenizer is needed to size the vocabulary of a new model")
        return build_qa_model(cfg, vocab_size=len(tokenizer), pad_token_id=tokenizer.pad_token_id,
                              ds_config=ds_config)

    def logits(self, model: Any, batch: dict[str, Any], device: torch.device | None = None) -> torch.Tensor:
        """Start/end logits ``[B, 2, L]``; inputs are moved to ``device`` first when given."""
        inputs = {name: batch[name] for name in MODEL_INPUTS if name in batch}
        if device is not None:
            inputs = {name: value.to(device) for name, value in inputs.items()}
        outputs = model(**inputs)
        return torch.stack([outputs.start_logits, outputs.end_logits], dim=1)

    def loss(self, logits: torch.Tensor, batch: dict[str, Any]) -> torch.Tensor:
        # As the transformers QA heads: positions clamped to L, which is then the ignored index.
        length = logits.shape[-1]
        parts = []
        for head, name in enumerate(("start_positions", "end_positions")):
            gold = batch[name].to(logits.device).clamp(0, length)
            parts.append(F.cross_entropy(logits[:, head].contiguous(), gold, ignore_index=length))
        return (parts[0] + parts[1]) / 2

    # ---- evaluation -------------------------------------------------------------------------------

    def score(self, data: QAEvalData, logits: np.ndarray, cfg: EvalConfig) -> EvalResult:
        from xdist.evaluation import evaluate_qa  # matplotlib and scipy load only when scoring

        return evaluate_qa(data.examples, data.features, logits[:, 0], logits[:, 1], name=data.name,
                           n_best=cfg.n_best, max_answer_length=cfg.max_answer_length, scheme=data.scoring).result()
