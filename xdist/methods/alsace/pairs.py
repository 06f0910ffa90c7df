"""ALSACE's training samples: the selection's language pairs over a parallel classification source.

From the examples of the unlabelled parallel source (every language's copy of every instance, with the
shared ``instance`` uid of the classification readers), :func:`build_pair_samples`

1. lists each language's instances in row order (the readers already checked the parallelism; it is
   checked again here, per language of the pairs);
2. excludes every instance one of whose rows is also an evaluation example — the same instance uid, or
   the same text pair in the same language (XNLI's test text is disjoint from its dev split, but a user
   may point both at one file family; a row that is evaluated is never distilled on);
3. builds the TT + TS language pairs and the first ``per_pair`` instances of each, shuffled by seed
   (:mod:`xdist.data.parallel`);
4. featurises each needed (instance, language) row once and makes one sample per instance pair
   (:func:`xdist.data.parallel.pair_sample`: every array with a leading pair axis; gold labels kept only
   for ``label_languages``).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from xdist.data.parallel import InstancePair, build_pairs, language_pairs, pair_counts, pair_sample
from xdist.methods.alsace.config import PairsConfig
from xdist.methods.alsace.selection import Selection
from xdist.tasks.classification.examples import ClassificationExample, ClassificationFeature

Encode = Callable[[Sequence[ClassificationExample]], list[ClassificationFeature]]
"""Examples -> features of the job's head (prompt or classifier), one per example, in order."""


@dataclass
class PairSample:
    """One training sample: the arrays of both sides and where they come from."""

    key: str
    """``<instance>|<first>-<second>``: unique per sample."""
    pair: InstancePair
    arrays: dict[str, np.ndarray]


@dataclass
class PairReport:
    """What :func:`build_pair_samples` built (written into the shard manifest)."""

    teachers: list[str]
    students: list[str]
    language_pairs: dict[str, int] = field(default_factory=dict)
    """``"<first>-<second>"`` -> instance pairs, in rank order."""
    per_pair: int = 0
    instances_available: int = 0
    """Instances of the unlabelled set before exclusion."""
    excluded_evaluation_instances: int = 0

    def to_dict(self) -> dict[str, Any]:
        return {"teachers": self.teachers, "students": self.students, "language_pairs": self.language_pairs,
                "pairs_total": sum(self.language_pairs.values()), "per_pair": self.per_pair,
                "instances_available": self.instances_available,
                "excluded_evaluation_instances": self.excluded_evaluation_instances}  # fmt: skip


def _text_key(example: ClassificationExample) -> tuple:
    return (example.language, example.text_a, example.text_b, example.choices)


def evaluation_overlap(
    examples: Sequence[ClassificationExample], evaluation: Sequence[ClassificationExample]
) -> set[str]:
    """Instances of ``examples`` with a row that is an evaluation example (same instance uid, or the same
    texts in the same language)."""
    eval_instances = {e.instance for e in evaluation}
    eval_texts = {_text_key(e) for e in evaluation}
    return {e.instance for e in examples if e.instance in eval_instances or _text_key(e) in eval_texts}


def build_pair_samples(
    examples: Sequence[ClassificationExample],
    selection: Selection,
    cfg: PairsConfig,
    encode: Encode,
    *,
    evaluation: Sequence[ClassificationExample] = (),
    source: str = "the unlabelled set",
) -> tuple[list[PairSample], PairReport]:
    """The shuffled pair samples of ``examples`` (module docstring) and a report of what was built."""
    by_language: dict[str, list[ClassificationExample]] = {}
    for example in examples:
        by_language.setdefault(example.language, []).append(example)
    instances = {lang: [e.instance for e in rows] for lang, rows in by_language.items()}
    files = {lang: rows[0].source.rsplit(":", 1)[0] for lang, rows in by_language.items() if rows}
    excluded = evaluation_overlap(examples, evaluation)
    lp = language_pairs(selection.teachers, selection.students, selection.ranking, student_pairs=cfg.student_pairs)
    pairs = build_pairs(instances, lp, per_pair=cfg.per_pair, seed=cfg.seed, exclude=excluded, files=files,
                        source=source)  # fmt: skip

    needed = sorted({(p.uid, lang) for p in pairs for lang in (p.first, p.second)})
    row_of = {(e.instance, e.language): e for e in examples}
    chosen = [row_of[key] for key in needed]
    features = encode(chosen)
    arrays = {key: f.arrays for key, f in zip(needed, features, strict=True)}
    keep = set(cfg.label_languages)
    samples = [
        PairSample(key=f"{p.uid}|{p.language_pair}", pair=p,
                   arrays=pair_sample(arrays[(p.uid, p.first)], arrays[(p.uid, p.second)],
                                      keep_labels=(p.first in keep, p.second in keep)))
        for p in pairs
    ]  # fmt: skip
    counts = pair_counts(pairs)
    report = PairReport(
        teachers=list(selection.teachers), students=list(selection.students),
        language_pairs={f"{a}-{b}": counts[f"{a}-{b}"] for a, b in lp}, per_pair=cfg.per_pair,
        instances_available=len(next(iter(instances.values()), [])), excluded_evaluation_instances=len(excluded),
    )  # fmt: skip
    return samples, report
