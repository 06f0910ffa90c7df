"""The prompt head's verbalizer: classes -> label words -> token ids, and how MLM logits become class logits.

Kept free of torch: the featuriser writes :meth:`Verbalizer.arrays` into every prompt row, and
:func:`xdist.tasks.classification.heads.verbalize` applies them to the logits.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from xdist.config import ConfigError, PromptConfig

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase




@dataclass(frozen=True)
class Verbalizer:
    """Classes -> label-word token ids, and the rule that turns MLM logits at the mask into class logits.

    ``class_logit[c] = mean over c's words w of word_logit(w)``, ``word_logit(w)`` = the logit of w's single
    token, or with ``multi_token: first`` its first sub-token's, with ``mean`` the mean of its sub-tokens'.
    Stored as ``token_ids [K]`` (the distinct ids used) and ``weights [C, K]`` (rows sum to 1): class logits
    are ``gathered @ weights.T`` (:func:`xdist.tasks.classification.heads.verbalize`).
    """

    class_names: tuple[str, ...]
    words: tuple[tuple[str, ...], ...]
    """Label words per class."""
    word_token_ids: tuple[tuple[tuple[int, ...], ...], ...]
    """Token ids of each word of each class (more than one only under a multi-token rule)."""
    multi_token: str
    token_ids: tuple[int, ...]
    weights: tuple[tuple[float, ...], ...]

    @property
    def targets(self) -> tuple[int, ...]:
        """Per class, the vocabulary target of the ``vocab`` loss: its first word's first token."""
        return tuple(words[0][0] for words in self.word_token_ids)

    def arrays(self) -> dict[str, np.ndarray]:
        """The per-row batch fields that carry this verbalizer: ``verbalizer_ids [K]`` int64,
        ``verbalizer_weights [C, K]`` float32, ``verbalizer_targets [C]`` int64."""
        return {
            "verbalizer_ids": np.asarray(self.token_ids, dtype=np.int64),
            "verbalizer_weights": np.asarray(self.weights, dtype=np.float32),
            "verbalizer_targets": np.asarray(self.targets, dtype=np.int64),
        }


def build_verbalizer(
    prompt: PromptConfig, default: dict[str, list[str]] | None, class_names: list[str],
    tokenizer: PreTrainedTokenizerBase,
) -> Verbalizer:
    """Resolve ``prompt.verbalizer`` (or ``default``) against ``class_names`` and the tokenizer.

    Raises :class:`ConfigError` for classes missing from or unknown to the verbalizer, and for a label word
    that is not a single token when ``prompt.multi_token`` is ``error`` (naming the word and its pieces).
    """
    field = "model.prompt.verbalizer"
    mapping = prompt.verbalizer if prompt.verbalizer is not None else default
    if mapping is None:
        raise ConfigError(f"config field '{field}': no default verbalizer for this source; map every class to words")
    mapping = {str(k): list(v) for k, v in mapping.items()}
    missing = [c for c in class_names if c not in mapping]
    unknown = [c for c in mapping if c not in class_names]
    if missing or unknown:
        raise ConfigError(
            f"config field '{field}': classes {class_names} need label words; missing {missing}, unknown {unknown}"
        )
    word_ids: list[tuple[tuple[int, ...], ...]] = []
    for name in class_names:
        per_word = []
        for word in mapping[name]:
            ids = tuple(tokenizer(word, add_special_tokens=False)["input_ids"])
            if not ids:
                raise ConfigError(f"config field '{field}.{name}': label word {word!r} has no tokens")
            if len(ids) > 1:
                if prompt.multi_token == "error":
                    pieces = tokenizer.convert_ids_to_tokens(list(ids))
                    raise ConfigError(
                        f"config field '{field}.{name}': label word {word!r} is {len(ids)} tokens {pieces} of the "
                        f"tokenizer; use a single-token word, or set model.prompt.multi_token: first | mean"
                    )
                if prompt.multi_token == "first":
                    ids = ids[:1]
            per_word.append(ids)
        word_ids.append(tuple(per_word))
    token_ids = tuple(dict.fromkeys(t for words in word_ids for ids in words for t in ids))
    index = {t: k for k, t in enumerate(token_ids)}
    weights = []
    for words in word_ids:
        row = [0.0] * len(token_ids)
        for ids in words:
            for t in ids:
                row[index[t]] += 1.0 / (len(words) * len(ids))
        weights.append(tuple(row))
    return Verbalizer(
        class_names=tuple(class_names), words=tuple(tuple(mapping[c]) for c in class_names),
        word_token_ids=tuple(word_ids), multi_token=prompt.multi_token, token_ids=token_ids, weights=tuple(weights),
    )
