"""Classification examples -> fixed-length model inputs (numpy arrays), for both heads.

* **classifier, pair tasks** (:func:`encode_pairs`): ``[CLS] text_a [SEP] text_b [SEP]``, the fast
  tokenizer's own ``truncation="longest_first"`` to ``max_length``, padded to ``max_length``.
* **prompt, pair tasks** (:func:`encode_prompts`): the cloze template rendered with the texts and the mask
  token, one sequence. Only the *slots* are truncated, never the template: each slot text is tokenised
  alone (with offsets), the slots are cut longest-first to the token budget the template leaves, each cut
  at the end character of its last kept token, and the rendered string is tokenised as a whole (so words
  at the slot boundaries tokenise exactly as in running text). If boundary effects still overflow, the
  budget shrinks by the excess and the example is redone. The mask therefore always survives;
  ``mask_positions`` records where it is.
* **choice tasks** (XCOPA): one row per choice, stacked: ``[C, L]`` arrays (classifier: the pair
  ``premise + " What was the <question>?"`` / choice, for a multiple-choice head; prompt: the template with
  ``{premise}``, ``{question}``, ``{choice}``).
"""

from __future__ import annotations

import string
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from xdist.config import ConfigError
from xdist.data.sources import DataError
from xdist.tasks.classification.examples import IGNORE_LABEL, ClassificationExample, ClassificationFeature
from xdist.tasks.classification.verbalizer import Verbalizer

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerFast

PAIR_SLOTS = {"text_a": "text_a", "text_b": "text_b", "premise": "text_a", "hypothesis": "text_b",
              "sentence1": "text_a", "sentence2": "text_b"}
"""Template slot names of pair tasks -> the example field they read."""

CHOICE_SLOTS = {"premise": "premise", "question": "question", "choice": "choice"}
"""Template slot names of choice tasks."""


def _model_input_names(tokenizer: PreTrainedTokenizerFast) -> list[str]:
    names = ["input_ids", "attention_mask"]
    if "token_type_ids" in tokenizer.model_input_names:
        names.append("token_type_ids")
    return names


def _label(example: ClassificationExample) -> np.ndarray:
    return np.asarray(IGNORE_LABEL if example.label is None else example.label, dtype=np.int64)


def _feature(example: ClassificationExample, arrays: dict[str, np.ndarray]) -> ClassificationFeature:
    arrays["labels"] = _label(example)
    return ClassificationFeature(
        uid=example.uid, instance=example.instance, language=example.language, arrays=arrays, source=example.source
    )


def _choice_first(example: ClassificationExample) -> str:
    return f"{example.text_a} What was the {example.question}?"


def _check_kind(examples: Sequence[ClassificationExample], choice: bool) -> None:
    for example in examples:
        if bool(example.choices) != choice:
            kind = "a choice task" if choice else "a pair task"
            raise DataError(f"{example.source}: example {example.uid} is not {kind} (mixed sources?)")


# --------------------------------------------------------------------------------------------------
# Classifier head
# --------------------------------------------------------------------------------------------------


def encode_pairs(
    examples: Sequence[ClassificationExample], tokenizer: PreTrainedTokenizerFast, max_length: int
) -> list[ClassificationFeature]:
    """Sentence-pair features for a sequence-classification head (``longest_first`` truncation)."""
    _check_kind(examples, choice=False)
    if not examples:
        return []
    encoded = tokenizer(
        [e.text_a for e in examples], [e.text_b for e in examples], truncation="longest_first",
        max_length=max_length, padding="max_length", return_tensors="np",
    )
    names = _model_input_names(tokenizer)
    arrays = {n: encoded[n].astype(np.int64) for n in names}
    return [_feature(e, {n: arrays[n][i] for n in names}) for i, e in enumerate(examples)]


def encode_choice_pairs(
    examples: Sequence[ClassificationExample], tokenizer: PreTrainedTokenizerFast, max_length: int
) -> list[ClassificationFeature]:
    """Choice-task features for a multiple-choice head: per example ``[C, L]`` pairs (premise+question, choice)."""
    _check_kind(examples, choice=True)
    firsts, seconds, counts = [], [], []
    for e in examples:
        firsts += [_choice_first(e)] * len(e.choices)
        seconds += list(e.choices)
        counts.append(len(e.choices))
    if not examples:
        return []
    encoded = tokenizer(
        firsts, seconds, truncation="longest_first", max_length=max_length, padding="max_length", return_tensors="np"
    )
    names = _model_input_names(tokenizer)
    features, row = [], 0
    for e, count in zip(examples, counts, strict=True):
        arrays = {n: encoded[n][row : row + count].astype(np.int64) for n in names}
        features.append(_feature(e, arrays))
        row += count
    return features


# --------------------------------------------------------------------------------------------------
# Prompt head
# --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class PromptTemplate:
    """A parsed cloze template: literal text, named slots and exactly one mask."""

    text: str
    parts: tuple[tuple[str, str], ...]
    """``("text", literal)``, ``("slot", field)`` or ``("mask", "")``, in order."""

    @classmethod
    def parse(cls, template: str, choice: bool, field: str = "model.prompt.template") -> PromptTemplate:
        """Parse ``template``; unknown slots, format specs or a mask count other than one are config errors."""
        allowed = CHOICE_SLOTS if choice else PAIR_SLOTS
        parts: list[tuple[str, str]] = []
        try:
            parsed = list(string.Formatter().parse(template))
        except ValueError as err:
            raise ConfigError(f"config field '{field}': {err} in {template!r}") from None
        for literal, name, spec, conversion in parsed:
            if literal:
                parts.append(("text", literal))
            if name is None:
                continue
            if spec or conversion:
                raise ConfigError(f"config field '{field}': slot {{{name}}} takes no format spec or conversion")
            if name == "mask":
                parts.append(("mask", ""))
            elif name in allowed:
                parts.append(("slot", allowed[name]))
            else:
                raise ConfigError(
                    f"config field '{field}': unknown slot {{{name}}}; use {{mask}} and {sorted(allowed)}"
                )
        if sum(kind == "mask" for kind, _ in parts) != 1:
            raise ConfigError(f"config field '{field}': expected exactly one {{mask}}, got {template!r}")
        return cls(template, tuple(parts))

    @property
    def slots(self) -> list[str]:
        """The slot fields, in template order (a field may appear more than once)."""
        return [name for kind, name in self.parts if kind == "slot"]

    def render(self, values: dict[str, str], mask_token: str) -> str:
        """The template with the slot texts and the mask token filled in."""
        pieces = []
        for kind, name in self.parts:
            pieces.append(name if kind == "text" else mask_token if kind == "mask" else values[name])
        return "".join(pieces)


def longest_first(lengths: Sequence[int], budget: int) -> list[int]:
    """Kept lengths after removing tokens one at a time from the longest (ties: the last), like the
    tokenizers' ``longest_first`` for pairs, until the sum fits ``budget``."""
    kept = list(lengths)
    while sum(kept) > max(budget, 0):
        longest = max(kept)
        kept[len(kept) - 1 - kept[::-1].index(longest)] -= 1
    return kept


def _slot_values(example: ClassificationExample, choice: str | None) -> dict[str, str]:
    if choice is None:
        return {"text_a": example.text_a, "text_b": example.text_b or ""}
    return {"premise": example.text_a, "question": example.question or "", "choice": choice}


def _template_overhead(template: PromptTemplate, tokenizer: PreTrainedTokenizerFast) -> int:
    empty = template.render(dict.fromkeys(template.slots, ""), tokenizer.mask_token)
    return len(tokenizer(empty)["input_ids"])


def _encode_prompt_rows(
    rows: list[dict[str, str]], where: list[str], template: PromptTemplate, tokenizer: PreTrainedTokenizerFast,
    max_length: int,
) -> list[dict[str, np.ndarray]]:
    """Tokenise rendered prompts of ``rows`` (slot values) to ``max_length``, truncating slots only."""
    if tokenizer.mask_token is None:
        raise ConfigError("config field 'model.head': the prompt head needs a tokenizer with a mask token")
    overhead = _template_overhead(template, tokenizer)
    if overhead >= max_length:
        raise ConfigError(
            f"config field 'model.prompt.template': the template alone is {overhead} tokens, which leaves no room "
            f"for the texts in max_length {max_length}; raise features.max_length or shorten the template"
        )
    slots = list(dict.fromkeys(template.slots))
    uses = [template.slots.count(name) for name in slots]  # a slot used twice costs its length twice
    offsets = {
        name: tokenizer([r[name] for r in rows], add_special_tokens=False, return_offsets_mapping=True, verbose=False)[
            "offset_mapping"
        ]
        for name in slots
    }
    budgets = [max_length - overhead] * len(rows)
    encoded: list[list[int] | None] = [None] * len(rows)
    pending = list(range(len(rows)))
    for _ in range(8):
        texts = []
        for i in pending:
            lengths = [len(offsets[name][i]) * use for name, use in zip(slots, uses, strict=True)]
            kept = longest_first(lengths, budgets[i])
            values = {}
            for name, keep, use in zip(slots, kept, uses, strict=True):
                count = keep // use
                values[name] = rows[i][name][: offsets[name][i][count - 1][1]] if count > 0 else ""
            texts.append(template.render(values, tokenizer.mask_token))
        ids = tokenizer(texts)["input_ids"] if texts else []
        still = []
        for i, row_ids in zip(pending, ids, strict=True):
            excess = len(row_ids) - max_length
            if excess > 0:  # words at slot boundaries tokenised differently in context: shrink and redo
                budgets[i] -= excess
                still.append(i)
            else:
                encoded[i] = row_ids
        pending = still
        if not pending:
            break
    if pending:
        raise DataError(f"{where[pending[0]]}: cannot fit the prompt into max_length {max_length}")
    names = _model_input_names(tokenizer)
    out = []
    for i, ids_i in enumerate(encoded):
        assert ids_i is not None
        positions = [p for p, token in enumerate(ids_i) if token == tokenizer.mask_token_id]
        if len(positions) != 1:
            raise DataError(
                f"{where[i]}: the rendered prompt has {len(positions)} mask tokens (the text contains "
                f"{tokenizer.mask_token!r}?); expected exactly one"
            )
        n = len(ids_i)
        input_ids = np.full(max_length, tokenizer.pad_token_id, dtype=np.int64)
        input_ids[:n] = ids_i
        arrays = {"input_ids": input_ids}
        if "attention_mask" in names:
            arrays["attention_mask"] = (np.arange(max_length) < n).astype(np.int64)
        if "token_type_ids" in names:  # one sequence: segment 0 throughout
            arrays["token_type_ids"] = np.zeros(max_length, dtype=np.int64)
        arrays["mask_positions"] = np.asarray(positions[0], dtype=np.int64)
        out.append(arrays)
    return out


def encode_prompts(
    examples: Sequence[ClassificationExample], tokenizer: PreTrainedTokenizerFast, max_length: int,
    template: PromptTemplate, verbalizer: Verbalizer | None = None,
) -> list[ClassificationFeature]:
    """Prompt-head features of pair examples: the rendered template, ``mask_positions`` and, given a
    ``verbalizer``, its arrays (:meth:`~xdist.tasks.classification.verbalizer.Verbalizer.arrays`), which
    :func:`~xdist.tasks.classification.heads.class_logits` needs (:func:`~.heads.mask_logits` does not)."""
    _check_kind(examples, choice=False)
    rows = [_slot_values(e, None) for e in examples]
    encoded = _encode_prompt_rows(rows, [e.source for e in examples], template, tokenizer, max_length)
    verbal = verbalizer.arrays() if verbalizer is not None else {}
    return [_feature(e, {**arrays, **verbal}) for e, arrays in zip(examples, encoded, strict=True)]


def encode_choice_prompts(
    examples: Sequence[ClassificationExample], tokenizer: PreTrainedTokenizerFast, max_length: int,
    template: PromptTemplate, verbalizer: Verbalizer | None = None,
) -> list[ClassificationFeature]:
    """Prompt-head features of choice examples: one rendered template per choice, stacked to ``[C, L]``, with
    the (wrong, right) verbalizer's arrays when given."""
    _check_kind(examples, choice=True)
    rows, where, counts = [], [], []
    for e in examples:
        rows += [_slot_values(e, choice) for choice in e.choices]
        where += [e.source] * len(e.choices)
        counts.append(len(e.choices))
    encoded = _encode_prompt_rows(rows, where, template, tokenizer, max_length)
    verbal = verbalizer.arrays() if verbalizer is not None else {}
    features, row = [], 0
    for e, count in zip(examples, counts, strict=True):
        chunk = encoded[row : row + count]
        arrays = {name: np.stack([c[name] for c in chunk]) for name in chunk[0]}
        features.append(_feature(e, {**arrays, **verbal}))
        row += count
    return features


def collate(features: Sequence[ClassificationFeature]) -> dict[str, np.ndarray]:
    """Stack every array of ``features`` along a new leading batch axis (all features share the fields)."""
    names = list(features[0].arrays)
    for feature in features[1:]:
        if list(feature.arrays) != names:
            raise ValueError(f"feature {feature.uid} has fields {list(feature.arrays)}, expected {names}")
    return {name: np.stack([f.arrays[name] for f in features]) for name in names}
