"""Classification metrics against hand-computed cases, McNemar against SciPy, chart and prediction files."""

from __future__ import annotations

import json

import numpy as np
import pytest
from scipy.stats import binomtest

from xdist.tasks.classification.metrics import (
    bar_chart_image,
    disparity,
    language_scores,
    mcnemar_exact,
    save_bar_chart,
    write_predictions,
)


def test_disparity_by_hand():
    summary = disparity({"en": 80.0, "de": 70.0, "sw": 55.0, "zh": 65.0})
    assert summary["macro"] == pytest.approx(67.5)
    assert summary["transfer_gap"] == pytest.approx(80.0 - (70 + 55 + 65) / 3)  # 16.666...
    # population std: deviations 12.5, 2.5, -12.5, -2.5 -> sqrt((156.25*2 + 6.25*2) / 4)
    assert summary["std"] == pytest.approx(((156.25 * 2 + 6.25 * 2) / 4) ** 0.5)
    assert summary["max_min"] == 25.0 and summary["worst_language"] == "sw" and summary["worst"] == 55.0
    assert disparity({"de": 60.0, "fr": 50.0}, pivot="fr")["transfer_gap"] == -10.0
    assert disparity({"de": 60.0, "fr": 50.0})["transfer_gap"] is None  # no pivot
    assert disparity({"en": 60.0})["transfer_gap"] is None  # nothing to compare with
    assert disparity({"a": 50.0, "b": 40.0, "c": 40.0})["worst_language"] == "b"  # ties: first


def test_language_scores_skip_unlabelled_and_keep_order():
    scores = language_scores(
        predictions=[0, 1, 2, 0, 1, 1, 2], labels=[0, 1, 1, None, 1, 0, None],
        languages=["en", "en", "en", "en", "fr", "fr", "sw"], order=["sw", "fr", "en"],
    )
    assert list(scores.accuracy) == ["fr", "en"]  # sw has no labelled example
    assert scores.accuracy["en"] == pytest.approx(200 / 3) and scores.accuracy["fr"] == 50.0
    assert scores.counts == {"fr": 2, "en": 3}
    assert scores.summary["transfer_gap"] == pytest.approx(200 / 3 - 50)


def test_mcnemar_matches_scipy_binomtest():
    rng = np.random.default_rng(12345)
    for n in (1, 2, 7, 30, 101, 500):
        for bias in (0.5, 0.6, 0.9):
            a = rng.random(n) < bias
            b = rng.random(n) < 0.55
            result = mcnemar_exact(a, b)
            discordant = result.only_a + result.only_b
            assert result.only_a == int((a & ~b).sum()) and result.only_b == int((~a & b).sum())
            assert result.both + result.neither + discordant == n
            expected = 1.0 if discordant == 0 else binomtest(result.only_a, discordant, 0.5).pvalue
            assert result.p_value == pytest.approx(expected, rel=1e-12, abs=1e-300)
    # Hand case: b = 0, c = 6 -> p = 2 / 2**6
    assert mcnemar_exact([False] * 6 + [True] * 4, [True] * 10).p_value == pytest.approx(2 / 64)
    assert mcnemar_exact([True, False], [True, False]).p_value == 1.0  # no discordant pair
    with pytest.raises(ValueError, match="equal length"):
        mcnemar_exact([True], [True, False])


def test_bar_chart_png_and_image(tmp_path):
    scores = language_scores([0, 1, 1, 0, 0], [0, 1, 0, 0, 1], ["en", "en", "de", "de", "sw"])
    image = bar_chart_image(scores, "xnli")
    assert image.dtype == np.uint8 and image.ndim == 3 and image.shape[2] == 3 and image.std() > 0
    path = save_bar_chart(scores, tmp_path / "charts" / "xnli.png", "xnli")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_prediction_files(tmp_path):
    paths = write_predictions(tmp_path, ["i:0/en", "i:1/en", "i:0/de"], ["en", "en", "de"], [0, 2, 1],
                              [0, 1, None], ["entailment", "neutral", "contradiction"],
                              probabilities=np.array([[0.5, 0.25, 0.25], [0.1, 0.2, 0.7], [0.3, 0.4, 0.3]]))
    assert sorted(p.name for p in paths) == ["de.jsonl", "en.jsonl"]
    en = [json.loads(line) for line in (tmp_path / "en.jsonl").read_text().splitlines()]
    assert en[1] == {"uid": "i:1/en", "prediction": "contradiction", "label": "neutral", "correct": False,
                     "probabilities": [0.1, 0.2, 0.7]}
    de = json.loads((tmp_path / "de.jsonl").read_text())
    assert de["label"] is None and de["correct"] is None
