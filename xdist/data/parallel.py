"""ALSACE pair construction (Zhao et al. 2024 §3.2; methods.md §C.4) from a parallel unlabelled set.

Language pairs (:func:`language_pairs`): every *unordered* pair of languages that is teacher–teacher (TT)
or teacher–student (TS), never student–student ("to prevent student languages from learning from each
other"); in each pair the higher-ranked language comes first (for TS pairs: the teacher). The authors'
``combinations(teachers + [student], 2)`` per student, de-duplicated, gives the same set: 7 teachers and
8 students → C(7, 2) + 7·8 = 21 + 56 = 77. ``student_pairs=False`` keeps only the TT pairs (the paper's
ablation "students removed from the distillation groups"). The list is sorted by (rank of the first
language, rank of the second), so it depends only on the selection's ranking.

Instance pairs (:func:`build_pairs`): every language pair takes the **first N** instances of the parallel
set (default 500, the authors', who take the first 500 rows of each language's file) — the same N
instances for every language pair — skipping instances excluded by the caller (the evaluation split's
groups: a pair never holds a row that is evaluated). The full list of (language pair, instance) is then
shuffled by a seeded permutation (``numpy.random.default_rng(seed)``), so the order depends only on
(seed, selection, N, instance ids). Both sides of a pair are the same instance (the same uid and
position) in two languages.

Parallelism is checked, not assumed (:func:`check_parallel`): every language must list the same instance
ids in the same order.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass
from itertools import combinations

import numpy as np

from xdist.errors import UserError

DEFAULT_PER_PAIR = 500
"""Instances per language pair in the authors' code."""


class PairError(UserError, ValueError):
    """The unlabelled set, the selection or the pair settings cannot build pairs; the message says why."""


@dataclass(frozen=True)
class InstancePair:
    """One training pair: the same parallel instance in two languages, the higher-ranked first."""

    first: str
    """Language of the first (higher-ranked) side."""
    second: str
    """Language of the second side."""
    index: int
    """Position of the instance in the parallel set (the same row in every language's file)."""
    uid: str
    """The instance id shared by its parallel rows."""

    @property
    def language_pair(self) -> str:
        """``"<first>-<second>"``, the key of the manifest's per-language-pair counts."""
        return f"{self.first}-{self.second}"


def language_pairs(
    teachers: Sequence[str], students: Sequence[str], ranking: Sequence[str], *, student_pairs: bool = True
) -> list[tuple[str, str]]:
    """Every TT pair and (with ``student_pairs``) every TS pair, higher-ranked language first, sorted by rank."""
    rank = {lang: position for position, lang in enumerate(ranking)}
    unranked = [lang for lang in (*teachers, *students) if lang not in rank]
    if unranked:
        raise PairError(f"languages {unranked} are teachers or students but not in the ranking {list(ranking)}")
    both = set(teachers) & set(students)
    if both:
        raise PairError(f"languages {sorted(both)} are both teachers and students")
    if not teachers:
        raise PairError("no teacher language: ALSACE pairs need at least one")
    pairs = set(combinations(sorted(set(teachers), key=rank.get), 2))
    if student_pairs:
        pairs |= {(t, s) if rank[t] < rank[s] else (s, t) for t in teachers for s in students}
    return sorted(pairs, key=lambda pair: (rank[pair[0]], rank[pair[1]]))


def check_parallel(instances: Mapping[str, Sequence[str]], files: Mapping[str, str] | None = None) -> list[str]:
    """The instance ids common to every language (in order), after checking the set is parallel.

    ``instances`` maps each language to its instance ids in file order; ``files`` (optional) names each
    language's file in the messages. PairError when counts or ids differ, naming the file and the first
    differing position.
    """
    if not instances:
        raise PairError("the unlabelled parallel set has no language")
    files = files or {}
    languages = list(instances)
    reference_lang = languages[0]
    reference = list(instances[reference_lang])
    for lang in languages[1:]:
        ids = instances[lang]
        where = files.get(lang, f"language {lang!r}")
        if len(ids) != len(reference):
            raise PairError(
                f"{where}: {len(ids)} instances, but {files.get(reference_lang, repr(reference_lang))} has "
                f"{len(reference)}: the unlabelled set is not parallel (every language needs the same rows)"
            )
        for position, (uid, expected) in enumerate(zip(ids, reference, strict=True)):
            if uid != expected:
                raise PairError(
                    f"{where}: instance {position} has id {uid!r} where {reference_lang!r} has {expected!r}: "
                    "the unlabelled set is not parallel (same ids in the same order in every language)"
                )
    duplicates = [uid for uid, n in Counter(reference).items() if n > 1]
    if duplicates:
        raise PairError(f"instance ids repeat in the unlabelled set (e.g. {duplicates[:3]}): ids must be unique")
    return reference


def build_pairs(
    instances: Mapping[str, Sequence[str]],
    pairs: Sequence[tuple[str, str]],
    *,
    per_pair: int = DEFAULT_PER_PAIR,
    seed: int = 100,
    exclude: Collection[str] = (),
    files: Mapping[str, str] | None = None,
    source: str = "the unlabelled set",
) -> list[InstancePair]:
    """The shuffled instance pairs of ``pairs`` (module docstring): the first ``per_pair`` instances not in
    ``exclude`` (evaluation uids), for every language pair.

    PairError when a language of ``pairs`` is not in ``instances``, the set is not parallel, or fewer than
    ``per_pair`` instances remain.
    """
    if per_pair < 1:
        raise PairError(f"pairs per language pair must be >= 1, got {per_pair}")
    missing = sorted({lang for pair in pairs for lang in pair if lang not in instances})
    if missing:
        raise PairError(
            f"the selection's languages {missing} are not in {source} (it has {sorted(instances)}): add them "
            "to the unlabelled source or select teachers on this data"
        )
    needed = {lang for pair in pairs for lang in pair}
    uids = check_parallel({lang: ids for lang, ids in instances.items() if lang in needed}, files)
    excluded = set(exclude)
    kept = [(position, uid) for position, uid in enumerate(uids) if uid not in excluded]
    if per_pair > len(kept):
        removed = len(uids) - len(kept)
        raise PairError(
            f"{per_pair} instances per language pair requested but {source} has {len(kept)} "
            f"({len(uids)} rows, {removed} excluded as evaluation rows): lower the pairs per language pair"
        )
    chosen = kept[:per_pair]
    ordered = [InstancePair(first, second, position, uid) for first, second in pairs for position, uid in chosen]
    permutation = np.random.default_rng(seed).permutation(len(ordered))
    return [ordered[i] for i in permutation]


def pair_counts(pairs: Sequence[InstancePair]) -> dict[str, int]:
    """Instance pairs per language pair (``"<first>-<second>"`` → count), in first-seen order; for manifests."""
    return dict(Counter(pair.language_pair for pair in pairs))


def pair_sample(
    first: Mapping[str, np.ndarray],
    second: Mapping[str, np.ndarray],
    *,
    keep_labels: tuple[bool, bool] = (False, False),
    ignore_label: int = -100,
) -> dict[str, np.ndarray]:
    """One shard sample from the two sides' feature arrays: every array stacked on a new leading pair
    axis of size 2 (``input_ids`` ``[2, L]``, ``labels`` ``[2]``...), first side at index 0.

    The model inputs keep their names, so a collate that stacks arrays gives ``[B, 2, ...]`` and
    :func:`stack_pair_batch` turns that into the one stacked forward batch ``[2B, ...]``. ``labels`` of a
    side is kept only where ``keep_labels`` says so (the CE term's languages), else ``ignore_label``.
    """
    if set(first) != set(second):
        raise PairError(f"the two sides of a pair have different fields: {sorted(first)} vs {sorted(second)}")
    sample = {}
    for name in first:
        a, b = np.asarray(first[name]), np.asarray(second[name])
        if name == "labels":
            a = a if keep_labels[0] else np.full_like(a, ignore_label)
            b = b if keep_labels[1] else np.full_like(b, ignore_label)
        if a.shape != b.shape:
            raise PairError(f"field {name!r} has shapes {a.shape} and {b.shape} on the two sides of a pair "
                            "(features must be padded to one length)")  # fmt: skip
        sample[name] = np.stack([a, b])
    return sample


def stack_pair_batch(batch: Mapping[str, object]) -> dict[str, object]:
    """A collated pair batch ``[B, 2, ...]`` as one forward batch ``[2B, ...]``: the B first sides, then
    the B second sides (the order :func:`xdist.methods.alsace.loss.split_pairs` undoes). Every tensor or
    array must carry the pair axis (PairError otherwise); anything else (metadata lists) passes through."""
    stacked: dict[str, object] = {}
    for name, value in batch.items():
        shape = getattr(value, "shape", None)
        if shape is None:
            stacked[name] = value
            continue
        if len(shape) < 2 or shape[1] != 2:
            raise PairError(f"batch field {name!r} has shape {tuple(shape)}: a pair batch needs [B, 2, ...] "
                            "(were these shards prepared for ALSACE?)")  # fmt: skip
        if isinstance(value, np.ndarray):
            stacked[name] = np.swapaxes(value, 0, 1).reshape(2 * shape[0], *shape[2:])
        else:  # a torch tensor
            stacked[name] = value.transpose(0, 1).reshape(2 * shape[0], *shape[2:])
    return stacked
