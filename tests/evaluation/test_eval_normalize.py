"""Normalisation, EM and F1 against hand-worked values of the official SQuAD v1.1 and MLQA v1 logic.

Every expected value below was derived by hand from the scripts' steps (lower → strip punctuation →
remove articles → whitespace / mixed segmentation; F1 = 2PR/(P+R) on token bags) and is not computed
by the code under test.
"""

from __future__ import annotations

import unicodedata

import pytest

from xdist.evaluation import (
    MLQA_LANGUAGES,
    exact_match_score,
    f1_score,
    mixed_segmentation,
    normalize_mlqa,
    normalize_squad,
    normalizer_for,
    score_answer,
)

SQUAD = normalizer_for("en", "squad")


def mlqa(lang: str):
    return normalizer_for(lang, "mlqa")


# ---------------------------------------------------------------- normaliser choice


@pytest.mark.parametrize("lang", ["en", "es", "de", "ar", "hi", "vi", "zh"])
def test_auto_uses_mlqa_for_the_seven_mlqa_languages(lang):
    normalizer = normalizer_for(lang)
    assert normalizer.scheme == "mlqa" and normalizer.lang == lang
    assert normalizer.name == f"mlqa-v1:{lang}"


@pytest.mark.parametrize("lang", ["el", "ru", "tr", "th", "ro", "ko", "sw", "fi", "bn", "te", "id"])
def test_auto_uses_squad_for_other_languages(lang):
    assert normalizer_for(lang).name == "squad-v1.1"


def test_explicit_schemes_and_errors():
    assert normalizer_for("es", "squad").name == "squad-v1.1"
    assert normalizer_for("es", "mlqa").name == "mlqa-v1:es"
    with pytest.raises(ValueError, match="'el'"):
        normalizer_for("el", "mlqa")
    with pytest.raises(ValueError, match="unknown normalisation scheme"):
        normalizer_for("en", "xquad")
    with pytest.raises(ValueError, match="no rule for language 'ru'"):
        normalize_mlqa("x", "ru")
    assert set(MLQA_LANGUAGES) == {"en", "es", "de", "ar", "hi", "vi", "zh"}


# ---------------------------------------------------------------- SQuAD v1.1


def test_squad_english_articles_punctuation_whitespace():
    assert normalize_squad("The  Beatles!") == "beatles"
    assert normalize_squad("an apple, a pear") == "apple pear"
    # "a" inside a word is not an article (\b boundaries).
    assert normalize_squad("Anathema") == "anathema"
    # Punctuation goes before articles: the hyphen disappears and glues "the" to "end".
    assert normalize_squad("The-End") == "theend"


def test_squad_keeps_non_ascii_punctuation_and_foreign_articles():
    assert normalize_squad("¿Dónde está El Niño?") == "¿dónde está el niño"
    assert normalize_squad("«Paris»") == "«paris»"
    assert normalize_squad("1990–1995") == "1990–1995"  # en dash is not in string.punctuation
    assert normalize_squad("Die Hauptstadt") == "die hauptstadt"
    assert normalize_squad("北京、上海。") == "北京、上海。"


# ---------------------------------------------------------------- MLQA per language


def test_mlqa_english():
    assert normalize_mlqa("The Beatles", "en") == "beatles"
    assert normalize_mlqa("«Paris»", "en") == "paris"  # Unicode Pi/Pf punctuation removed
    assert normalize_mlqa("1990–1995", "en") == "19901995"  # en dash (Pd) removed, digits glued
    assert normalize_mlqa("The-End", "en") == "theend"


def test_mlqa_spanish_articles_and_inverted_marks():
    assert normalize_mlqa("¿Dónde está El Niño?", "es") == "dónde está niño"
    assert normalize_mlqa("Los Ángeles y las Vegas", "es") == "ángeles y vegas"
    assert normalize_mlqa("unos años", "es") == "años"
    # English articles are not Spanish ones.
    assert normalize_mlqa("the beach", "es") == "the beach"


def test_mlqa_german_articles():
    assert normalize_mlqa("Die Hauptstadt des Landes", "de") == "hauptstadt landes"
    assert normalize_mlqa("einem Haus", "de") == "haus"
    assert normalize_mlqa("Dieser Hund", "de") == "dieser hund"  # "die" only as a whole word


def test_mlqa_vietnamese_word_list_quirks():
    # "của" (of) and "là" (is) are in the list although they are no articles.
    assert normalize_mlqa("Thủ đô của Việt Nam", "vi") == "thủ đô việt nam"
    assert normalize_mlqa("Những cái bàn là gỗ", "vi") == "bàn gỗ"
    # The word list matches precomposed (NFC) code points only: decomposed text keeps its "của".
    decomposed = unicodedata.normalize("NFD", "của bạn")
    assert normalize_mlqa(decomposed, "vi") == decomposed


def test_mlqa_arabic_removes_al_everywhere():
    assert normalize_mlqa("الكتاب", "ar") == "كتاب"
    # The rule replaces the letters ALEF+LAM anywhere, even inside a word: "مالك" → "م ك".
    assert normalize_mlqa("مالك", "ar") == "م ك"
    assert normalize_mlqa("في البيت", "ar") == "في بيت"
    assert normalize_mlqa("كتاب، قلم", "ar") == "كتاب قلم"  # Arabic comma U+060C is Po


def test_mlqa_hindi_has_no_articles_but_loses_danda():
    assert normalize_mlqa("भारत की राजधानी।", "hi") == "भारत की राजधानी"
    assert normalize_mlqa("The Taj", "hi") == "the taj"  # no article rule for Hindi answers


def test_mlqa_chinese_mixed_segmentation():
    assert normalize_mlqa("北京、上海。", "zh") == "北 京 上 海"
    assert normalize_mlqa("iPhone手机 2008年", "zh") == "iphone 手 机 2008 年"
    # Only U+4E00..U+9FA5 are split; an Extension-A ideograph stays glued like Latin text.
    assert normalize_mlqa("㐀㐁中", "zh") == "㐀㐁 中"
    assert normalize_mlqa("The 北京", "zh") == "the 北 京"  # no article rule for Chinese


def test_mixed_segmentation_splits_punctuation_too():
    assert mixed_segmentation("ab,cd 中x") == ["ab", ",", "cd", "中", "x"]
    assert mixed_segmentation("") == []


# ---------------------------------------------------------------- EM / F1


def test_f1_partial_overlap_english():
    # pred tokens [big, red, fox], gold tokens [red, fox, jumped]: overlap 2, P = R = 2/3, F1 = 2/3.
    assert f1_score("the big red fox", "a red fox jumped", SQUAD) == pytest.approx(2 / 3)
    assert exact_match_score("the big red fox", "a red fox jumped", SQUAD) == 0.0


def test_f1_counts_repeated_tokens_once_per_match():
    # pred [fox, fox], gold [fox]: overlap min(2, 1) = 1, P = 1/2, R = 1, F1 = 2 * 0.5 / 1.5 = 2/3.
    assert f1_score("fox fox", "fox", SQUAD) == pytest.approx(2 / 3)


def test_chinese_character_f1():
    # MLQA zh: pred 北京大学 → [北, 京, 大, 学], gold 北京 → [北, 京]; overlap 2,
    # P = 2/4 = 0.5, R = 2/2 = 1, F1 = 2 * 0.5 * 1 / 1.5 = 2/3.
    assert f1_score("北京大学", "北京", mlqa("zh")) == pytest.approx(2 / 3)
    # SQuAD's whitespace tokens: [北京大学] vs [北京], no overlap.
    assert f1_score("北京大学", "北京", SQUAD) == 0.0
    # EM after segmentation: punctuation differences vanish.
    assert exact_match_score("北京。", "北京", mlqa("zh")) == 1.0


def test_language_specific_em():
    assert exact_match_score("El Niño", "niño", mlqa("es")) == 1.0
    assert exact_match_score("El Niño", "niño", SQUAD) == 0.0
    assert exact_match_score("«Berlin»", "Berlin", mlqa("de")) == 1.0
    assert exact_match_score("«Berlin»", "Berlin", SQUAD) == 0.0


def test_max_over_multiple_gold_answers():
    golds = ["Denver Broncos", "the Broncos", "Broncos team"]
    # vs "Denver Broncos": [broncos] vs [denver, broncos] → P = 1, R = 1/2, F1 = 2/3
    # vs "the Broncos": [broncos] vs [broncos] → EM 1, F1 1
    assert score_answer("Broncos", golds, SQUAD) == (1.0, 1.0)
    # "Denver" matches only the first gold: P = 1, R = 1/2, F1 = 2/3; no EM.
    exact, f1 = score_answer("Denver", golds, SQUAD)
    assert exact == 0.0 and f1 == pytest.approx(2 / 3)
    with pytest.raises(ValueError):
        score_answer("x", [], SQUAD)


def test_empty_prediction():
    assert score_answer("", ["Paris"], SQUAD) == (0.0, 0.0)
    # Gold normalising to nothing: the strings match (EM 1) but F1 counts no common token (0).
    assert score_answer("", ["The"], SQUAD) == (1.0, 0.0)
    assert score_answer("", ["。"], mlqa("zh")) == (1.0, 0.0)
