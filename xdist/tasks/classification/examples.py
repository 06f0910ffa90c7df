"""Records of the classification family: raw examples (one row of one language) and tokenised features.

A parallel source gives every language's copy of one instance the same :attr:`ClassificationExample.instance`
(``<source>:<key>``, the key being the row's id or its 0-based row number), so methods that compare
languages (ALSACE's majority vote, MBLM's branches) pair rows by it; :attr:`ClassificationExample.uid`
adds the language and is unique.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

IGNORE_LABEL = -100
"""Label id of unlabelled examples (the value ``torch.nn.functional.cross_entropy`` ignores)."""


def example_uid(instance: str, language: str) -> str:
    """The unique key of one language's copy of an instance: ``<instance>/<language>``."""
    return f"{instance}/{language}"


@dataclass(frozen=True)
class ClassificationExample:
    """One row of one language: a text pair with a class, or (choice tasks) a premise with choices."""

    instance: str
    """``<source>:<key>``, shared by the parallel rows of one instance across languages."""

    language: str
    text_a: str
    """Premise / sentence1 (choice tasks: the premise)."""

    text_b: str | None
    """Hypothesis / sentence2 (None for choice tasks)."""

    label: int | None
    """Class id (choice tasks: the index of the correct choice); None when unlabelled."""

    group: str = ""
    """Key of the split group (identical across the languages of a parallel instance)."""

    choices: tuple[str, ...] = ()
    """Choice tasks: the candidate texts (XCOPA: choice1, choice2)."""

    question: str | None = None
    """Choice tasks: the relation asked for (XCOPA: ``cause`` or ``effect``)."""

    source: str = ""
    """``file:line`` the row came from, for messages."""

    @property
    def uid(self) -> str:
        """Unique key across languages: ``<instance>/<language>``."""
        return example_uid(self.instance, self.language)


@dataclass
class ClassificationFeature:
    """The model inputs of one example: named numpy arrays (all of one example's rows stacked).

    Pair tasks: ``input_ids``/``attention_mask``/``token_type_ids`` ``[L]`` int64, ``labels`` ``[]`` int64
    (:data:`IGNORE_LABEL` when unlabelled), and for the prompt head ``mask_positions`` ``[]`` int64.
    Choice tasks: the same with a leading choice axis (``input_ids`` ``[C, L]``, ``mask_positions`` ``[C]``).
    Any collate that stacks every array along a new batch axis gives a model batch.
    """

    uid: str
    instance: str
    language: str
    arrays: dict[str, np.ndarray] = field(default_factory=dict)
    source: str = ""
