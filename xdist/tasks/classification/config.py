"""Configuration of the cross-lingual classification family: sources, the group split, the prompt head.

Typed dataclasses in the style of :mod:`xdist.config` (a docstring per field, strict loading through
:func:`xdist.config.build`, errors naming the field). The job-level fields that select the task and the
head live in the job config; these sections describe what is specific to classification.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Literal

from xdist.config import _fail

SourceFormat = Literal["xnli", "pawsx", "xcopa", "jsonl", "csv", "tsv", "hf"]

# Our field names for the columns of a source, and what each holds. Built-in formats fix them; the generic
# formats (jsonl/csv/tsv/hf) map them to the dataset's column names with ``columns``.
FIELDS = ("text_a", "text_b", "label", "id", "premise", "choice1", "choice2", "question")

FORMAT_DEFAULTS: dict[str, dict] = {
    "xnli": {"labels": ["entailment", "neutral", "contradiction"], "group_by": "text_a", "parallel": True},
    "pawsx": {"labels": ["0", "1"], "group_by": "text_a", "parallel": True},
    "xcopa": {"labels": ["choice1", "choice2"], "group_by": "instance", "parallel": True},
}
"""Per built-in format: class names in id order, the group key and whether the languages are parallel.
XNLI's order is the Hugging Face ``xnli`` dataset's ClassLabel order (entailment 0, neutral 1,
contradiction 2); PAWS-X labels are the raw 0/1 (1 = paraphrase); XCOPA's label is the correct choice."""


@dataclass
class GroupSplitConfig:
    """Deterministic train/eval split by *group* (XNLI: the premise shared by three hypotheses), stable
    across languages and file order. See :func:`xdist.tasks.classification.readers.group_is_eval`."""

    eval_fraction: float = 0.25
    """Fraction of groups held out for evaluation (in expectation: each group is decided by a hash)."""

    seed: int = 0
    """Seed of the split; a group's side is a hash of (seed, group key)."""

    def __post_init__(self) -> None:
        if not 0.0 < self.eval_fraction < 1.0:
            _fail("eval_fraction", f"expected a number in (0, 1), got {self.eval_fraction}")


@dataclass
class ClassificationSourceConfig:
    """One raw classification source: a family of per-language files (or a Hugging Face dataset)."""

    name: str
    """Short name used in uids, manifests, metrics and TensorBoard tags (``xnli``, ``pawsx``)."""

    format: SourceFormat = "xnli"
    """``xnli``: TSV premise, hypothesis, label (or premise, hypothesis with ``labelled: false``), no header;
    ``pawsx``: TSV sentence1, sentence2, label 0/1, no header; ``xcopa``: JSONL premise, choice1, choice2,
    question, label (choice index); files ``<split>-<lang>.<ext>`` in directory ``path``.
    ``jsonl``/``csv``/``tsv``: local files with named columns (a header row for CSV/TSV), mapped by
    ``columns``; ``hf``: a Hugging Face ``datasets`` dataset (hub name, or a ``save_to_disk`` directory)."""

    path: str = ""
    """Directory of the per-language files (built-in formats), or a file / a file pattern with ``{lang}``
    (generic formats), relative to ``data.root`` unless absolute; for ``hf``: a ``save_to_disk`` directory
    (may contain ``{lang}``) or a hub dataset name (``xnli``, ``google-research-datasets/paws-x``)."""

    split: str | None = None
    """Built-in formats: the file-name prefix (``dev``/``test`` for XNLI, ``dev``/``test``/``train`` for
    PAWS-X, ``val``/``test``/``train`` for XCOPA); None = the only prefix present. ``hf``: the dataset split
    (``train``, ``validation``...); required for a hub name or a ``DatasetDict`` directory."""

    hf_config: str | None = None
    """``hf`` only: the dataset configuration name; ``{lang}`` is replaced by each language (``xnli`` has
    one configuration per language)."""

    languages: list[str] | None = None
    """Languages to load (None = every language whose file is present; required with ``{lang}`` patterns
    that cannot be listed, e.g. ``hf``)."""

    language: str | None = None
    """The language of a single-language source (a path without ``{lang}``)."""

    columns: dict[str, str] = field(default_factory=dict)
    """Generic formats: our field -> the dataset's column name, for fields ``text_a``, ``text_b``, ``label``
    (pair classification) or ``premise``, ``choice1``, ``choice2``, ``question``, ``label`` (choice
    tasks), and an optional ``id``. Unmapped fields default to the same name when the column exists."""

    labels: list[str] | None = None
    """Class names in id order (None = the format's, see ``FORMAT_DEFAULTS``; required for generic
    formats). A row's label may be the name (``"entailment"``) or, for integer labels, the id."""

    labelled: bool = True
    """False: the source has no label column (XNLI's unlabelled test text, self-distillation data)."""

    parallel: bool | None = None
    """The languages are translations row by row: checked (same row count, same ids where ids exist) and
    given one instance uid per row across languages. None = the format's default (built-ins: true)."""

    group_by: Literal["text_a", "text_b", "premise", "id", "instance"] | None = None
    """What defines a group for the split: a text field of ``group_language`` (XNLI: the premise shared by
    three hypotheses), the row id, or the instance itself. None = the format's default."""

    group_language: str = "en"
    """The language whose text defines the groups of a parallel source (the first language if absent), so
    that every language's copy of an instance falls on the same side."""

    groups: Literal["all", "train", "eval"] = "all"
    """Which side of the group split to keep (``group_split``)."""

    group_split: GroupSplitConfig = field(default_factory=GroupSplitConfig)
    """The deterministic group split."""

    max_examples: int | None = None
    """Keep at most this many instances per language (the first, after the split), so parallel languages
    keep the same instances."""

    def __post_init__(self) -> None:
        if not self.name or not re.fullmatch(r"[A-Za-z0-9_.-]+", self.name):
            _fail("name", f"expected a non-empty name of letters, digits, '_', '.', '-', got {self.name!r}")
        if not self.path:
            _fail("path", "expected a directory, file, pattern with {lang} or dataset name")
        unknown = sorted(set(self.columns) - set(FIELDS))
        if unknown:
            _fail(f"columns.{unknown[0]}", f"unknown field; map any of {list(FIELDS)} to a column name")
        if self.format in FORMAT_DEFAULTS and self.columns:
            _fail("columns", f"format {self.format!r} has fixed columns; 'columns' is for jsonl/csv/tsv/hf")
        if self.format not in FORMAT_DEFAULTS and self.labelled and not self.labels:
            _fail("labels", f"format {self.format!r} needs the class names in id order, e.g. [negative, positive]")
        if self.labels is not None and len(set(self.labels)) != len(self.labels) or self.labels == []:
            _fail("labels", f"expected distinct class names, got {self.labels}")
        if self.max_examples is not None and self.max_examples <= 0:
            _fail("max_examples", f"expected a positive integer or null, got {self.max_examples}")
        if self.language is not None and self.languages is not None:
            _fail("language", "set either 'language' (one language) or 'languages', not both")

    @property
    def class_names(self) -> list[str]:
        """Class names in id order."""
        return list(self.labels or FORMAT_DEFAULTS[self.format]["labels"])

    @property
    def is_choice(self) -> bool:
        """A choice task (XCOPA-like: score each choice, argmax) rather than pair classification."""
        return self.format == "xcopa" or "choice1" in self.columns

    @property
    def is_parallel(self) -> bool:
        """Whether the languages are checked and aligned as parallel."""
        if self.parallel is not None:
            return self.parallel
        return bool(FORMAT_DEFAULTS.get(self.format, {}).get("parallel", False))

    @property
    def group_key(self) -> str:
        """The resolved ``group_by``."""
        return self.group_by or FORMAT_DEFAULTS.get(self.format, {}).get("group_by", "instance")


DEFAULT_TEMPLATES: dict[str, str] = {
    # ALSACE's XNLI template (methods.md §C.2, template_id 2) without its six added prompt-filler tokens,
    # which need tokenizer surgery; the English template is used for every language, as in the authors' code.
    "xnli": "Suppose {text_a} Can we infer that {text_b}? Yes, no or maybe? Answer: {mask}.",
    # ALSACE's PAWS-X template, verbatim (its grammar included).
    "pawsx": (
        "Are the following sentences {text_a} and {text_b} are paraphrases of each other? yes or no? Answer: {mask}."
    ),
    # Ours (ALSACE has no XCOPA code): each choice is scored by P(yes) - P(no) at the mask.
    "xcopa": "{premise} What was the {question}? {choice} Right? Answer: {mask}.",
}
"""Cloze templates per format; ``{mask}`` is the tokenizer's mask token."""

DEFAULT_VERBALIZERS: dict[str, dict[str, list[str]]] = {
    "xnli": {"entailment": ["yes"], "neutral": ["maybe"], "contradiction": ["no"]},
    "pawsx": {"0": ["no"], "1": ["yes"]},
    # XCOPA's prompt head scores each choice with a binary right/wrong verbalizer.
    "xcopa": {"wrong": ["no"], "right": ["yes"]},
}
"""ALSACE's verbalizers (methods.md §C.2). XLM-R's SentencePiece has ``▁yes``/``▁maybe``/``▁no`` as single
tokens; mBERT's cased WordPiece splits ``yes`` and ``maybe``, so recipes with it use ``Yes``/``Maybe``/``No``."""


@dataclass
class PromptConfig:
    """The prompt head (ALSACE): a cloze template with one mask and a verbalizer of label words."""

    template: str | None = None
    """Cloze template with ``{mask}`` exactly once and the text slots ``{text_a}``/``{text_b}`` (aliases
    ``{premise}``/``{hypothesis}``, ``{sentence1}``/``{sentence2}``) or, for choice tasks, ``{premise}``,
    ``{question}``, ``{choice}``. Only the slots are truncated to fit ``max_length`` (longest first), never
    the template, so the mask always survives. None = the format's default (``DEFAULT_TEMPLATES``)."""

    verbalizer: dict[str, list[str]] | None = None
    """Class name -> label words (one or more). A class's logit is the mean over its words of each word's
    logit at the mask. None = the format's default (``DEFAULT_VERBALIZERS``)."""

    multi_token: Literal["error", "first", "mean"] = "error"
    """A label word that is several tokens of the tokenizer: ``error`` (name the word), ``first`` (the
    word's logit is its first sub-token's), ``mean`` (the mean of its sub-tokens' logits at the one mask).
    ALSACE's code multiplies sub-token logits; a product of logits is not a score, so it is not offered."""

    loss: Literal["classes", "vocab"] = "classes"
    """Hard-label loss of the prompt head: cross-entropy over the class logits (``classes``), or over the
    full vocabulary at the mask with the gold class's first label word as target (``vocab``: ALSACE's
    stage 0, Hugging Face's MaskedLM loss)."""

    def __post_init__(self) -> None:
        if self.template is not None and self.template.count("{mask}") != 1:
            _fail("template", f"expected exactly one {{mask}}, got {self.template!r}")
        if self.verbalizer is not None:
            for name, words in self.verbalizer.items():
                if not words or any(not w.strip() for w in words):
                    _fail(f"verbalizer.{name}", f"expected a non-empty list of label words, got {words}")
