"""ALSACE pair construction: language pairs (TT + TS, never SS), instance pairs, errors."""

from __future__ import annotations

from itertools import combinations

import pytest

from xdist.data.parallel import PairError, build_pairs, check_parallel, language_pairs, pair_counts
from xdist.methods.alsace.selection import XNLI_AUTHORS_STUDENTS, XNLI_RANKING, select_teachers


def authors_split():
    selection = select_teachers(XNLI_RANKING, mode="ranking", ranking=XNLI_RANKING, n_students=XNLI_AUTHORS_STUDENTS)
    return selection.teachers, selection.students, selection.ranking


def parallel_ids(languages, n, prefix="x"):
    return {lang: [f"{prefix}{i}" for i in range(n)] for lang in languages}


def test_language_pairs_match_the_authors_enumeration():
    teachers, students, ranking = authors_split()
    pairs = language_pairs(teachers, students, ranking)
    assert len(pairs) == 77 == len(set(pairs))
    # The authors' code: combinations(teachers + [student], 2) for each student, de-duplicated.
    authors = {pair for student in students for pair in combinations(teachers + [student], 2)}
    assert set(pairs) == authors
    tt = [p for p in pairs if p[1] in teachers]
    assert len(tt) == 21 and all(p[0] in teachers for p in pairs)
    assert not any(a in students and b in students for a, b in pairs)
    assert all(ranking.index(a) < ranking.index(b) for a, b in pairs)
    assert pairs == sorted(pairs, key=lambda p: (ranking.index(p[0]), ranking.index(p[1])))
    # Ablation: students removed from the pairs.
    assert language_pairs(teachers, students, ranking, student_pairs=False) == tt
    # The rank decides the order within a pair, not the role.
    assert language_pairs(["de"], ["en"], ["en", "de"]) == [("en", "de")]


def test_instance_pairs_counts_order_and_determinism():
    teachers, students, ranking = authors_split()
    pairs = language_pairs(teachers, students, ranking)
    instances = parallel_ids(ranking, 40)
    built = build_pairs(instances, pairs, per_pair=25, seed=100)
    assert len(built) == 77 * 25
    counts = pair_counts(built)
    assert set(counts) == {f"{a}-{b}" for a, b in pairs} and set(counts.values()) == {25}
    # The first 25 instances, the same ones for every language pair; each side is the same instance.
    for pair in built:
        assert pair.uid == f"x{pair.index}" and pair.index < 25
        assert instances[pair.first][pair.index] == instances[pair.second][pair.index] == pair.uid
        assert ranking.index(pair.first) < ranking.index(pair.second)
    again = build_pairs(instances, pairs, per_pair=25, seed=100)
    other = build_pairs(instances, pairs, per_pair=25, seed=101)
    assert again == built
    assert other != built and sorted(other, key=repr) == sorted(built, key=repr)
    # Shuffled: the language pairs are mixed within the first hundred training pairs.
    assert len({p.language_pair for p in built[:100]}) > 30


def test_evaluation_rows_are_never_paired():
    instances = parallel_ids(["en", "de", "sw"], 12)
    evaluation = {"x0", "x3", "x4", "x10"}
    built = build_pairs(instances, [("en", "de"), ("en", "sw")], per_pair=8, exclude=evaluation)
    assert len(built) == 16
    assert not {p.uid for p in built} & evaluation
    assert sorted({p.index for p in built}) == [1, 2, 5, 6, 7, 8, 9, 11]  # the first 8 kept, in order
    with pytest.raises(PairError, match="9 instances per language pair requested but the unlabelled set has 8 "
                                        "\\(12 rows, 4 excluded"):  # fmt: skip
        build_pairs(instances, [("en", "de")], per_pair=9, exclude=evaluation)


def test_bad_inputs_are_named():
    instances = parallel_ids(["en", "de"], 5)
    with pytest.raises(PairError, match="languages \\['sw'\\] are not in xnli-unlabelled"):
        build_pairs(instances, [("en", "sw")], per_pair=2, source="xnli-unlabelled")
    short = {"en": ["a", "b", "c"], "de": ["a", "b"]}
    with pytest.raises(PairError, match="test-de.tsv: 2 instances, but test-en.tsv has 3: the unlabelled set is not "
                                        "parallel"):  # fmt: skip
        check_parallel(short, {"en": "test-en.tsv", "de": "test-de.tsv"})
    swapped = {"en": ["a", "b", "c"], "de": ["a", "c", "b"]}
    with pytest.raises(PairError, match="instance 1 has id 'c' where 'en' has 'b'"):
        build_pairs(swapped, [("en", "de")], per_pair=1)
    with pytest.raises(PairError, match="ids repeat"):
        check_parallel({"en": ["a", "a"], "de": ["a", "a"]})
    with pytest.raises(PairError, match="both teachers and students"):
        language_pairs(["en"], ["en"], ["en"])
    with pytest.raises(PairError, match="not in the ranking"):
        language_pairs(["en", "xx"], [], ["en"])
