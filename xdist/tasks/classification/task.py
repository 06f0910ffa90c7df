"""Cross-lingual classification (XNLI, PAWS-X, XCOPA, generic sources) as a :class:`xdist.tasks.base.Task`.

Reading: :mod:`~xdist.tasks.classification.readers`; features for the configured head
(:mod:`~xdist.tasks.classification.features`); model, logits and loss: :mod:`~xdist.tasks.classification.heads`;
scoring: accuracy per language and the disparity summary (:mod:`~xdist.tasks.classification.scoring`).

One job has one head (``model.head``) and one class inventory (``model.labels``, resolved from the first
source when unset); a source whose classes differ from a classifier's, or a choice source (XCOPA) under a
``classifier`` head, is a config error naming both fields. The prompt head's template and verbalizer
(``model.prompt``) default per source format.
"""

from __future__ import annotations

import itertools
import logging
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from xdist.config import ConfigError, DataConfig, EvalConfig, JobConfig, ModelConfig, SourceConfig
from xdist.data.shards import ShardRecord
from xdist.tasks.base import EvalData, SourceRead
from xdist.tasks.classification import formats
from xdist.tasks.classification.branches import branch_array, build_branched_classifier, check_loaded
from xdist.tasks.classification.examples import ClassificationExample, ClassificationFeature
from xdist.tasks.classification.features import (
    PromptTemplate,
    collate,
    encode_choice_pairs,
    encode_choice_prompts,
    encode_pairs,
    encode_prompts,
)
from xdist.tasks.classification.heads import (
    INPUT_NAMES,
    build_classification_model,
    class_logits,
    cross_entropy,
    load_classification_model,
)
from xdist.tasks.classification.readers import read_classification_source
from xdist.tasks.classification.verbalizer import build_verbalizer

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerFast

    from xdist.evaluation.result import EvalResult

log = logging.getLogger("xdist.eval")

MODEL_INPUTS = (*INPUT_NAMES, "mask_positions", "verbalizer_ids", "verbalizer_weights")
"""Batch fields :func:`~xdist.tasks.classification.heads.class_logits` reads (the prompt fields exist only
under the prompt head)."""

ENCODE_CHUNK = 512
"""Examples per tokenizer call while featurising a source for shards."""


def _source_field(cfg: JobConfig, source: SourceConfig) -> str:
    for kind, sources in (("data.train", cfg.data.train), ("eval.sets", cfg.eval.sets)):
        for i, candidate in enumerate(sources):
            if candidate is source:
                return f"{kind}[{i}]"
    return f"source '{source.name}'"


def check_source(cfg: JobConfig, source: SourceConfig) -> None:
    """The source fits the job's head and classes; a :class:`ConfigError` naming both fields otherwise."""
    where = _source_field(cfg, source)
    head = cfg.model.head
    choice = formats.is_choice(source)
    if choice and head == "classifier":
        raise ConfigError(
            f"config field 'model.head': {where} ({source.name}, format {source.format}) is a choice task; "
            f"use head multiple_choice or prompt"
        )
    if not choice and head == "multiple_choice":
        raise ConfigError(
            f"config field 'model.head': multiple_choice scores choices, but {where} ({source.name}) is a "
            f"sentence-pair source; use head classifier or prompt"
        )
    if head == "classifier" and cfg.model.labels is not None and formats.class_names(source) != cfg.model.labels:
        raise ConfigError(
            f"config field '{where}.labels': the source's classes {formats.class_names(source)} differ from "
            f"model.labels {cfg.model.labels}; one classifier has one class inventory"
        )


@dataclass
class ClassificationFeatureStats:
    """Examples featurised per language, and how many fill ``max_length`` (their texts were cut)."""

    examples: dict[str, int] = field(default_factory=dict)
    full_length: int = 0

    def add(self, features: Sequence[ClassificationFeature]) -> None:
        for feature in features:
            self.examples[feature.language] = self.examples.get(feature.language, 0) + 1
            mask = feature.arrays["attention_mask"]
            self.full_length += int(mask.reshape(-1, mask.shape[-1])[:, -1].any())

    def merge(self, other: ClassificationFeatureStats) -> ClassificationFeatureStats:
        for lang, count in other.examples.items():
            self.examples[lang] = self.examples.get(lang, 0) + count
        self.full_length += other.full_length
        return self

    def summary(self) -> str:
        total = sum(self.examples.values())
        return f"{total} examples in {len(self.examples)} languages; {self.full_length} fill max_length (cut)"

    def to_dict(self) -> dict[str, Any]:
        return {"examples": dict(self.examples), "full_length": self.full_length}


def encode(
    examples: Sequence[ClassificationExample], tokenizer: PreTrainedTokenizerFast, cfg: JobConfig,
    source: SourceConfig,
) -> list[ClassificationFeature]:
    """Features of ``source``'s examples for the job's head (``model.head``, ``features.max_length``)."""
    check_source(cfg, source)
    head, max_length, choice = cfg.model.head, cfg.features.max_length, formats.is_choice(source)
    if head == "classifier":
        return encode_pairs(examples, tokenizer, max_length)
    if head == "multiple_choice":
        return encode_choice_pairs(examples, tokenizer, max_length)
    prompt = cfg.model.prompt
    text = prompt.template or formats.DEFAULT_TEMPLATES.get(source.format)
    if text is None:
        raise ConfigError(f"config field 'model.prompt.template': format {source.format!r} has no default template")
    template = PromptTemplate.parse(text, choice=choice)
    classes = formats.CHOICE_CLASSES if choice else formats.class_names(source)
    verbalizer = build_verbalizer(prompt, formats.DEFAULT_VERBALIZERS.get(source.format), classes, tokenizer)
    if choice:
        return encode_choice_prompts(examples, tokenizer, max_length, template, verbalizer)
    return encode_prompts(examples, tokenizer, max_length, template, verbalizer)


def shard_record(feature: ClassificationFeature, source: SourceConfig) -> ShardRecord:
    """A feature as a shard sample, grouped by language."""
    return ShardRecord(uid=feature.uid, part=0, arrays=feature.arrays, group=feature.language,
                       source=f"{source.name}:{Path(feature.source.rsplit(':', 1)[0]).name}",
                       meta={"instance": feature.instance, "language": feature.language})


@dataclass
class ClassificationEvalData(EvalData):
    """A classification evaluation set: :class:`EvalData` plus its class names."""

    class_names: list[str] = field(default_factory=list)

    supervised: list[str] | None = None
    """A branched (MBLM) model's supervised languages: the report scores them and the rest (zero-shot)
    separately. None for an ordinary model."""


class ClassificationTask:
    """Classification: class logits ``[B, C]``, cross-entropy, accuracy per language and its disparity."""

    name = "classification"
    model_inputs = MODEL_INPUTS

    # ---- data -------------------------------------------------------------------------------------

    def read(self, source: SourceConfig, data: DataConfig, *, epoch: int = 0) -> SourceRead:
        result = read_classification_source(source, root=data.root, bad_records=data.bad_records)
        notes = [f"{result.instances} instances per language in {len(result.languages)} languages"]
        return SourceRead(examples=result.examples, skipped=result.skipped, notes=notes)

    def new_feature_stats(self) -> ClassificationFeatureStats:
        return ClassificationFeatureStats()

    def shard_records(
        self, examples: Iterable[ClassificationExample], tokenizer: Any, cfg: JobConfig,
        stats: ClassificationFeatureStats, source: SourceConfig,
    ) -> Iterator[ShardRecord]:
        iterator = iter(examples)
        while chunk := list(itertools.islice(iterator, ENCODE_CHUNK)):
            features = encode(chunk, tokenizer, cfg, source)
            stats.add(features)
            for feature in features:
                yield shard_record(feature, source)

    def eval_data(self, source: SourceConfig, cfg: JobConfig, tokenizer: Any) -> ClassificationEvalData:
        read = self.read(source, cfg.data)
        if read.skipped.total:
            log.warning("eval set %s: %s", source.name, read.skipped.summary())
        features = encode(read.examples, tokenizer, cfg, source)
        inputs = {k: v for k, v in collate(features).items() if k != "labels"} if features else {}
        supervised = list(cfg.model.branches.languages) if cfg.model.branches is not None else None
        if supervised is not None and features:  # the branched classifier's route per row
            inputs["branch"] = branch_array([f.language for f in features], supervised)
        return ClassificationEvalData(name=source.name, inputs=inputs, examples=read.examples, features=features,
                                      class_names=formats.class_names(source), supervised=supervised)

    # ---- model ------------------------------------------------------------------------------------

    def build_model(
        self, cfg: ModelConfig, *, tokenizer: Any = None, checkpoint: str | Path | None = None,
        ds_config: dict | None = None,
    ) -> Any:
        if checkpoint is not None:
            model = load_classification_model(cfg.head, checkpoint, ds_config=ds_config)
            return check_loaded(model, cfg, str(checkpoint)) if cfg.head == "classifier" else model
        if tokenizer is None:
            raise ValueError("ClassificationTask.build_model: a tokenizer is needed to size a new model's vocabulary")
        if cfg.head == "classifier" and not cfg.labels:
            raise ConfigError("config field 'model.labels': the classifier needs its class names")
        if cfg.branches is not None:
            return build_branched_classifier(cfg, class_names=list(cfg.labels or []), vocab_size=len(tokenizer),
                                             pad_token_id=tokenizer.pad_token_id, ds_config=ds_config)
        return build_classification_model(cfg, cfg.head, class_names=list(cfg.labels or []), vocab_size=len(tokenizer),
                                          pad_token_id=tokenizer.pad_token_id, ds_config=ds_config)

    def logits(self, model: Any, batch: dict[str, Any], device: torch.device | None = None) -> torch.Tensor:
        """Class logits ``[B, C]`` (choice tasks: one score per choice), float32."""
        return class_logits(model, batch, device)

    def loss(self, logits: torch.Tensor, batch: dict[str, Any]) -> torch.Tensor:
        return cross_entropy(logits, batch)

    # ---- evaluation -------------------------------------------------------------------------------

    def score(self, data: ClassificationEvalData, logits: np.ndarray, cfg: EvalConfig) -> EvalResult:
        from xdist.tasks.classification.scoring import score_set  # matplotlib/scipy only when scoring

        return score_set(data.name, list(data.examples), logits, data.class_names, pivot=cfg.pivot,
                         supervised=data.supervised).result()
