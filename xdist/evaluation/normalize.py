"""Answer normalisation of the official SQuAD v1.1 and MLQA v1 evaluation scripts, re-implemented.

EM and F1 are only comparable with published numbers if answers are normalised exactly as the official
scripts do, quirks included, so this module reproduces their logic step by step (it is written here
rather than imported because neither script is a package on any registry):

* SQuAD v1.1 (``evaluate-v1.1.py``): lower-case; drop every character of ``string.punctuation`` (ASCII
  only); replace the English articles ``a|an|the`` (regex word boundaries) by a space; collapse
  whitespace (``str.split``).
* MLQA v1 (``mlqa_evaluation_v1.py``, facebookresearch/MLQA): the same order (lower → punctuation →
  articles → whitespace) with three differences: punctuation is every character whose Unicode category
  starts with ``P`` plus ``string.punctuation``; articles are removed per *answer language*; and
  Chinese is tokenised by "mixed segmentation" (each CJK ideograph U+4E00..U+9FA5 its own token).

Quirks kept on purpose (changing them changes the scores):

* Punctuation goes *before* articles, so ``"the-end"`` becomes ``"theend"`` and keeps its article.
* Vietnamese "articles" are ``của|là|cái|chiếc|những`` (``của`` = "of", ``là`` = "is"); matching is on
  the code points as given (NFC), so decomposed (NFD) text keeps them.
* The Arabic rule ``'\\sال^|ال'``: its first branch can never match (``^`` after consumed characters),
  so every occurrence of the two letters ``ال`` anywhere in a word becomes a space, not only the
  prefixed article: ``"مالك"`` → ``"م ك"``.
* Mixed segmentation only splits the CJK Unified Ideographs block up to U+9FA5; later ideographs and
  the extension blocks stay glued to their neighbours, like Latin text.
* Hindi and Chinese have no article rule; the English ``the`` in a Hindi answer is kept.
* The punctuation set comes from the running Python's Unicode database, as in the official script.

Which normaliser applies is :func:`normalizer_for`'s job (see there).
"""

from __future__ import annotations

import re
import string
import unicodedata
from dataclasses import dataclass
from typing import Literal

Scheme = Literal["auto", "squad", "mlqa"]

MLQA_LANGUAGES: tuple[str, ...] = ("en", "es", "de", "ar", "hi", "vi", "zh")
"""The languages MLQA's script has rules for (its answer-language argument)."""

_ASCII_PUNCTUATION = frozenset(string.punctuation)
_DELETE_ASCII_PUNCTUATION = str.maketrans("", "", string.punctuation)

_SQUAD_ARTICLES = re.compile(r"\b(a|an|the)\b")


def _word_alternation(words: tuple[str, ...]) -> re.Pattern[str]:
    return re.compile(r"\b(" + "|".join(words) + r")\b")


# Article word lists per MLQA answer language; None = the language has no article rule.
_MLQA_ARTICLES: dict[str, re.Pattern[str] | None] = {
    "en": _word_alternation(("a", "an", "the")),
    "es": _word_alternation(("un", "una", "unos", "unas", "el", "la", "los", "las")),
    "de": _word_alternation(("ein", "eine", "einen", "einem", "eines", "einer", "der", "die", "das", "den",
                             "dem", "des")),
    "vi": _word_alternation(("của", "là", "cái", "chiếc", "những")),
    "hi": None,
    "zh": None,
}
_ARABIC_AL = "\u0627\u0644"  # ALEF + LAM: the only branch of MLQA's Arabic regex that can ever match.

# Characters that mixed segmentation makes tokens of their own: MLQA's range, upper end U+9FA5 included.
_CJK_FIRST, _CJK_LAST = 0x4E00, 0x9FA5


class _PunctuationDeleter(dict):
    """``str.translate`` table deleting MLQA's punctuation (Unicode category ``P*`` plus
    ``string.punctuation``), filled lazily: each code point is classified the first time it is seen.

    One C-level ``translate`` is several times faster than a per-character Python test, and the
    lazy fill avoids classifying all 1.1 million code points up front as the official script does.
    """

    def __missing__(self, code: int) -> int | None:
        char = chr(code)
        value = None if char in _ASCII_PUNCTUATION or unicodedata.category(char).startswith("P") else code
        self[code] = value
        return value


_MLQA_PUNCTUATION = _PunctuationDeleter()


def is_mlqa_punctuation(char: str) -> bool:
    """True for characters MLQA strips: Unicode category ``P*`` or ASCII ``string.punctuation``."""
    return _MLQA_PUNCTUATION[ord(char)] is None


def _is_segmented_cjk(char: str) -> bool:
    return _CJK_FIRST <= ord(char) <= _CJK_LAST


def mixed_segmentation(text: str) -> list[str]:
    """MLQA's Chinese tokenisation: each CJK ideograph and each punctuation character is a token; runs
    of anything else are split on whitespace."""
    tokens: list[str] = []
    run_start = 0
    for position, char in enumerate(text):
        if _is_segmented_cjk(char) or is_mlqa_punctuation(char):
            tokens.extend(text[run_start:position].split())
            tokens.append(char)
            run_start = position + 1
    tokens.extend(text[run_start:].split())
    return tokens


def normalize_squad(text: str) -> str:
    """Normalise an answer as SQuAD v1.1's ``evaluate-v1.1.py`` does."""
    text = text.lower()
    text = text.translate(_DELETE_ASCII_PUNCTUATION)
    text = _SQUAD_ARTICLES.sub(" ", text)
    return " ".join(text.split())


def normalize_mlqa(text: str, lang: str) -> str:
    """Normalise an answer as MLQA v1's ``mlqa_evaluation_v1.py`` does for answer language ``lang``."""
    if lang not in MLQA_LANGUAGES:
        raise ValueError(
            f"MLQA normalisation has no rule for language {lang!r}; it knows {list(MLQA_LANGUAGES)}. "
            "Use scheme='squad' (or 'auto', which picks SQuAD's normaliser for other languages)."
        )
    text = text.lower()
    text = text.translate(_MLQA_PUNCTUATION)
    if lang == "ar":
        text = text.replace(_ARABIC_AL, " ")
    elif _MLQA_ARTICLES[lang] is not None:
        text = _MLQA_ARTICLES[lang].sub(" ", text)
    tokens = mixed_segmentation(text) if lang == "zh" else text.split()
    # The official script also drops tokens that are blank after strip(); none can be, but keep the rule.
    return " ".join(token for token in tokens if token.strip())


@dataclass(frozen=True)
class Normalizer:
    """One answer normaliser: the official script it follows and, for MLQA, the answer language."""

    scheme: Literal["squad", "mlqa"]
    lang: str | None = None
    """Answer language (MLQA only; SQuAD's normaliser is language-independent)."""

    @property
    def name(self) -> str:
        """Label written to metrics files: ``squad-v1.1`` or ``mlqa-v1:<lang>``."""
        return "squad-v1.1" if self.scheme == "squad" else f"mlqa-v1:{self.lang}"

    def normalize(self, text: str) -> str:
        """The normalised answer string that exact match compares."""
        if self.scheme == "squad":
            return normalize_squad(text)
        assert self.lang is not None
        return normalize_mlqa(text, self.lang)

    def tokens(self, text: str) -> list[str]:
        """The tokens F1 counts: the normalised string split on whitespace (as both scripts do)."""
        return self.normalize(text).split()


def normalizer_for(lang: str, scheme: Scheme = "auto") -> Normalizer:
    """The normaliser for answers in language ``lang`` (the *context* language of a G-XLT cell).

    ``scheme``:

    * ``"auto"`` (default): MLQA's normaliser for the seven MLQA languages (en, es, de, ar, hi, vi, zh),
      SQuAD v1.1's for every other language (XQuAD-only el, ru, tr, th, ro; TyDi QA languages...).
      MLQA's script is called with the answer language, and answers are spans of the context, so the
      context language decides.
    * ``"squad"``: SQuAD v1.1's normaliser whatever the language: the protocol of papers that score
      XQuAD and TyDi QA with the SQuAD script (Carrino et al.).
    * ``"mlqa"``: MLQA's normaliser; a language outside the seven is an error, as in the official script.
    """
    if scheme == "squad":
        return Normalizer("squad")
    if scheme == "mlqa":
        if lang not in MLQA_LANGUAGES:
            raise ValueError(
                f"scheme='mlqa' has no rule for language {lang!r} (MLQA languages: {list(MLQA_LANGUAGES)})"
            )
        return Normalizer("mlqa", lang)
    if scheme == "auto":
        return Normalizer("mlqa", lang) if lang in MLQA_LANGUAGES else Normalizer("squad")
    raise ValueError(f"unknown normalisation scheme {scheme!r}; expected 'auto', 'squad' or 'mlqa'")
