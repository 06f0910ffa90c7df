"""The record types that flow through the data layer: raw QA examples and tokenised features.

Readers produce :class:`QAExample`; :mod:`xdist.tasks.qa.features` turns them into :class:`QAFeature`;
:mod:`xdist.data.shards` writes features' training fields to webdataset shards, and evaluation keeps
whole features (with offsets) in memory to decode answers back to text.
"""

from __future__ import annotations

from dataclasses import dataclass

Cell = tuple[str, str]
"""A cell of the G-XLT matrix: (question language, context language)."""


def cell_name(question_lang: str, context_lang: str) -> str:
    """The ``"q-c"`` name of a cell: the tail of :attr:`QAExample.uid`, the key of manifests and batches, the
    name of a report's prediction file (:mod:`xdist.compare` reads uids and files back by it)."""
    return f"{question_lang}-{context_lang}"


@dataclass(frozen=True)
class Answer:
    """A gold answer: its text and character offset in the context."""

    text: str
    start: int


@dataclass(frozen=True)
class QAExample:
    """One extractive-QA example. Question and context may be in different languages (G-XLT)."""

    id: str
    """The dataset's question id. Parallel datasets (XQuAD, MLQA) share it across languages, so the
    pair (id, question_lang, context_lang) is what identifies an example; see :attr:`uid`."""

    question: str
    question_lang: str
    context: str
    context_lang: str
    answers: tuple[Answer, ...]
    title: str | None = None
    """Article title (XQuAD/SQuAD/MLQA); None where the format has none (TyDi QA GoldP)."""

    source: str = ""
    """Where the example came from (``name:file``), for error messages and manifests."""

    @property
    def cell(self) -> Cell:
        """The (question language, context language) cell of the G-XLT matrix."""
        return (self.question_lang, self.context_lang)

    @property
    def uid(self) -> str:
        """Unique key across cells: ``<id>/<question_lang>-<context_lang>``."""
        return f"{self.id}/{cell_name(self.question_lang, self.context_lang)}"


@dataclass
class QAFeature:
    """One fixed-length window of an example: ``[CLS] question [SEP] context-window [SEP] [PAD]...``."""

    example_uid: str
    """:attr:`QAExample.uid` of the example this window belongs to."""

    window: int
    """Index of this window among the example's windows (0-based)."""

    input_ids: list[int]
    attention_mask: list[int]
    token_type_ids: list[int]
    offsets: list[tuple[int, int] | None]
    """Character span in the context of each token; None for question, special and padding tokens."""

    start_position: int
    """Token index of the answer start, or the CLS index (0) when the answer is outside this window."""

    end_position: int
    """Token index of the answer end (inclusive), or the CLS index (0)."""

    question_lang: str = ""
    context_lang: str = ""
    source: str = ""
