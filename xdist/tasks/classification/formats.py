"""What each classification source format implies: class names, split groups, parallelism, the prompt
template and verbalizer. The fields themselves are :class:`xdist.config.SourceConfig` and
:class:`xdist.config.PromptConfig`; these are the defaults they fall back on.
"""

from __future__ import annotations

from xdist.config import BUILTIN_CLASS_NAMES, SourceConfig

FORMAT_DEFAULTS: dict[str, dict] = {
    "xnli": {"labels": BUILTIN_CLASS_NAMES["xnli"], "group_by": "text_a", "parallel": True},
    "pawsx": {"labels": BUILTIN_CLASS_NAMES["pawsx"], "group_by": "text_a", "parallel": True},
    "xcopa": {"labels": BUILTIN_CLASS_NAMES["xcopa"], "group_by": "instance", "parallel": True},
}
"""Per built-in format: class names in id order (:data:`xdist.config.BUILTIN_CLASS_NAMES`), the group key
and whether the languages are parallel. PAWS-X groups by sentence1: PAWS builds several pairs from one
source sentence."""

DEFAULT_TEMPLATES: dict[str, str] = {
    # ALSACE's XNLI template (template_id 2) without its six added prompt-filler tokens, which need
    # tokenizer surgery; the English template is used for every language, as in the authors' code.
    "xnli": "Suppose {text_a} Can we infer that {text_b}? Yes, no or maybe? Answer: {mask}.",
    # ALSACE's PAWS-X template, verbatim (its grammar included).
    "pawsx": (
        "Are the following sentences {text_a} and {text_b} are paraphrases of each other? yes or no? Answer: {mask}."
    ),
    # Ours (ALSACE has no XCOPA code): each choice is scored by logit(yes) - logit(no) at the mask.
    "xcopa": "{premise} What was the {question}? {choice} Right? Answer: {mask}.",
}
"""Cloze templates per format; ``{mask}`` is the tokenizer's mask token."""

DEFAULT_VERBALIZERS: dict[str, dict[str, list[str]]] = {
    "xnli": {"entailment": ["yes"], "neutral": ["maybe"], "contradiction": ["no"]},
    "pawsx": {"0": ["no"], "1": ["yes"]},
    # XCOPA's prompt head scores each choice with a binary wrong/right verbalizer.
    "xcopa": {"wrong": ["no"], "right": ["yes"]},
}
"""ALSACE's verbalizers. XLM-R's SentencePiece has ``▁yes``/``▁maybe``/``▁no`` as single tokens; mBERT's
cased WordPiece splits ``yes`` and ``maybe``, so recipes with it use ``Yes``/``Maybe``/``No``."""

CHOICE_CLASSES = ["wrong", "right"]
"""The prompt head's verbalizer classes for choice tasks (each choice is scored right minus wrong)."""


def class_names(source: SourceConfig) -> list[str]:
    """Class names of ``source`` in id order."""
    return list(source.labels or FORMAT_DEFAULTS[source.format]["labels"])


def is_choice(source: SourceConfig) -> bool:
    """A choice task (XCOPA-like: score each choice, argmax) rather than pair classification."""
    return source.format == "xcopa" or "choice1" in source.columns


def is_parallel(source: SourceConfig) -> bool:
    """Whether the languages are checked and aligned as parallel."""
    if source.parallel is not None:
        return source.parallel
    return bool(FORMAT_DEFAULTS.get(source.format, {}).get("parallel", False))


def group_key(source: SourceConfig) -> str:
    """The resolved ``group_by``."""
    return source.group_by or FORMAT_DEFAULTS.get(source.format, {}).get("group_by", "instance")
