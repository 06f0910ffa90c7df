"""MBLM's monolingual teachers: load one, classify raw examples with its own tokenizer, fingerprint it.

A teacher is a local ``save_pretrained`` sequence-classification checkpoint with the task's classes. Its
tokenizer is the one saved beside it (a teacher is usually a monolingual model with a vocabulary of its own);
a directory without one uses the student's. Rows are encoded exactly as the classification task encodes
them for a classifier head (:func:`xdist.tasks.classification.features.encode_pairs`: ``longest_first``
truncation), at the teacher's ``max_length``.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from xdist.config import ConfigError
from xdist.data.shards import sample_key
from xdist.methods.base import MethodContext
from xdist.methods.teacher_cache import Compute, MultiTeacherCache
from xdist.tasks.classification.examples import ClassificationExample
from xdist.tasks.classification.features import collate, encode_pairs

_TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json")


def _field(language: str) -> str:
    return f"method.teachers.{language}"


def teacher_directory(language: str, checkpoint: str) -> Path:
    """The teacher's checkpoint directory, checked (a config error naming the field otherwise)."""
    directory = Path(checkpoint).expanduser()
    if not (directory / "config.json").is_file():
        raise ConfigError(f"config field '{_field(language)}': {checkpoint!r} is not a save_pretrained checkpoint "
                          f"(no config.json); train a sequence classifier on {language} alone first and point "
                          "this field at its export")
    if not any(directory.glob("*.safetensors")):
        raise ConfigError(f"config field '{_field(language)}': {checkpoint!r} has a config.json but no "
                          "*.safetensors weights")
    return directory


def teacher_tokenizer_directory(directory: Path, student_tokenizer: str | Path) -> Path:
    """The tokenizer saved with the teacher, or the student's when the teacher directory has none."""
    return directory if (directory / "tokenizer.json").is_file() else Path(student_tokenizer)


def fingerprint(language: str, checkpoint: str, student_tokenizer: str | Path, max_length: int,
                examples: Sequence[ClassificationExample]) -> str:
    """Changes when the teacher's weights or config, its tokenizer, ``max_length`` or the examples change."""
    directory = teacher_directory(language, checkpoint)
    digest = hashlib.sha256()
    tokenizer_dir = teacher_tokenizer_directory(directory, student_tokenizer)
    files = [directory / "config.json", *sorted(directory.glob("*.safetensors"))]
    files += [tokenizer_dir / name for name in _TOKENIZER_FILES if (tokenizer_dir / name).is_file()]
    for path in files:
        stat = path.stat()
        digest.update(f"{path.resolve()}:{stat.st_size}:{stat.st_mtime_ns}\n".encode())
    digest.update(f"max_length={max_length}\n".encode())
    for e in examples:
        digest.update(json.dumps([e.uid, e.text_a, e.text_b]).encode())
    return digest.hexdigest()[:16]


def teacher_loader(language: str, checkpoint: str, *, student_tokenizer: str | Path, max_length: int,
                   class_names: list[str], device: torch.device) -> Any:
    """``load()`` for :func:`xdist.methods.teacher_cache.build_text_teacher_cache`: loads the teacher and its
    tokenizer and returns ``compute(examples) -> logits [n, C]`` (float32) holding them."""

    def load() -> Compute:
        from transformers import AutoModelForSequenceClassification

        from xdist.data.tokenizer import load_tokenizer

        directory = teacher_directory(language, checkpoint)
        tokenizer = load_tokenizer(teacher_tokenizer_directory(directory, student_tokenizer))
        model = AutoModelForSequenceClassification.from_pretrained(directory, local_files_only=True)
        labels = [model.config.id2label[i] for i in range(model.config.num_labels)]
        if model.config.num_labels != len(class_names):
            raise ConfigError(f"config field '{_field(language)}': the teacher has {model.config.num_labels} "
                              f"classes {labels}, the task {len(class_names)} {class_names}")
        named = [label for label in labels if not str(label).startswith("LABEL_")]
        if named and labels != list(class_names):
            raise ConfigError(f"config field '{_field(language)}': the teacher's classes {labels} are not the "
                              f"task's {list(class_names)} (same names, same order)")
        model.to(device).eval().requires_grad_(False)

        @torch.no_grad()
        def compute(examples: list[ClassificationExample]) -> torch.Tensor:
            batch = collate(encode_pairs(examples, tokenizer, max_length))
            inputs = {k: torch.from_numpy(batch[k]).to(device) for k in tokenizer.model_input_names if k in batch}
            return model(**inputs).logits.float()

        return compute

    return load


# --------------------------------------------------------------------------------------------------
# The job's teacher pass (method.name: mblm in the training loop)
# --------------------------------------------------------------------------------------------------


def check_training_languages(context: MethodContext) -> None:
    """Every language in the training shards has a branch (MBLM trains on its supervised languages only):
    a :class:`ConfigError` naming the shards' other languages otherwise, before any teacher is loaded."""
    branches = context.cfg.model.branches
    manifest = context.manifest_for_epoch(0)
    others = sorted(set(manifest.groups) - set(branches.languages))
    if others:
        raise ConfigError(
            f"config field 'model.branches.languages': the training shards in {manifest.directory} hold rows in "
            f"{others}, which have no branch (branches: {branches.languages}); MBLM trains on its supervised "
            "languages only: add branches, or restrict data.train[].languages and re-run xdist prepare"
        )


def job_examples(context: MethodContext) -> dict[str, list[ClassificationExample]]:
    """The training examples of each supervised language, read from ``data.train`` as ``xdist prepare``
    read them (same readers, splits and limits), in file order."""
    cfg = context.cfg
    by_language: dict[str, list[ClassificationExample]] = {lang: [] for lang in cfg.model.branches.languages}
    for source in cfg.data.train:
        for example in context.task.read(source, cfg.data).examples:
            if example.language in by_language:
                by_language[example.language].append(example)
    return by_language


def build_job_cache(context: MethodContext) -> MultiTeacherCache:
    """The teacher-logit cache of a training job, under ``<train.output_dir>/teacher_cache/<language>``:
    each supervised language's teacher classifies that language's training examples from their raw texts,
    keyed by the examples' shard sample keys (what the stream's batches carry). Reused when a complete cache
    has the same fingerprint (teacher files, tokenizer, length, examples), e.g. on ``--resume``. Collective."""
    cfg, mcfg = context.cfg, context.method.mblm
    max_length = mcfg.teacher_max_length or cfg.features.max_length
    loaders, items, prints = {}, {}, {}
    for lang, rows in job_examples(context).items():
        checkpoint = context.method.teachers[lang]
        if not rows:
            raise ConfigError(f"config field 'model.branches.languages': {lang!r} has no training examples in "
                              "data.train; every branch needs its language's labelled rows")
        loaders[lang] = teacher_loader(lang, checkpoint, student_tokenizer=cfg.features.tokenizer,
                                       max_length=max_length, class_names=list(cfg.model.labels or []),
                                       device=context.dist.device)
        items[lang] = [(sample_key(e.uid, 0), e) for e in rows]  # classification records are part 0
        prints[lang] = fingerprint(lang, checkpoint, cfg.features.tokenizer, max_length, rows)
    return MultiTeacherCache.build(loaders, items, context.output_dir / "teacher_cache", context.dist,
                                   fingerprints=prints, batch_size=mcfg.cache_batch_size)
