"""Typed configuration: dataclasses loaded from YAML, with ``--set a.b=value`` overrides.

One YAML file describes one job (``xdist prepare``, ``xdist train`` and ``xdist eval`` all read the same
file). Every section is a dataclass below; each field carries its documentation as the string right
under it. Loading is strict: an unknown key, a wrong type or an out-of-range value raises
:class:`ConfigError` naming the dotted field (``train.lr``) and what was expected.

Strings may reference environment variables as ``${VAR}`` or ``${VAR:-default}``; they are expanded
when the file is loaded, so a recipe can say ``root: ${XDIST_DATA:-~/.cache/xdist/data}``.

DeepSpeed settings are *not* re-invented here: ``train.deepspeed`` points at a standard DeepSpeed JSON
file (``configs/deepspeed/zero2.json``...) whose ``"auto"`` values are filled from this config, the way
Hugging Face's Trainer does it (see :mod:`xdist.engine`).
"""

from __future__ import annotations

import dataclasses
import os
import re
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml

from xdist.errors import UserError


class ConfigError(UserError, ValueError):
    """A configuration value is missing, unknown, mistyped or out of range. The message names the field."""


def _fail(path: str, message: str) -> typing.NoReturn:
    raise ConfigError(f"config field '{path}': {message}")


# --------------------------------------------------------------------------------------------------
# Sections
# --------------------------------------------------------------------------------------------------


@dataclass
class SamplingConfig:
    """Cross-lingual sampling (Carrino et al., "CLS"): which (question, context) language pairs each
    question of a parallel source contributes. See :mod:`xdist.tasks.qa.sampling` for the exact rule."""

    ntl: int = 5
    """Number of target languages drawn per question, uniformly without replacement. Pivot-centric: ntl
    non-pivot languages plus the pivot (ntl=5 over the 7 MLQA languages: 6 languages, 36 pairs).
    Non-pivot-centric: ntl languages from all of them. ``ntl`` >= the number of candidates: every
    language (all n x n pairs); ``ntl`` = 0: every language, diagonal pairs only (the authors' rules)."""

    pivot: str = "en"
    """The language added to every question's set when ``pivot_centric`` (the authors' English)."""

    pivot_centric: bool = True
    """True: the pivot is always in the set and ntl more are drawn from the others (the authors'
    default). False: ntl languages drawn from all languages, the pivot not forced (the authors'
    ``--non-en-centric``)."""

    seed: int = 3
    """Seed of the draws (the authors' 3). Each question's draw depends only on (seed, epoch, question id)."""

    per_epoch: bool = False
    """False: one draw, used by every epoch (the authors). True: a fresh draw per epoch; ``xdist prepare``
    writes one shard set per epoch (``train.epochs`` of them) and the stream reads epoch e's set."""

    def __post_init__(self) -> None:
        if self.ntl < 0:
            _fail("ntl", f"expected an integer >= 0, got {self.ntl}")
        if not re.fullmatch(r"[a-z]{2,3}", self.pivot):
            _fail("pivot", f"expected a language code such as 'en', got {self.pivot!r}")


QA_FORMATS = ("squad", "xquad", "mlqa", "tydiqa")
"""Source formats of the ``qa`` task (SQuAD v1.1 JSON)."""

CLASSIFICATION_FORMATS = ("xnli", "pawsx", "xcopa", "jsonl", "csv", "tsv", "hf")
"""Source formats of the ``classification`` task; the first three have fixed columns and class names."""

BUILTIN_CLASS_NAMES = {
    "xnli": ["entailment", "neutral", "contradiction"],
    "pawsx": ["0", "1"],
    "xcopa": ["choice1", "choice2"],
}
"""Class names, in id order, of the classification formats with fixed columns. XNLI's order is the Hugging
Face ``xnli`` dataset's ClassLabel order; PAWS-X's are the raw 0/1 (1 = paraphrase); XCOPA's label is the
correct choice."""

CLASSIFICATION_FIELDS = ("text_a", "text_b", "label", "id", "premise", "choice1", "choice2", "question")
"""Our field names that ``columns`` maps to a generic classification source's column names."""


@dataclass
class GroupSplitConfig:
    """Deterministic train/eval split of a classification source by *group* (XNLI: the premise shared by
    three hypotheses), stable across languages and file order (each group's side is a hash of (seed, key))."""

    eval_fraction: float = 0.25
    """Fraction of groups held out for evaluation (in expectation: each group is decided alone)."""

    seed: int = 0
    """Seed of the split."""

    def __post_init__(self) -> None:
        if not 0.0 < self.eval_fraction < 1.0:
            _fail("eval_fraction", f"expected a number in (0, 1), got {self.eval_fraction}")


@dataclass
class SourceConfig:
    """One raw data source: a file or a family of per-language files (or a Hugging Face dataset).

    QA formats (``squad``, ``xquad``, ``mlqa``, ``tydiqa``) use the fields up to ``sampling``;
    classification formats (``xnli``, ``pawsx``, ``xcopa``, ``jsonl``, ``csv``, ``tsv``, ``hf``) use
    ``language(s)``, ``max_examples`` and the fields from ``split`` on."""

    name: str
    """Short name used in manifests, metrics and TensorBoard tags (``xquad``, ``tydiqa-en``, ``xnli``)."""

    format: Literal["squad", "xquad", "mlqa", "tydiqa", "xnli", "pawsx", "xcopa", "jsonl", "csv", "tsv", "hf"] = "squad"
    """File family. QA (SQuAD v1.1 JSON; they differ in how languages are found):
    ``xquad``: ``xquad.<lang>.json`` in directory ``path``, parallel ids across languages;
    ``mlqa``: ``*-context-<c>-question-<q>.json`` files in ``path`` (MLQA's distributed names);
    ``tydiqa``: ``tydiqa.goldp.<lang>.<split>.json`` (language from the name, or ``language``);
    ``squad``: one file, languages from ``language``.
    Classification: ``xnli`` (TSV premise, hypothesis, label — or premise, hypothesis with ``labelled:
    false`` — no header), ``pawsx`` (TSV sentence1, sentence2, label 0/1, no header), ``xcopa`` (JSONL
    premise, choice1, choice2, question, label), each as ``<split>-<lang>.<ext>`` files in directory
    ``path``; ``jsonl``/``csv``/``tsv``: local files with named columns (``columns``; a header row for
    CSV/TSV); ``hf``: a Hugging Face ``datasets`` dataset (a ``save_to_disk`` directory or a hub name)."""

    path: str = ""
    """File, directory or http(s) URL, relative to ``data.root`` unless absolute. Classification generic
    formats: a file or a pattern with ``{lang}``; ``hf``: a ``save_to_disk`` directory (may contain
    ``{lang}``) or a hub dataset name (``xnli``)."""

    language: str | None = None
    """Language of a single-language source (overrides the file name)."""

    languages: list[str] | None = None
    """For multi-language sources: the languages to load (None = every language found; required with
    ``{lang}`` patterns)."""

    pairs: str | None = None
    """QA: which (question language, context language) cells to build: ``diagonal`` (monolingual), ``all``
    (every ordered pair: the G-XLT matrix), or a comma-separated list such as ``en-de,de-en``.
    None = the format's natural default: every cell file found for ``mlqa``, ``diagonal`` otherwise."""

    articles: Literal["all", "train", "eval"] = "all"
    """QA: which side of the article-title split (``data.title_split``) to keep. XQuAD is parallel, so any
    use of it for training must split by article, never by question."""

    max_examples: int | None = None
    """Keep at most this many examples per (question, context) cell (None = all); for quick runs. With
    ``sampling``: at most this many questions. Classification: at most this many instances per language
    (the first, after the group split; the same instances in every language)."""

    sampling: SamplingConfig | None = None
    """QA: cross-lingual sampling of (question, context) pairs per question (``format: xquad`` only;
    replaces ``pairs``). None = the cells of ``pairs``."""

    split: str | None = None
    """Classification. Built-in formats: the file-name prefix (``dev``/``test`` for XNLI, ``dev``/``test``/
    ``train`` for PAWS-X, ``val``/``test``/``train`` for XCOPA); None = the only prefix present. ``hf``: the
    dataset split (required for a hub name or a ``DatasetDict`` directory)."""

    hf_config: str | None = None
    """Classification, ``hf``: the dataset configuration; ``{lang}`` is replaced by each language."""

    columns: dict[str, str] = field(default_factory=dict)
    """Classification, generic formats: our field -> the dataset's column, for ``text_a``, ``text_b``,
    ``label`` (pair tasks) or ``premise``, ``choice1``, ``choice2``, ``question``, ``label`` (choice tasks),
    and an optional ``id``. Unmapped fields read the column of the same name."""

    labels: list[str] | None = None
    """Classification: class names in id order (None = the format's: XNLI entailment, neutral,
    contradiction; PAWS-X 0, 1; XCOPA choice1, choice2; required for generic formats). A row's label may be
    the name or, for integer labels, the id."""

    labelled: bool = True
    """Classification: False for sources without labels (XNLI's unlabelled test text)."""

    parallel: bool | None = None
    """Classification: the languages are row-by-row translations — checked (same row count, same ids where
    ids exist) and given one instance uid per row. None = the format's default (built-ins: true)."""

    group_by: Literal["text_a", "text_b", "premise", "id", "instance"] | None = None
    """Classification: what defines a split group — a text of ``group_language``'s copy (XNLI, PAWS-X:
    ``text_a``, the premise / first sentence), the row id, or the instance alone (XCOPA). None = the
    format's default."""

    group_language: str = "en"
    """Classification, parallel sources: the language whose text keys the groups, so every language's copy
    of an instance falls on the same side. Its copy is read for the keys even when ``languages`` leaves it
    out, so configs reading different languages of one source split it identically (an error if the source
    has no such copy; the read language itself only for a single file without a ``{lang}`` pattern)."""

    groups: Literal["all", "train", "eval"] = "all"
    """Classification: which side of the group split (``group_split``) to keep."""

    group_split: GroupSplitConfig = field(default_factory=GroupSplitConfig)
    """Classification: the deterministic group split."""

    metric: Literal["squad", "mlqa"] | None = None
    """How answers are normalised when this source is scored as an eval set: ``squad`` (the SQuAD v1.1
    script: ASCII punctuation, English articles, whitespace tokens, whatever the language) or ``mlqa``
    (MLQA's script: Unicode punctuation, the answer language's articles, Chinese by character; only MLQA's
    seven languages). None = the protocol of the data set's own papers: ``mlqa`` for ``format: mlqa``,
    ``squad`` for XQuAD (as Carrino et al. score it), TyDi QA and SQuAD."""

    @property
    def scoring(self) -> Literal["squad", "mlqa"]:
        """The normalisation this source is scored with (:attr:`metric`, or the format's default)."""
        return self.metric or ("mlqa" if self.format == "mlqa" else "squad")

    def __post_init__(self) -> None:
        if not self.name:
            _fail("name", "expected a non-empty string")
        if not self.path:
            _fail("path", "expected a file, directory or URL")
        if self.max_examples is not None and self.max_examples <= 0:
            _fail("max_examples", f"expected a positive integer or null, got {self.max_examples}")
        if self.format in CLASSIFICATION_FORMATS:
            self._check_classification()
        else:
            self._check_qa()

    def _check_qa(self) -> None:
        changed = [f.name for f in dataclasses.fields(self)
                   if f.name in _CLASSIFICATION_ONLY and getattr(self, f.name) != _default(f)]
        if changed:
            _fail(changed[0], f"is for classification formats {list(CLASSIFICATION_FORMATS)}, not {self.format!r}")
        if self.sampling is not None:
            if self.format != "xquad":
                _fail("sampling", f"needs a parallel source (format: xquad), got format {self.format!r}")
            if self.pairs is not None:
                _fail("pairs", f"cannot be combined with 'sampling', which decides the cells (got {self.pairs!r})")
            languages = self.languages
            if self.sampling.pivot_centric and languages is not None and self.sampling.pivot not in languages:
                _fail("sampling.pivot", f"{self.sampling.pivot!r} is not among languages {languages}")
        if self.pairs not in (None, "diagonal", "all"):
            for cell in self.pairs.split(","):
                if not re.fullmatch(r"[a-z]{2,3}-[a-z]{2,3}", cell.strip()):
                    _fail("pairs", f"expected 'diagonal', 'all' or 'q-c,q-c,...', got {self.pairs!r}")

    def _check_classification(self) -> None:
        for name in ("pairs", "sampling"):
            if getattr(self, name) is not None:
                _fail(name, f"is for QA sources; format {self.format!r} is a classification format")
        if self.articles != "all":
            _fail("articles", "is for QA sources; classification sources split by group ('groups', 'group_split')")
        if not re.fullmatch(r"[A-Za-z0-9_.-]+", self.name):
            _fail("name", f"expected letters, digits, '_', '.', '-' (it is part of example uids), got {self.name!r}")
        unknown = sorted(set(self.columns) - set(CLASSIFICATION_FIELDS))
        if unknown:
            _fail(f"columns.{unknown[0]}", f"unknown field; map any of {list(CLASSIFICATION_FIELDS)} to a column")
        if self.format in BUILTIN_CLASS_NAMES and self.columns:
            _fail("columns", f"format {self.format!r} has fixed columns; 'columns' is for jsonl/csv/tsv/hf")
        if self.format not in BUILTIN_CLASS_NAMES and self.labelled and not self.labels:
            _fail("labels", f"format {self.format!r} needs the class names in id order, e.g. [negative, positive]")
        if self.labels is not None and (not self.labels or len(set(self.labels)) != len(self.labels)):
            _fail("labels", f"expected distinct class names, got {self.labels}")
        if self.language is not None and self.languages is not None:
            _fail("language", "set either 'language' (one language) or 'languages', not both")


_CLASSIFICATION_ONLY = ("split", "hf_config", "columns", "labels", "labelled", "parallel", "group_by",
                        "group_language", "groups", "group_split")


def _default(f: dataclasses.Field) -> Any:
    return f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default


@dataclass
class TitleSplitConfig:
    """Deterministic split of articles into train and eval by title (stable across languages)."""

    eval_fraction: float = 0.25
    """Fraction of article titles held out for evaluation."""

    seed: int = 0
    """Seed of the split; the assignment is a hash of (seed, title), so it never depends on file order."""

    def __post_init__(self) -> None:
        if not 0.0 < self.eval_fraction < 1.0:
            _fail("eval_fraction", f"expected a number in (0, 1), got {self.eval_fraction}")


@dataclass
class FeatureConfig:
    """How examples become fixed-length token features (SQuAD-style sliding windows)."""

    tokenizer: str = "${XDIST_TOKENIZER:-bert-base-multilingual-cased}"
    """A Hugging Face *fast* tokenizer (``tokenizer.json``): a local directory, or a Hub id resolved through
    the Hugging Face cache (downloaded unless ``HF_HUB_OFFLINE=1``). Default: ``$XDIST_TOKENIZER``, else the
    Hub's multilingual BERT (cased)."""

    max_length: int = 384
    """Tokens per feature: ``[CLS] question [SEP] context-window [SEP]`` plus padding."""

    doc_stride: int = 128
    """Overlap, in tokens, between consecutive windows of a long context."""

    max_query_length: int = 64
    """Questions longer than this many tokens are truncated."""

    def __post_init__(self) -> None:
        for name in ("max_length", "doc_stride", "max_query_length"):
            if getattr(self, name) <= 0:
                _fail(name, f"expected a positive integer, got {getattr(self, name)}")


@dataclass
class DataConfig:
    """Raw sources, the article split, and where shards are written and read."""

    root: str = "${XDIST_DATA:-~/.cache/xdist/data}"
    """Directory (or URL prefix) that relative source paths are resolved against."""

    train: list[SourceConfig] = field(default_factory=list)
    """Sources written to the training shards by ``xdist prepare``."""

    title_split: TitleSplitConfig = field(default_factory=TitleSplitConfig)
    """The article split used by sources with ``articles: train|eval``."""

    shards: str = "runs/shards"
    """Directory of the training shards and their ``manifest.json``."""

    samples_per_shard: int = 1000
    """Features per ``.tar`` shard. Use at least world_size x num_workers shards."""

    bad_records: Literal["error", "skip"] = "error"
    """What a malformed record (e.g. an answer offset that does not match its text) does: stop with an
    error naming file and record, or be skipped, counted and reported in the manifest and the log."""

    num_workers: int = 1
    """DataLoader worker processes per rank reading the shards."""

    shuffle_buffer: int = 1000
    """Per-reader shuffle buffer (samples), on top of the per-epoch shard permutation."""

    uneven: Literal["repeat", "refuse"] = "repeat"
    """When ranks would receive unequal numbers of batches: ``repeat`` pads the short readers with a
    re-shuffled repeat of their own samples (counted and logged) so every rank takes the same number of
    steps; ``refuse`` stops at start with an error explaining the imbalance."""

    verify_checksums: bool = True
    """Check every training shard against the sha256 in its manifest as it is read (the whole shard is read,
    hashed, then its samples used), so a corrupt shard is refused, named, before a step trains on it."""

    def __post_init__(self) -> None:
        if self.samples_per_shard <= 0:
            _fail("samples_per_shard", f"expected a positive integer, got {self.samples_per_shard}")
        if self.num_workers < 0:
            _fail("num_workers", f"expected >= 0, got {self.num_workers}")
        if self.shuffle_buffer < 1:
            _fail("shuffle_buffer", f"expected >= 1, got {self.shuffle_buffer}")


@dataclass
class PromptConfig:
    """The ``prompt`` classification head (ALSACE): a cloze template with one mask and a verbalizer."""

    template: str | None = None
    """Cloze template with ``{mask}`` exactly once and the text slots ``{text_a}``/``{text_b}`` (aliases
    ``{premise}``/``{hypothesis}``, ``{sentence1}``/``{sentence2}``) or, for choice tasks, ``{premise}``,
    ``{question}``, ``{choice}``. Only the slots are truncated to fit ``features.max_length`` (longest
    first), never the template, so the mask always survives. None = the source format's default (XNLI:
    ALSACE's "Suppose {premise} Can we infer that {hypothesis}? Yes, no or maybe? Answer: {mask}.")."""

    verbalizer: dict[str, list[str]] | None = None
    """Class name -> label words. A class's logit is the mean over its words of each word's logit at the
    mask. None = the format's default (XNLI: yes / maybe / no; PAWS-X: no / yes; XCOPA: wrong no, right
    yes)."""

    multi_token: Literal["error", "first", "mean"] = "error"
    """A label word that is several tokens: ``error`` (name the word), ``first`` (its first sub-token's
    logit), ``mean`` (the mean of its sub-tokens' logits at the one mask). ALSACE's code multiplies
    sub-token logits, which is not a score, so it is not offered."""

    def __post_init__(self) -> None:
        if self.template is not None and self.template.count("{mask}") != 1:
            _fail("template", f"expected exactly one {{mask}}, got {self.template!r}")
        for name, words in (self.verbalizer or {}).items():
            if not words or any(not isinstance(w, str) or not w.strip() for w in words):
                _fail(f"verbalizer.{name}", f"expected a non-empty list of label words, got {words}")


# --------------------------------------------------------------------------------------------------
# MBLM (model.branches, method.mblm, method.teachers): the branched student and its loss (xdist/branched.py,
# xdist/methods/mblm/). Only the paper's abstract is known: every field here is a reconstruction
# (methods.md §B.3) with the documented default.
# --------------------------------------------------------------------------------------------------

_LANGUAGE = re.compile(r"[a-z]{2,3}(-[A-Za-z]+)?")
"""A language code as configs write it (``en``, ``zh``, ``zh-Hans``)."""


@dataclass
class BranchesConfig:
    """The branched student (:mod:`xdist.branched`): which languages get a branch, how deep, the mixture."""

    languages: list[str] = field(default_factory=list)
    """The supervised languages, one branch each (the branch order). Rows in other languages are zero-shot:
    at inference they take the mixture of all branches."""

    layers: int = 2
    """K: top encoder layers copied per branch, each copy initialised from the pretrained top K layers."""

    share_head: bool = True
    """One classification head for every branch (True) or one per branch (False)."""

    mixture: Literal["uniform", "dirichlet", "learned"] = "uniform"
    """Mixture weights over branches: ``uniform`` (1/M); ``dirichlet``: a fresh draw per micro-batch in
    training (``method.mblm.dirichlet_alpha``, seeded, resumed exactly), the Dirichlet's mean (uniform) at
    inference; ``learned``: a gate ``softmax(W h_cls + b)`` on the shared layers' [CLS], starting uniform."""

    representation: Literal["cls", "layers"] = "cls"
    """What is mixed: the branches' top-layer [CLS] vectors (``cls``), or the hidden states at every branch
    layer (``layers``: a mixture stream through the branch layers, M·K more layer passes)."""

    supervised_inference: Literal["branch", "mixture"] = "branch"
    """At inference a supervised language's rows take their own ``branch`` or the ``mixture``."""

    def __post_init__(self) -> None:
        if not self.languages:
            _fail("languages", "needs the supervised languages, one branch each (e.g. [en, de, zh])")
        for lang in self.languages:
            if not _LANGUAGE.fullmatch(lang):
                _fail("languages", f"expected language codes such as 'en', got {lang!r}")
        if len(set(self.languages)) != len(self.languages):
            _fail("languages", f"a language appears twice: {self.languages}")
        if self.layers < 0:
            _fail("layers", f"expected an integer >= 0, got {self.layers}")


@dataclass
class MBLMConfig:
    """MBLM's loss and teacher pass (:mod:`xdist.methods.mblm.loss` has the formula)."""

    temperature: float = 1.0
    """Distillation temperature T of both KD terms (scaled by T²)."""

    alpha_ce: float = 0.0
    """Weight of a hard-label CE on the own-branch logits (0 = pure distillation)."""

    mixture_weight: float = 1.0
    """λ: weight of the zero-shot-aware term (the mixture distilled to the row's teacher); 0 turns it off."""

    dirichlet_alpha: float = 1.0
    """Concentration of the Dirichlet draws (``model.branches.mixture: dirichlet``); 1 = uniform over the simplex."""

    seed: int = 0
    """Seed of the Dirichlet draws (the same on every rank: one mixture per micro-batch step)."""

    cache_batch_size: int = 64
    """Rows per teacher forward when the teacher-logit cache is built."""

    teacher_max_length: int | None = None
    """Tokens per row for the teachers (None = ``features.max_length``)."""

    def __post_init__(self) -> None:
        if self.temperature <= 0:
            _fail("temperature", f"expected a number > 0, got {self.temperature}")
        for name in ("alpha_ce", "mixture_weight"):
            if getattr(self, name) < 0:
                _fail(name, f"expected a number >= 0, got {getattr(self, name)}")
        if self.dirichlet_alpha <= 0:
            _fail("dirichlet_alpha", f"expected a number > 0, got {self.dirichlet_alpha}")
        if self.cache_batch_size < 1:
            _fail("cache_batch_size", f"expected a positive integer, got {self.cache_batch_size}")
        if self.teacher_max_length is not None and self.teacher_max_length < 8:
            _fail("teacher_max_length", f"expected an integer >= 8 or null, got {self.teacher_max_length}")


@dataclass
class ModelConfig:
    """The model: a ``transformers`` architecture built from a config, or a local checkpoint."""

    checkpoint: str | None = None
    """``save_pretrained`` checkpoint to start from: a local directory or a Hugging Face Hub id such as
    ``xlm-roberta-large`` (safetensors weights; downloaded unless ``HF_HUB_OFFLINE=1``). None = random init."""

    model_type: str = "bert"
    """``transformers`` model type for random init (``bert``, ``xlm-roberta``, ...)."""

    architecture: dict[str, Any] = field(default_factory=dict)
    """Overrides of the ``transformers`` config for random init (``hidden_size``, ``num_hidden_layers``,
    ...). Every key must be an attribute of that config class. ``vocab_size`` defaults to the tokenizer's."""

    dropout: float | None = None
    """If set, overrides hidden and attention dropout of the model config."""

    head: Literal["classifier", "multiple_choice", "prompt"] = "classifier"
    """Classification only: ``classifier`` (``AutoModelForSequenceClassification``), ``multiple_choice``
    (``AutoModelForMultipleChoice``, choice tasks such as XCOPA) or ``prompt`` (``AutoModelForMaskedLM`` on
    a cloze template, class logits = MLM logits at the mask gathered at the verbalizer's tokens)."""

    prompt: PromptConfig = field(default_factory=PromptConfig)
    """Classification, ``head: prompt``: the template and verbalizer."""

    labels: list[str] | None = None
    """Classification: class names in id order (the classifier's ``num_labels``/``id2label``). None = those
    of the first ``data.train`` source (else the first ``eval.sets`` source)."""

    branches: BranchesConfig | None = None
    """Classification with ``head: classifier``: a branched student (MBLM, :mod:`xdist.branched`) — shared
    bottom layers, one copy of the top ``layers`` per supervised language. None = an ordinary model."""

    def __post_init__(self) -> None:
        if self.dropout is not None and not 0.0 <= self.dropout < 1.0:
            _fail("dropout", f"expected a probability in [0, 1), got {self.dropout}")


@dataclass
class TrainConfig:
    """Optimisation, DeepSpeed and the training schedule."""

    deepspeed: str = "configs/deepspeed/zero2.json"
    """Standard DeepSpeed JSON file; its ``"auto"`` values are filled from the fields below."""

    precision: Literal["fp32", "bf16", "fp16"] = "fp32"
    """Training precision. fp16 needs a GPU (DeepSpeed refuses it on CPU)."""

    micro_batch_size: int = 8
    """Features per rank per forward pass."""

    gradient_accumulation_steps: int = 1
    """Micro-batches per optimizer step. Global batch = micro x accumulation x world size."""

    lr: float = 5e-5
    """Peak learning rate (AdamW)."""

    weight_decay: float = 0.0
    """AdamW weight decay (not applied to biases and LayerNorm weights)."""

    adam_betas: list[float] = field(default_factory=lambda: [0.9, 0.999])
    """AdamW betas."""

    adam_eps: float = 1e-8
    """AdamW epsilon."""

    warmup_ratio: float = 0.0
    """Fraction of optimizer steps of linear warm-up before the linear decay to zero."""

    max_grad_norm: float = 1.0
    """Gradient clipping by global norm (0 disables)."""

    epochs: int = 1
    """Passes over the training shards (one epoch = the equalised per-rank batch count)."""

    max_steps: int | None = None
    """Stop after this many optimizer steps (None = run all epochs). The LR schedule spans this."""

    seed: int = 42
    """Seed of model init, shuffling and dropout."""

    output_dir: str = "runs/default"
    """Where checkpoints, the exported model, metrics and TensorBoard logs go."""

    log_every: int = 10
    """Optimizer steps between TensorBoard/console logs."""

    eval_every: int | None = None
    """Optimizer steps between evaluations (None = only at the end)."""

    checkpoint_every: int | None = None
    """Optimizer steps between DeepSpeed checkpoints (None = only at the end)."""

    keep_last: int = 2
    """DeepSpeed checkpoints kept on disk (older ones are deleted)."""

    export: bool = True
    """Write a Hugging Face ``save_pretrained`` checkpoint (safetensors) at the end."""

    on_nonfinite: Literal["stop", "skip", "rollback"] = "skip"
    """A non-finite loss part or gradient norm: ``stop`` the run; ``skip`` the optimizer step (DeepSpeed
    drops its non-finite gradients); ``rollback`` to the last checkpoint and go on from there. Whatever the
    policy, more than ``max_nonfinite_steps`` such steps in a row stop the run, and no checkpoint or export
    is ever written from a non-finite step."""

    max_nonfinite_steps: int = 3
    """Consecutive non-finite optimizer steps tolerated by ``skip``/``rollback`` before the run stops."""

    collective_timeout_s: float = 300.0
    """Seconds a collective (all-reduce, barrier, ...) waits for the other ranks before the job fails;
    given to the process group and DeepSpeed (torch's default is 30 minutes)."""

    watchdog_s: float | None = 600.0
    """A phase of a training step (reading data, forward/backward, optimizer step, the step's all-reduce)
    that makes no progress for this long exits the rank with a message naming rank, step and phase
    (null disables)."""

    signal_grace_s: float = 30.0
    """After SIGTERM/SIGINT: time to finish the current optimizer step and write a checkpoint if it fits
    (SLURM's default grace before SIGKILL is 30 s); the launcher kills what is left after it."""

    def __post_init__(self) -> None:
        positive = ("micro_batch_size", "gradient_accumulation_steps", "epochs", "log_every", "keep_last",
                    "max_nonfinite_steps")
        for name in positive:
            if getattr(self, name) <= 0:
                _fail(name, f"expected a positive integer, got {getattr(self, name)}")
        for name in ("max_steps", "eval_every", "checkpoint_every"):
            value = getattr(self, name)
            if value is not None and value <= 0:
                _fail(name, f"expected a positive integer or null, got {value}")
        if self.lr <= 0:
            _fail("lr", f"expected a positive number, got {self.lr}")
        if not 0.0 <= self.warmup_ratio < 1.0:
            _fail("warmup_ratio", f"expected a number in [0, 1), got {self.warmup_ratio}")
        if len(self.adam_betas) != 2 or not all(0.0 <= b < 1.0 for b in self.adam_betas):
            _fail("adam_betas", f"expected two numbers in [0, 1), got {self.adam_betas}")
        if self.max_grad_norm < 0:
            _fail("max_grad_norm", f"expected >= 0, got {self.max_grad_norm}")
        if not self.adam_eps > 0:
            _fail("adam_eps", f"expected a positive number (it keeps Adam's update finite), got {self.adam_eps}")
        for name in ("collective_timeout_s", "signal_grace_s"):
            if not getattr(self, name) > 0:
                _fail(name, f"expected a positive number of seconds, got {getattr(self, name)}")
        if self.watchdog_s is not None and not self.watchdog_s > 0:
            _fail("watchdog_s", f"expected a positive number of seconds or null, got {self.watchdog_s}")


@dataclass
class EvalConfig:
    """Evaluation sets and SQuAD-style decoding."""

    sets: list[SourceConfig] = field(default_factory=list)
    """Evaluation sources; each yields one EM/F1 cell per (question language, context language)."""

    n_best: int = 20
    """Start and end candidates considered per feature when decoding spans."""

    max_answer_length: int = 30
    """Longest answer span, in tokens."""

    batch_size: int = 32
    """Features per rank per evaluation forward pass."""

    heatmap: bool = True
    """Write a G-XLT heatmap PNG — classification: a per-language accuracy bar chart — (and log it to
    TensorBoard)."""

    pivot: str = "en"
    """Classification: the pivot (training) language of the transfer gap, ``acc(pivot) - mean acc(others)``."""

    def __post_init__(self) -> None:
        for name in ("n_best", "max_answer_length", "batch_size"):
            if getattr(self, name) <= 0:
                _fail(name, f"expected a positive integer, got {getattr(self, name)}")


# --------------------------------------------------------------------------------------------------
# ALSACE (method.alsace): teacher selection, pairs, consistency loss (xdist/methods/alsace/)
# --------------------------------------------------------------------------------------------------


@dataclass
class SelectionConfig:
    """Teacher-language selection (:mod:`xdist.methods.alsace.selection` has the exact rules)."""

    mode: Literal["vote", "ranking", "teachers", "random"] = "vote"
    """``vote``: majority vote of the stage-0 model on the unlabelled set (``xdist select-teachers``);
    ``ranking``: the fixed ``ranking`` with its last ``n_students`` languages as students (the authors'
    released code); ``teachers``: the fixed ``teachers`` list; ``random``: a seeded random split with
    ``n_students`` students (the "no selection" ablation)."""

    tie_break: Literal["probability", "lowest", "exclude"] = "probability"
    """Tied majority votes: the tied class with the highest summed probability, the lowest class index, or
    no pseudo-label (the instance does not count)."""

    reliability: Literal["probability", "agreement"] = "probability"
    """R_l: mean probability of the pseudo-label (the paper's "average confidence"), or the fraction of
    instances whose argmax is the pseudo-label."""

    normalise: Literal["sum", "softmax"] = "sum"
    """S_l = R_l / Σ R (``sum``) or exp(R_l) / Σ exp(R) (``softmax``); the report names the languages the
    other choice would move."""

    comparison: Literal[">", ">="] = ">"
    """Teachers are the languages with S_l > ξ (or >= ξ), ξ = mean S."""

    ranking: list[str] | None = None
    """``ranking`` mode: every language, most reliable first (the authors' XNLI ranking: en, fr, bg, es, de,
    vi, ru, el, zh, th, tr, hi, ar, ur, sw)."""

    n_students: int | None = None
    """``ranking``/``random`` modes: how many languages are students (the authors' XNLI script: 8)."""

    teachers: list[str] | None = None
    """``teachers`` mode: the teacher languages, most reliable first."""

    seed: int = 100
    """``random`` mode: seed of the split."""

    max_instances: int | None = None
    """Vote on the first this many instances of the unlabelled set (None = all of them)."""

    file: str | None = None
    """The selection file ``xdist select-teachers`` writes and ``xdist prepare`` reads. None =
    ``<train.output_dir>/selection/selection.json``. Not needed by the modes that use no model: prepare
    computes those splits itself."""

    def __post_init__(self) -> None:
        if self.mode in ("ranking", "random") and self.n_students is None:
            _fail("n_students", f"mode {self.mode!r} needs the number of student languages")
        if self.mode == "ranking" and not self.ranking:
            _fail("ranking", "mode 'ranking' needs the languages, most reliable first")
        if self.mode == "teachers" and not self.teachers:
            _fail("teachers", "mode 'teachers' needs the teacher languages")
        if self.n_students is not None and self.n_students < 0:
            _fail("n_students", f"expected an integer >= 0, got {self.n_students}")
        if self.max_instances is not None and self.max_instances < 1:
            _fail("max_instances", f"expected a positive integer or null, got {self.max_instances}")
        for name in ("ranking", "teachers"):
            for lang in getattr(self, name) or []:
                if not re.fullmatch(r"[a-z]{2,3}(-[A-Za-z]+)?", lang):
                    _fail(name, f"expected language codes such as 'en', got {lang!r}")


@dataclass
class PairsConfig:
    """The distillation pairs ``xdist prepare`` builds (:mod:`xdist.data.parallel` has the exact rules)."""

    per_pair: int = 500
    """Parallel instances per language pair: the first this many of the unlabelled set (the authors' 500)."""

    seed: int = 100
    """Seed of the shuffle of all pairs (the authors' seed 100)."""

    student_pairs: bool = True
    """Include teacher–student pairs (False: teacher–teacher only, the paper's "students removed from the
    distillation groups" ablation). Student–student pairs are never built."""

    label_languages: list[str] = field(default_factory=lambda: ["en"])
    """Languages whose gold labels (when the unlabelled set has any) are kept for the optional CE term
    (``alpha_ce``); every other row is unlabelled. English only is the zero-shot setting."""

    def __post_init__(self) -> None:
        if self.per_pair < 1:
            _fail("per_pair", f"expected a positive integer, got {self.per_pair}")


@dataclass
class AlsaceConfig:
    """ALSACE (Zhao et al. 2024): selection, pairs and the consistency loss (:mod:`xdist.methods.alsace.loss`)."""

    selection: SelectionConfig = field(default_factory=SelectionConfig)
    """How teacher and student languages are chosen."""

    pairs: PairsConfig = field(default_factory=PairsConfig)
    """Which parallel instance pairs are distilled."""

    direction: Literal["code", "teacher_to_student"] = "code"
    """``code``: KL(P_second ‖ P_first) with gradients into both sides (the authors' ``get_KL_loss``);
    ``teacher_to_student``: KL(P_first ‖ P_second) with the first (higher-ranked) side detached (the
    paper's reading)."""

    divergence: Literal["kl", "jsd"] = "kl"
    """KL, or the symmetric Jensen–Shannon divergence (the authors' commented-out variant)."""

    temperature: float = 1.0
    """Temperature T of both distributions (the authors: 1)."""

    t2_scaling: bool = True
    """Multiply the divergence by T² (no effect at T = 1)."""

    alpha_kl: float = 1.0
    """Weight of the consistency term."""

    alpha_ce: float = 0.0
    """Weight of a CE term on the rows that keep a gold label (``pairs.label_languages``); 0 = the authors'."""

    level: Literal["classes", "vocab"] = "classes"
    """Distributions compared: over the classes (verbalizer logits, the authors), or the full MLM
    distribution at the mask (prompt head only; the vocabulary-scale kernel's use)."""

    def __post_init__(self) -> None:
        if self.temperature <= 0:
            _fail("temperature", f"expected a number > 0, got {self.temperature}")
        for name in ("alpha_kl", "alpha_ce"):
            if getattr(self, name) < 0:
                _fail(name, f"expected a number >= 0, got {getattr(self, name)}")
        if self.alpha_ce > 0 and self.level == "vocab":
            _fail("alpha_ce", "the CE term reads class logits; it is not available with level 'vocab'")


@dataclass
class MethodConfig:
    """How a batch becomes a loss: plain span CE, or self-knowledge distillation (Carrino et al.)."""

    name: Literal["ce", "skd", "alsace", "mblm"] = "ce"
    """``ce``: the task's hard-label cross-entropy (the spine, stage 1). ``skd``: CE + KD from a frozen
    teacher (Carrino et al.'s stage 2, QA). ``alsace``: cross-lingual self-distillation on parallel pairs
    (Zhao et al., classification; settings in ``alsace``). ``mblm``: a branched student (``model.branches``)
    distilled from one monolingual teacher per supervised language (Yang et al., classification; teachers in
    ``teachers``, settings in ``mblm``)."""

    teacher: Literal["self", "fixed"] = "self"
    """``self``: self-distillation in generations — at the start of every epoch after the first the
    teacher becomes a frozen copy of the student (the authors' ``--self_distil``). ``fixed``: the
    generation-0 teacher stays for the whole run (plain KD)."""

    teacher_checkpoint: str | None = None
    """Generation-0 teacher: a local ``save_pretrained`` directory. None = the student's initial weights
    (``model.checkpoint``, the stage-1 model), as in the authors' scripts."""

    alpha_ce: float = 1.0
    """Weight of the hard-label CE (0 = the no-CE ablation)."""

    alpha_kl: float = 1.0
    """Constant KD weight; with a ranked ``coefficient`` it multiplies the coefficient."""

    coefficient: Literal["constant", "map", "ap", "mrr"] = "constant"
    """KD weight from the teacher: ``constant`` (alpha_kl), ``map`` (the authors' mAP@k: reciprocal rank of
    the first top-k position within ±window of the gold), ``ap`` (textbook AP@k), ``mrr`` (exact-match
    reciprocal rank)."""

    coefficient_scope: Literal["batch", "example"] = "batch"
    """One coefficient per micro-batch (authors: mean over rows and start/end) or one per example."""

    temperature: float = 2.0
    """KD temperature T (the CE term uses T = 1)."""

    direction: Literal["forward", "reverse", "symmetric"] = "forward"
    """KL(teacher‖student) (authors), KL(student‖teacher), or their sum."""

    k: int = 10
    """Top-k cut-off of the coefficient."""

    window: int = 5
    """Half-width w of the relevant window [gold − w, gold + w − 1] of the ``map``/``ap`` coefficient."""

    t2_scaling: bool = True
    """Multiply the KL by T² (authors, Hinton et al.)."""

    teacher_cache: Literal["online", "full", "topk"] = "online"
    """Teacher-logit cache: ``online`` (no cache) runs the teacher on every batch; ``full`` runs it once per
    generation over the training shards and stores all logits (the same loss as online); ``topk`` stores
    the top ``cache_topk`` logits per head plus the log-sum-exp of the rest (an approximation)."""

    cache_topk: int = 20
    """Logits kept per head by ``teacher_cache: topk`` (must be >= k for an exact coefficient)."""

    teacher_partition: Literal["replicated", "zero3"] = "replicated"
    """Where the teacher's weights live. ``replicated``: a full frozen copy on every rank. ``zero3``: the
    teacher is ZeRO-3-partitioned across the ranks like the student (each rank holds 1/world of it, wrapped
    in its own DeepSpeed inference engine), refreshed partition by partition at each generation without
    ever materialising the whole model; needs ``train.deepspeed`` at ZeRO stage 3. Its forward passes are
    collective (every rank runs them in step)."""

    alsace: AlsaceConfig = field(default_factory=AlsaceConfig)
    """ALSACE (``name: alsace``, and ``xdist select-teachers``): selection, pairs and the consistency loss.
    Its own ``alpha_ce``/``alpha_kl``/``temperature`` live here, not in the fields above (which are skd's)."""

    teachers: dict[str, str] = field(default_factory=dict)
    """``mblm``: one monolingual teacher per supervised language, ``{language: checkpoint}`` — a local
    ``save_pretrained`` sequence classifier with the task's classes (e.g. the ``export/`` of an ``xdist
    train`` run on that language alone); its tokenizer is the one saved beside it, else the student's."""

    mblm: MBLMConfig = field(default_factory=MBLMConfig)
    """MBLM (``name: mblm``): the distillation loss and the teacher-logit pass."""

    def __post_init__(self) -> None:
        if self.teachers and self.name != "mblm":
            _fail("teachers", f"monolingual teachers are MBLM's (name: mblm); method.name is {self.name!r}")
        for name in ("alpha_ce", "alpha_kl"):
            if getattr(self, name) < 0:
                _fail(name, f"expected a number >= 0, got {getattr(self, name)}")
        if self.temperature <= 0:
            _fail("temperature", f"expected a number > 0, got {self.temperature}")
        for name in ("k", "window", "cache_topk"):
            if getattr(self, name) < 1:
                _fail(name, f"expected a positive integer, got {getattr(self, name)}")
        if self.teacher_cache == "topk" and self.coefficient != "constant" and self.cache_topk < self.k:
            _fail("cache_topk", f"must be >= k ({self.k}) so the coefficient's ranking is exact")
        if self.teacher_partition not in ("replicated", "zero3"):
            _fail("teacher_partition", f"expected 'replicated' or 'zero3', got {self.teacher_partition!r}")
        if self.teacher_partition == "zero3" and self.name != "skd":
            _fail("teacher_partition", f"'zero3' partitions a distillation teacher; method.name {self.name!r} has none")


@dataclass
class JobConfig:
    """A whole job: data → features → shards → model → DeepSpeed training → evaluation."""

    task: Literal["qa", "classification"] = "qa"
    """The task family (:mod:`xdist.tasks`): ``qa`` (extractive QA: SQuAD-format sources, span logits,
    EM/F1 per G-XLT cell) or ``classification`` (sentence-pair classification: XNLI, PAWS-X, XCOPA).
    It decides how sources are read and featurised, the model head, the loss and the evaluation; a
    ``method.name`` that does not support it is an error."""

    data: DataConfig = field(default_factory=DataConfig)
    """Raw sources, article split and shards."""

    features: FeatureConfig = field(default_factory=FeatureConfig)
    """Tokenisation into sliding-window features."""

    model: ModelConfig = field(default_factory=ModelConfig)
    """Model construction or checkpoint."""

    train: TrainConfig = field(default_factory=TrainConfig)
    """Optimisation and schedule."""

    eval: EvalConfig = field(default_factory=EvalConfig)
    """Evaluation sets and decoding."""

    method: MethodConfig = field(default_factory=MethodConfig)
    """Training method (loss) and, for distillation, the teacher."""

    def __post_init__(self) -> None:
        formats = CLASSIFICATION_FORMATS if self.task == "classification" else QA_FORMATS
        for kind, sources in (("data.train", self.data.train), ("eval.sets", self.eval.sets)):
            for i, source in enumerate(sources):
                if source.format not in formats:
                    _fail(f"{kind}[{i}].format",
                          f"task {self.task!r} reads formats {list(formats)}, got {source.format!r}; set 'task'")
        self._check_branches()
        if self.task == "classification":
            if self.model.labels is None and (sources := self.data.train or self.eval.sets):
                self.model.labels = list(sources[0].labels or BUILTIN_CLASS_NAMES[sources[0].format])
            return
        features = self.features
        if features.max_query_length + features.doc_stride + 3 >= features.max_length:
            _fail(
                "features.doc_stride",
                f"max_query_length ({features.max_query_length}) + doc_stride ({features.doc_stride}) + 3 special "
                f"tokens must be < max_length ({features.max_length})",
            )


    def _check_branches(self) -> None:
        """``model.branches`` and ``method.name: mblm`` belong together, with one teacher per branch."""
        branches, method = self.model.branches, self.method
        if branches is not None and (self.task != "classification" or self.model.head != "classifier"):
            _fail("model.branches", f"branches are built on a sequence classifier (task: classification, "
                                    f"head: classifier), not task {self.task!r} with head {self.model.head!r}")
        if method.name != "mblm":
            return
        if branches is None:
            _fail("model.branches", "method 'mblm' trains a branched student: set model.branches.languages "
                                    "(the supervised languages, one branch each)")
        for lang in method.teachers:
            if not _LANGUAGE.fullmatch(lang):
                _fail("method.teachers", f"expected language codes as keys, such as 'en', got {lang!r}")
        missing = [lang for lang in branches.languages if lang not in method.teachers]
        extra = [lang for lang in method.teachers if lang not in branches.languages]
        if missing:
            _fail("method.teachers", f"no teacher for the supervised language(s) {missing} "
                                     f"(model.branches.languages: {branches.languages})")
        if extra:
            _fail("method.teachers", f"teacher(s) for {extra}, which have no branch in model.branches.languages "
                                     f"{branches.languages}")


# --------------------------------------------------------------------------------------------------
# Loading
# --------------------------------------------------------------------------------------------------

_ENV_PATTERN = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")


def expand_env(value: str, path: str = "") -> str:
    """Expand ``${VAR}`` and ``${VAR:-default}``; an unset variable without a default is an error."""

    def replace(match: re.Match[str]) -> str:
        name, default = match.group(1), match.group(2)
        if name in os.environ:
            return os.environ[name]
        if default is not None:
            return default
        _fail(path, f"environment variable ${{{name}}} is not set and has no default (${{{name}:-...}})")

    return _ENV_PATTERN.sub(replace, value)


def _type_name(tp: Any) -> str:
    if typing.get_origin(tp) is Literal:
        return " or ".join(repr(v) for v in typing.get_args(tp))
    if tp is type(None):
        return "null"
    return getattr(tp, "__name__", None) or str(tp).replace("typing.", "")


def _coerce(value: Any, tp: Any, path: str) -> Any:
    """Check ``value`` against type ``tp`` (dataclass, Literal, list, dict, Optional, scalars)."""
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        options = typing.get_args(tp)
        if value is None:
            if type(None) in options:
                return None
            _fail(path, f"expected {_type_name(tp)}, got null")
        errors = []
        for option in options:
            if option is type(None):
                continue
            try:
                return _coerce(value, option, path)
            except ConfigError as err:
                errors.append(str(err))
        sections = [o for o in options if dataclasses.is_dataclass(o)]
        if len(errors) == 1 and sections:
            # An optional section (``X | None``): its own error names the inner field; keep it.
            raise ConfigError(errors[0]) from None
        _fail(path, f"expected {' or '.join(_type_name(o) for o in options)}, got {value!r}")
    if origin is Literal:
        allowed = typing.get_args(tp)
        if value not in allowed:
            _fail(path, f"expected one of {list(allowed)}, got {value!r}")
        return value
    if dataclasses.is_dataclass(tp):
        return build(tp, value, path)
    if origin is list:
        if not isinstance(value, list):
            _fail(path, f"expected a list, got {type(value).__name__} {value!r}")
        (item_type,) = typing.get_args(tp)
        return [_coerce(v, item_type, f"{path}[{i}]") for i, v in enumerate(value)]
    if origin is dict:
        if not isinstance(value, dict):
            _fail(path, f"expected a mapping, got {type(value).__name__} {value!r}")
        key_type, item_type = typing.get_args(tp)
        return {_coerce(k, key_type, path): _coerce(v, item_type, f"{path}.{k}") for k, v in value.items()}
    if tp is Any:
        return _expand_all(value, path)
    if tp is bool:
        if not isinstance(value, bool):
            _fail(path, f"expected true or false, got {value!r}")
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            _fail(path, f"expected an integer, got {value!r}")
        return value
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, int | float):
            # YAML reads 5e-5 (no dot) as a string; accept numeric strings for floats only.
            if isinstance(value, str):
                try:
                    return float(value)
                except ValueError:
                    pass
            _fail(path, f"expected a number, got {value!r}")
        return float(value)
    if tp is str:
        if not isinstance(value, str):
            _fail(path, f"expected a string, got {type(value).__name__} {value!r}")
        return expand_env(value, path)
    raise TypeError(f"unsupported config type {tp!r} at {path}")


def _expand_all(value: Any, path: str) -> Any:
    if isinstance(value, str):
        return expand_env(value, path)
    if isinstance(value, list):
        return [_expand_all(v, f"{path}[{i}]") for i, v in enumerate(value)]
    if isinstance(value, dict):
        return {k: _expand_all(v, f"{path}.{k}") for k, v in value.items()}
    return value


def build(cls: type, raw: Any, path: str = "") -> Any:
    """Build dataclass ``cls`` from a mapping, strictly (unknown keys and wrong types are errors)."""
    prefix = f"{path}." if path else ""
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        _fail(path or cls.__name__, f"expected a mapping of {cls.__name__} fields, got {raw!r}")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(raw) - set(fields))
    if unknown:
        _fail(f"{prefix}{unknown[0]}", f"unknown key; {cls.__name__} accepts {sorted(fields)}")
    kwargs = {}
    for name, value in raw.items():
        kwargs[name] = _coerce(value, hints[name], f"{prefix}{name}")
    for name in fields:
        # Absent sections are built through the same path, so their defaults get ${VAR} expansion.
        if name not in kwargs and dataclasses.is_dataclass(hints[name]):
            kwargs[name] = build(hints[name], {}, f"{prefix}{name}")
    missing = [
        n for n, f in fields.items()
        if n not in kwargs and f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
    ]
    if missing:
        _fail(f"{prefix}{missing[0]}", "required field is missing")
    try:
        obj = cls(**kwargs)
    except ConfigError as err:
        # Field validators name only their own field; prefix the section path.
        message = str(err)
        raise ConfigError(message.replace("config field '", f"config field '{prefix}", 1)) from None
    # Defaults may contain ${VAR} too (e.g. the data root); expand them like loaded values.
    for name in fields:
        if name not in kwargs and isinstance(getattr(obj, name), str):
            setattr(obj, name, expand_env(getattr(obj, name), f"{prefix}{name}"))
    return obj


def apply_override(raw: dict, assignment: str) -> None:
    """Apply one ``a.b.c=value`` override to a raw mapping; the value is parsed as YAML.

    A numeric part indexes a list of sections: ``eval.sets.0.max_examples=50``.
    """
    if "=" not in assignment:
        raise ConfigError(f"override {assignment!r}: expected KEY=VALUE, e.g. train.lr=3e-5")
    key, text = assignment.split("=", 1)
    value = yaml.safe_load(text) if text != "" else ""
    parts = key.strip().split(".")
    node: Any = raw
    for i, part in enumerate(parts):
        where = ".".join(parts[: i + 1])
        last = i == len(parts) - 1
        if isinstance(node, list):
            if not part.isdigit() or int(part) >= len(node):
                raise ConfigError(f"override {assignment!r}: '{where}' must index the list (0..{len(node) - 1})")
            if last:
                node[int(part)] = value
            else:
                node = node[int(part)]
            continue
        if not isinstance(node, dict):
            raise ConfigError(f"override {assignment!r}: '{'.'.join(parts[:i])}' is not a section")
        if last:
            node[part] = value
        else:
            if node.get(part) is None:
                node[part] = {}
            node = node[part]


def _merge(base: dict, update: dict) -> dict:
    """Deep merge of mappings; lists and scalars in ``update`` replace those in ``base``."""
    merged = dict(base)
    for key, value in update.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = _merge(merged[key], value)
        else:
            merged[key] = value
    return merged


def read_yaml(path: str | os.PathLike, _seen: tuple[Path, ...] = ()) -> dict:
    """A YAML job file as a mapping, with ``extends: <file>`` or ``extends: [<file>, ...]`` (relative to this
    file, merged in order) underneath.

    Recipes that differ in a few fields (``configs/carrino/*.yaml``) extend a common base instead of
    repeating it; the extending file's values win, section by section.
    """
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file {str(path)!r} does not exist")
    if path.resolve() in _seen:
        raise ConfigError(f"config file {str(path)!r}: 'extends' forms a cycle")
    try:
        raw = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as err:
        raise ConfigError(f"config file {str(path)!r} is not valid YAML: {err}") from None
    if not isinstance(raw, dict):
        raise ConfigError(f"config file {str(path)!r}: expected a mapping at top level")
    parents = raw.pop("extends", None)
    if parents is None:
        return raw
    if isinstance(parents, str):
        parents = [parents]
    if not isinstance(parents, list) or not all(isinstance(p, str) for p in parents):
        raise ConfigError(
            f"config file {str(path)!r}: 'extends' must be a file name or a list of them, got {parents!r}"
        )
    merged: dict = {}
    for parent in parents:  # later parents override earlier ones; this file overrides them all
        merged = _merge(merged, read_yaml(path.parent / parent, (*_seen, path.resolve())))
    return _merge(merged, raw)


def load_config(path: str | os.PathLike | None, overrides: list[str] | None = None) -> JobConfig:
    """Load a job config from YAML (or defaults when ``path`` is None) and apply ``--set`` overrides."""
    raw: dict = read_yaml(path) if path is not None else {}
    for assignment in overrides or []:
        apply_override(raw, assignment)
    return build(JobConfig, raw)


def to_dict(config: Any) -> dict:
    """The config as plain data (for manifests, fingerprints, TensorBoard hparams)."""
    return dataclasses.asdict(config)
