"""ALSACE teacher-language selection on constructed probability tables whose answers are known."""

from __future__ import annotations

import json
import os
import secrets

import numpy as np
import pytest

from xdist.methods.alsace.selection import (
    XNLI_AUTHORS_STUDENTS,
    XNLI_RANKING,
    SelectionError,
    load_selection,
    majority_vote,
    normalise_scores,
    reliability,
    select_teachers,
    selection_image,
    threshold_split,
    write_selection,
)


@pytest.fixture
def rng(request):
    """A numpy generator with a fresh seed per test, printed for replay with XDIST_TEST_SEED=<seed>."""
    seed = int(os.environ.get("XDIST_TEST_SEED", secrets.randbits(31)))
    print(f"[seed] {request.node.nodeid}: replay with XDIST_TEST_SEED={seed}")
    return np.random.default_rng(seed)


def planted_table(rng, n_good: int, n_noisy: int, n_inst: int = 300, n_cls: int = 3):
    """Good languages put ~0.7-0.9 on the true class; noisy ones draw a Dirichlet(1) distribution."""
    truth = rng.integers(0, n_cls, n_inst)
    probs = []
    for _ in range(n_good):
        confidence = rng.uniform(0.7, 0.9, n_inst)
        p = np.repeat(((1 - confidence) / (n_cls - 1))[:, None], n_cls, axis=1)
        p[np.arange(n_inst), truth] = confidence
        probs.append(p)
    for _ in range(n_noisy):
        probs.append(rng.dirichlet(np.ones(n_cls), n_inst))
    return np.stack(probs), truth


def brute_force(probs, tie_break="probability", measure="probability"):
    """Loop-by-loop float64 reference of the vote and R_l (independent of the vectorised code)."""
    n_lang, n_inst, n_cls = probs.shape
    labels = []
    for i in range(n_inst):
        votes = [0] * n_cls
        for lang in range(n_lang):
            votes[int(np.argmax(probs[lang, i]))] += 1
        top = max(votes)
        tied = [c for c in range(n_cls) if votes[c] == top]
        if len(tied) == 1 or tie_break == "lowest":
            labels.append(tied[0])
        elif tie_break == "exclude":
            labels.append(-1)
        else:
            sums = [sum(probs[lang, i, c] for lang in range(n_lang)) for c in tied]
            labels.append(tied[int(np.argmax(sums))])
    r = []
    for lang in range(n_lang):
        values = [probs[lang, i, y] if measure == "probability" else float(np.argmax(probs[lang, i]) == y)
                  for i, y in enumerate(labels) if y >= 0]  # fmt: skip
        r.append(sum(values) / len(values))
    return np.array(labels), np.array(r)


@pytest.mark.parametrize("tie_break", ["probability", "lowest", "exclude"])
@pytest.mark.parametrize("measure", ["probability", "agreement"])
def test_vote_and_reliability_match_brute_force(rng, tie_break, measure):
    # Few languages and classes with coarse probabilities: many ties, all rules exercised.
    probs = rng.dirichlet(np.ones(3) * 0.7, size=(4, 57))
    labels, r = brute_force(probs, tie_break, measure)
    vote = majority_vote(probs, tie_break)
    np.testing.assert_array_equal(vote.labels, labels)
    assert vote.tied.sum() > 0
    np.testing.assert_allclose(reliability(probs, vote.labels, measure), r, rtol=1e-13)


def test_planted_noise_languages_become_students(rng):
    languages = ["en", "de", "fr", "es", "sw", "ur", "th"]
    probs, truth = planted_table(rng, n_good=4, n_noisy=3)
    for measure in ("probability", "agreement"):
        for normalise in ("sum", "softmax"):
            selection = select_teachers(languages, probs, reliability_measure=measure, normalise=normalise)
            assert set(selection.teachers) == {"en", "de", "fr", "es"}
            assert set(selection.students) == {"sw", "ur", "th"}
    vote = selection.vote
    assert vote["instances"] == vote["instances_used"] == 300
    # The vote of four good languages against three noisy ones recovers the planted labels.
    recovered = majority_vote(probs).labels
    assert (recovered == truth).mean() > 0.95
    assert sum(vote["pseudo_label_counts"]) == 300
    for index, lang in enumerate(languages):
        assert sum(vote["per_language"][lang]["votes"]) == 300
        assert vote["per_language"][lang]["votes"] == np.bincount(probs[index].argmax(-1), minlength=3).tolist()
    # Ranking: by S descending, every language exactly once, teachers first.
    s = [vote["per_language"][lang]["S"] for lang in selection.ranking]
    assert s == sorted(s, reverse=True)
    assert selection.ranking == selection.teachers + selection.students
    assert sorted(selection.ranking) == sorted(languages)


def test_tie_break_rules_on_a_two_two_vote():
    # 4 languages, 2 vote class 0 and 2 vote class 1 on every instance; class 1 has more summed probability.
    p = np.array([[0.60, 0.40, 0.0], [0.55, 0.45, 0.0], [0.10, 0.90, 0.0], [0.30, 0.70, 0.0]])
    probs = np.repeat(p[:, None, :], 5, axis=1)
    assert majority_vote(probs, "probability").labels.tolist() == [1] * 5
    assert majority_vote(probs, "lowest").labels.tolist() == [0] * 5
    assert majority_vote(probs, "exclude").labels.tolist() == [-1] * 5
    assert majority_vote(probs).tied.all()
    with pytest.raises(SelectionError, match="tie_break is 'exclude'"):
        select_teachers(["a", "b", "c", "d"], probs, tie_break="exclude")
    selection = select_teachers(["a", "b", "c", "d"], probs)
    assert selection.vote["ties"] == {"count": 5, "instances": [0, 1, 2, 3, 4], "rule": "probability"}
    # R under the pseudo-label 1: [0.4, 0.45, 0.9, 0.7], mean 0.6125 -> c, d teachers.
    assert selection.teachers == ["c", "d"] and selection.students == ["b", "a"]
    # Exactly equal summed probabilities fall back on the lowest class index.
    even = np.repeat(np.array([[0.6, 0.4], [0.4, 0.6]])[:, None, :], 3, axis=1)
    assert majority_vote(even, "probability").labels.tolist() == [0, 0, 0]


def test_strict_and_inclusive_threshold():
    # Agreement rates [1, 0.4, 0.7, 0.7, 0.7] over 10 instances (mean 0.7 exactly on three languages);
    # at most 2 of the 5 languages disagree on any instance, so the pseudo-label is always class 0.
    probs = np.zeros((5, 10, 2))
    probs[...] = [0.8, 0.2]
    for lang, disagree in ((1, [0, 1, 2, 3, 4, 5]), (2, [6, 7, 8]), (3, [0, 6, 9]), (4, [1, 7, 8])):
        probs[lang, disagree] = [0.2, 0.8]
    languages = ["en", "sw", "de", "fr", "es"]
    assert (majority_vote(probs).labels == 0).all()
    strict = select_teachers(languages, probs, reliability_measure="agreement", comparison=">")
    inclusive = select_teachers(languages, probs, reliability_measure="agreement", comparison=">=")
    assert strict.teachers == ["en"]
    assert inclusive.teachers == ["en", "de", "fr", "es"] and inclusive.students == ["sw"]
    assert sorted(strict.vote["differ_under_other_comparison"]) == ["de", "es", "fr"]
    assert strict.vote["xi"] == pytest.approx(0.2)
    # Every R equal: no language is above the mean with '>'.
    equal = np.repeat(np.array([[0.7, 0.3]]), 4, axis=0)[:, None, :].repeat(6, axis=1)
    with pytest.raises(SelectionError, match="no language scores above"):
        select_teachers(["a", "b", "c", "d"], equal)
    assert select_teachers(["a", "b", "c", "d"], equal, comparison=">=").students == []


def test_agreement_and_mean_probability_give_different_splits():
    n = 10
    probs = np.empty((4, n, 3))
    probs[0] = [0.4, 0.3, 0.3]  # always agrees, never confident
    probs[1] = [0.98, 0.01, 0.01]
    probs[1, :3] = [0.01, 0.98, 0.01]  # confident, disagrees on 3 of 10
    probs[2] = probs[3] = [0.9, 0.05, 0.05]
    languages = ["a", "b", "c", "d"]
    by_probability = select_teachers(languages, probs, reliability_measure="probability")
    by_agreement = select_teachers(languages, probs, reliability_measure="agreement")
    # probability: R = [0.4, 0.689, 0.9, 0.9]; agreement: R = [1, 0.7, 1, 1].
    np.testing.assert_allclose([by_probability.vote["per_language"][x]["R"] for x in languages],
                               [0.4, 0.689, 0.9, 0.9])  # fmt: skip
    assert by_probability.teachers == ["c", "d"]
    assert by_agreement.teachers == ["a", "c", "d"] and by_agreement.students == ["b"]


def test_softmax_normalisation_moves_a_language_near_the_mean():
    # Every language votes class 0 with probability R_l, so R = the planted values exactly.
    r = np.array([1.0, 0.51, 0.51, 0.68])
    probs = np.stack([np.stack([r, 1 - r], -1)] * 7, axis=1)
    languages = ["en", "sw", "ur", "de"]
    by_sum = select_teachers(languages, probs, normalise="sum")
    by_softmax = select_teachers(languages, probs, normalise="softmax")
    # mean R = 0.675 < 0.68 < log mean exp(R) = 0.696 (Jensen): de is a teacher only under 'sum'.
    assert by_sum.teachers == ["en", "de"] and by_softmax.teachers == ["en"]
    assert by_sum.vote["differ_under_other_normalisation"] == {"normalise": "softmax", "languages": ["de"]}
    np.testing.assert_allclose(normalise_scores(r, "softmax"), np.exp(r) / np.exp(r).sum(), rtol=1e-14)
    xi, mask = threshold_split(normalise_scores(r, "sum"))
    assert xi == pytest.approx(0.25) and mask.tolist() == [True, False, False, True]


def test_authors_ranking_and_fixed_teachers():
    selection = select_teachers(XNLI_RANKING, mode="ranking", ranking=XNLI_RANKING, n_students=XNLI_AUTHORS_STUDENTS)
    assert selection.teachers == ["en", "fr", "bg", "es", "de", "vi", "ru"]
    assert selection.students == ["el", "zh", "th", "tr", "hi", "ar", "ur", "sw"]
    assert selection.vote is None
    with pytest.raises(SelectionError, match="missing \\['xx'\\]"):
        select_teachers([*XNLI_RANKING, "xx"], mode="ranking", ranking=XNLI_RANKING, n_students=8)
    fixed = select_teachers(["de", "en", "sw", "fr"], mode="teachers", teachers=["en", "fr"])
    assert fixed.ranking == ["en", "fr", "de", "sw"] and fixed.students == ["de", "sw"]
    with pytest.raises(SelectionError, match="not in the data: \\['ja'\\]"):
        select_teachers(["de", "en"], mode="teachers", teachers=["ja"])
    random_a = select_teachers(XNLI_RANKING, mode="random", n_students=8, seed=3)
    random_b = select_teachers(XNLI_RANKING, mode="random", n_students=8, seed=3)
    assert random_a.teachers == random_b.teachers and len(random_a.teachers) == 7
    assert random_a.teachers != select_teachers(XNLI_RANKING, mode="random", n_students=8, seed=4).teachers


def test_selection_from_a_config_section(rng):
    from xdist.config import ConfigError, build
    from xdist.methods.alsace.config import SelectionConfig
    from xdist.methods.alsace.selection import select_from_config

    cfg = build(SelectionConfig, {"mode": "ranking", "ranking": list(XNLI_RANKING), "n_students": 8})
    assert select_from_config(cfg, XNLI_RANKING).students[0] == "el"
    cfg = build(SelectionConfig, {"reliability": "agreement", "comparison": ">="})
    probs, _ = planted_table(rng, n_good=3, n_noisy=2, n_inst=50)
    assert select_from_config(cfg, list("abcde"), probs).options["reliability"] == "agreement"
    with pytest.raises(ConfigError, match="'method.alsace.selection.n_students': mode 'random' needs"):
        build(SelectionConfig, {"mode": "random"}, "method.alsace.selection")
    with pytest.raises(ConfigError, match="'comparison'"):
        build(SelectionConfig, {"comparison": "<"})


def test_bad_probability_tables_are_refused(rng):
    probs = rng.dirichlet(np.ones(3), size=(2, 5))
    with pytest.raises(SelectionError, match="2 languages but 3 are named"):
        select_teachers(["a", "b", "c"], probs)
    with pytest.raises(SelectionError, match="sum to 1"):
        select_teachers(["a", "b"], probs * 2)
    with pytest.raises(SelectionError, match="not logits"):
        select_teachers(["a", "b"], np.log(probs))
    with pytest.raises(SelectionError, match="needs the model's class probabilities"):
        select_teachers(["a", "b"])


def test_selection_file_chart_and_checks(tmp_path, rng):
    languages = ["en", "de", "fr", "sw", "ur"]
    probs, _ = planted_table(rng, n_good=3, n_noisy=2, n_inst=60)
    selection = select_teachers(languages, probs, class_names=["entailment", "neutral", "contradiction"])
    files = write_selection(selection, tmp_path)
    raw = json.loads(files["selection"].read_text())
    assert raw["teachers"] == selection.teachers and raw["vote"]["classes"][0] == "entailment"
    loaded = load_selection(files["selection"], languages)
    assert loaded.to_dict() == selection.to_dict()
    image = selection_image(selection)
    assert image.dtype == np.uint8 and image.ndim == 3 and image.shape[2] == 3
    # Teachers are drawn in tab:blue, students in tab:gray, xi in tab:red.
    for rgb in ((31, 119, 180), (127, 127, 127), (214, 39, 40)):
        assert (np.abs(image.astype(int) - rgb).sum(-1) < 6).any(), rgb
    assert files["chart"].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    with pytest.raises(SelectionError, match="not in the data \\['ur'\\], not in the selection \\['ja'\\]"):
        load_selection(files["selection"], ["en", "de", "fr", "sw", "ja"])
    raw["students"].append(raw["teachers"][0])
    files["selection"].write_text(json.dumps(raw))
    with pytest.raises(SelectionError, match="both teachers and students"):
        load_selection(files["selection"])
    with pytest.raises(SelectionError, match="no selection file"):
        load_selection(tmp_path / "missing.json")
