"""The teacher-logit cache generalised: any logits shape, teachers over raw texts with their own tokenizers,
several teachers keyed by example uid, each loaded, used and released in turn (MBLM's monolingual teachers).

The 2-rank build (each rank a share of the items) runs in the MBLM job.
"""

from __future__ import annotations

import io
import sys
import weakref

import pytest
import torch

from tests.mblm_helpers import TEXTS, texts_of, tiny_classifier, wordpiece
from xdist.distributed import DistEnv
from xdist.methods.teacher_cache import MultiTeacherCache, TeacherCache, _compress, build_text_teacher_cache

SOLO = DistEnv(rank=0, local_rank=0, world_size=1, device=torch.device("cpu"))
PAIRS = {lang: [(a, b) for a, b, _ in rows] for lang, rows in TEXTS.items()}


def _compute(model, tokenizer, max_length=24):
    def compute(pairs):
        inputs = tokenizer([p for p, _ in pairs], [h for _, h in pairs], truncation="longest_first",
                           max_length=max_length, padding=True, return_tensors="pt")
        return model(**inputs).logits
    return compute


@pytest.fixture(scope="module")
def teachers():
    """Per language: a tokenizer of its own (different vocabularies and sizes) and a teacher model."""
    result = {}
    for seed, lang in enumerate(PAIRS):
        tokenizer = wordpiece(texts_of(lang), vocab_size=60 + 40 * seed)
        result[lang] = (tokenizer, tiny_classifier(len(tokenizer), seed))
    assert result["en"][0].get_vocab() != result["de"][0].get_vocab()
    return result


def test_cache_holds_each_teachers_logits_per_uid(teachers, tmp_path):
    # Parallel rows share a uid (the same instance in both languages); each teacher keys its own rows.
    items = {lang: [(f"xnli-{i}", pair) for i, pair in enumerate(pairs)] for lang, pairs in PAIRS.items()}
    alive = []

    def loader(lang):
        def load():
            tokenizer, model = teachers[lang]
            alive.append(weakref.ref(model))
            return _compute(model, tokenizer)
        return load

    cache = MultiTeacherCache.build({lang: loader(lang) for lang in PAIRS}, items, tmp_path, SOLO,
                                    fingerprints={"en": "en-v1", "de": "de-v1"}, batch_size=2)
    assert len(alive) == 2
    # Rows in any order, any mix of teachers; each row's logits are its teacher run directly on its own text.
    rows = [("de", "xnli-3"), ("en", "xnli-3"), ("en", "xnli-0"), ("de", "xnli-4"), ("en", "xnli-2")]
    got = cache.logits([lang for lang, _ in rows], [uid for _, uid in rows], torch.device("cpu"))
    assert got.shape == (5, 3) and got.dtype == torch.float32
    for row, (lang, uid) in enumerate(rows):
        tokenizer, model = teachers[lang]
        pair = PAIRS[lang][int(uid.split("-")[1])]
        with torch.no_grad():
            direct = model(**tokenizer(*pair, truncation="longest_first", max_length=24, return_tensors="pt")).logits
        torch.testing.assert_close(got[row], direct[0], rtol=1e-5, atol=1e-6)
    assert not torch.allclose(got[0], got[1])  # the same uid, two teachers
    with pytest.raises(KeyError, match="no teacher for 'zh'"):
        cache.logits(["zh"], ["xnli-0"], torch.device("cpu"))
    with pytest.raises(KeyError, match="no logits for sample 'xnli-9'"):
        cache.logits(["en"], ["xnli-9"], torch.device("cpu"))

    # A complete cache is reused without loading any teacher; another fingerprint is refused.
    def refuse():
        raise AssertionError("the teacher must not be loaded for a complete cache")

    again = MultiTeacherCache.build({"en": refuse, "de": refuse}, items, tmp_path, SOLO,
                                    fingerprints={"en": "en-v1", "de": "de-v1"}, batch_size=2)
    assert torch.equal(again.logits(["de"], ["xnli-1"], torch.device("cpu")),
                       cache.logits(["de"], ["xnli-1"], torch.device("cpu")))
    with pytest.raises(ValueError, match="was built for .*de-v1.*not .*de-v2.*delete the directory"):
        MultiTeacherCache.build({"en": refuse, "de": refuse}, items, tmp_path, SOLO,
                                fingerprints={"en": "en-v1", "de": "de-v2"}, batch_size=2)


def test_no_teacher_outlives_the_build(tmp_path):
    """The loader's teacher is garbage once the build returns (nothing in the cache holds it)."""
    tokenizer = wordpiece(texts_of("en"), vocab_size=70)
    refs = []

    def load():
        model = tiny_classifier(len(tokenizer), 5)
        refs.append(weakref.ref(model))
        return _compute(model, tokenizer)

    items = [(f"u{i}", pair) for i, pair in enumerate(PAIRS["en"])]
    cache = MultiTeacherCache.build({"en": load}, {"en": items}, tmp_path, SOLO, fingerprints={"en": "x"},
                                    batch_size=3)
    assert len(cache.caches["en"]) == 6
    assert len(refs) == 1 and refs[0]() is None


def test_duplicate_uids_and_mismatched_languages_are_refused(tmp_path):
    with pytest.raises(ValueError, match="uid 'a' occurs twice"):
        build_text_teacher_cache(lambda: None, [("a", 1), ("a", 2)], tmp_path / "t", SOLO, fingerprint="f",
                                 batch_size=2)
    with pytest.raises(ValueError, match=r"teachers and items name different languages: \['de'\]"):
        MultiTeacherCache.build({"en": lambda: None}, {"en": [], "de": []}, tmp_path, SOLO,
                                fingerprints={}, batch_size=2)


@pytest.mark.parametrize("shape", [(6, 3), (6, 2, 5), (6, 2, 3, 9)])
def test_any_logits_shape_full_and_topk(shape, tmp_path):
    """[N, *S, L] logits of any rank: ``full`` exact; ``topk`` (on the last axis) exact on the top K, with the
    tail's mass kept, as for SKD's [N, 2, L]."""
    g = torch.Generator().manual_seed(len(shape))
    logits = 2 * torch.randn(shape, generator=g)
    items = [(f"k{i}", i) for i in range(shape[0])]
    for mode in ("full", "topk"):
        cache = build_text_teacher_cache(lambda logits=logits: (lambda idx: logits[idx]), items, tmp_path / mode,
                                         SOLO, fingerprint="f", batch_size=4, mode=mode, topk=2, temperature=1.5)
        got = cache.logits(["k5", "k0", "k3"], torch.device("cpu"))
        expected = logits[[5, 0, 3]]
        assert got.shape == expected.shape
        if mode == "full":
            assert torch.equal(got, expected)
        else:
            top = expected.topk(2, dim=-1)
            assert torch.equal(got.gather(-1, top.indices), top.values)
            p, q = torch.softmax(expected.double() / 1.5, -1), torch.softmax(got.double() / 1.5, -1)
            in_top = torch.zeros_like(p, dtype=torch.bool).scatter_(-1, top.indices, True)
            torch.testing.assert_close((q * ~in_top).sum(-1), (p * ~in_top).sum(-1), rtol=1e-5, atol=0)
    # The in-memory form SKD builds directly keeps working for any rank too.
    direct = TeacherCache([k for k, _ in items], "topk", shape[-1], 1.0, _compress(logits, shape[-1], 1.0))
    assert torch.equal(direct.logits(["k1"], torch.device("cpu")), logits[1:2])


class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


@pytest.mark.parametrize("terminal", [False, True])
def test_progress_bar_only_on_a_terminal(teachers, terminal, tmp_path, monkeypatch):
    """In a log file (stderr not a terminal) the build draws no bar, only its log line; on a terminal it does."""
    stream = _Terminal() if terminal else io.StringIO()
    monkeypatch.setattr(sys, "stderr", stream)
    tokenizer, model = teachers["en"]
    items = [(f"u{i}", pair) for i, pair in enumerate(PAIRS["en"])]
    MultiTeacherCache.build({"en": lambda: _compute(model, tokenizer)}, {"en": items}, tmp_path, SOLO,
                            fingerprints={"en": "x"}, batch_size=2)
    assert ("teacher cache en" in stream.getvalue()) == terminal
