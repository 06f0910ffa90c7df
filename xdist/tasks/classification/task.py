"""Cross-lingual classification (XNLI, PAWS-X, XCOPA, generic sources) as a :class:`xdist.tasks.base.Task`.

Reading: :mod:`~xdist.tasks.classification.readers`; features for the configured head
(:mod:`~xdist.tasks.classification.features`); model, logits and loss: :mod:`~xdist.tasks.classification.heads`;
scoring: accuracy per language and the disparity summary (:mod:`~xdist.tasks.classification.metrics`).

One job has one head (``model.head``) and one class inventory (``model.labels``); a source whose classes
differ from the model's, or a choice source (XCOPA) under a ``classifier`` head, is a config error naming
both fields. The prompt head's template and verbalizer (``model.prompt``) default per source format.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from xdist.config import ConfigError, JobConfig, ModelConfig, SourceConfig
from xdist.tasks.classification import formats
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

MODEL_INPUTS = (*INPUT_NAMES, "mask_positions", "verbalizer_ids", "verbalizer_weights")
"""Batch fields :func:`~xdist.tasks.classification.heads.class_logits` reads (the prompt fields only exist
for the prompt head)."""


def _source_field(cfg: JobConfig, source: SourceConfig) -> str:
    for kind, sources in (("data.train", cfg.data.train), ("eval.sets", cfg.eval.sets)):
        for i, candidate in enumerate(sources):
            if candidate is source or candidate == source:
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
    """Examples featurised per language, and how many filled ``max_length`` (were probably truncated)."""

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
        return (f"{total} examples in {len(self.examples)} languages; {self.full_length} fill max_length "
                f"(texts truncated)")

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


class ClassificationTask:
    """Classification: class logits ``[B, C]``, cross-entropy, accuracy per language and its disparity."""

    name = "classification"
    model_inputs = MODEL_INPUTS

    # ---- model ------------------------------------------------------------------------------------

    def build_model(
        self, cfg: ModelConfig, *, tokenizer: Any = None, checkpoint: str | Path | None = None,
        ds_config: dict | None = None,
    ) -> Any:
        if checkpoint is not None:
            return load_classification_model(cfg.head, checkpoint, ds_config=ds_config)
        if tokenizer is None:
            raise ValueError("ClassificationTask.build_model: a tokenizer is needed to size a new model's vocabulary")
        if cfg.head == "classifier" and not cfg.labels:
            raise ConfigError("config field 'model.labels': the classifier needs its class names")
        return build_classification_model(cfg, cfg.head, class_names=list(cfg.labels or []), vocab_size=len(tokenizer),
                                          pad_token_id=tokenizer.pad_token_id, ds_config=ds_config)

    def logits(self, model: Any, batch: dict[str, Any], device: torch.device | None = None) -> torch.Tensor:
        """Class logits ``[B, C]`` (choice tasks: one score per choice), float32."""
        return class_logits(model, batch, device)

    def loss(self, logits: torch.Tensor, batch: dict[str, Any]) -> torch.Tensor:
        return cross_entropy(logits, batch)


def predictions(logits: np.ndarray) -> np.ndarray:
    """Argmax class per row (ties: the lowest class id, numpy's rule)."""
    return np.asarray(logits).argmax(axis=-1)


def batches_of(features: Sequence[ClassificationFeature], size: int) -> Iterator[dict[str, torch.Tensor]]:
    """Collated tensor batches of ``features`` (for in-process evaluation and benchmarks)."""
    for start in range(0, len(features), size):
        yield {k: torch.as_tensor(v) for k, v in collate(features[start : start + size]).items()}


def read(source: SourceConfig, cfg: JobConfig) -> tuple[list[ClassificationExample], Any]:
    """Read one source with the job's data root and bad-record policy."""
    result = read_classification_source(source, root=cfg.data.root, bad_records=cfg.data.bad_records)
    return result.examples, result
