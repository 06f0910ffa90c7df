"""Report files: metrics.json structure, official-format prediction files, example scores, heatmaps."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from xdist.evaluation import EvalSummary, evaluate_predictions, heatmap_image, write_report
from xdist.tasks.qa.examples import Answer, QAExample


def ex(qid: str, q: str, c: str, gold: str) -> QAExample:
    context = f"{gold} and more"
    return QAExample(id=qid, question="?", question_lang=q, context=context, context_lang=c,
                     answers=(Answer(gold, 0),))


def mlqa_like_result(name: str = "mlqa-dev"):
    examples, predictions = [], {}
    golds = {"en": "Paris", "de": "die Hauptstadt", "zh": "北京"}
    for qid in ("q1", "q2"):
        for q in golds:
            for c in golds:
                if (q, c) == ("zh", "de"):
                    continue  # a missing cell
                examples.append(ex(qid, q, c, golds[c]))
                if qid == "q1":
                    predictions[f"{qid}/{q}-{c}"] = golds[c]
                elif c == "zh":
                    predictions[f"{qid}/{q}-{c}"] = "北京大学"  # F1 2/3 under MLQA zh
    # q2 in en/de contexts stays unanswered.
    return evaluate_predictions(examples, predictions, name=name, languages=["en", "de", "zh"])


def test_write_report_files_and_structure(tmp_path):
    result = mlqa_like_result()
    diagonal = evaluate_predictions([ex("x1", "el", "el", "Αθήνα")], {"x1/el-el": "Αθήνα"}, name="xquad")
    summary = EvalSummary()
    summary.add(result)
    summary.add(diagonal)
    files = write_report(summary, tmp_path)

    metrics = json.loads((tmp_path / "metrics.json").read_text(encoding="utf-8"))
    assert files.metrics == tmp_path / "metrics.json"
    assert set(metrics) == {"version", "summary", "sets"} and set(metrics["sets"]) == {"mlqa-dev", "xquad"}
    mlqa = metrics["sets"]["mlqa-dev"]
    assert mlqa["languages"] == ["en", "de", "zh"]
    assert mlqa["num_cells"] == 8 and mlqa["num_examples"] == 16
    assert mlqa["unanswered"] == 5  # q2 in the en and de context cells: en-en, en-de, de-en, de-de, zh-en
    cells = {(c["question_lang"], c["context_lang"]): c for c in mlqa["cells"]}
    assert cells[("en", "zh")]["normalizer"] == "mlqa-v1:zh"
    assert cells[("de", "de")]["normalizer"] == "mlqa-v1:de"
    # q1 exact (F1 1), q2 "北京大学" vs "北京" (F1 2/3): cell F1 = (1 + 2/3) / 2 * 100 = 83.33; EM 50.
    assert cells[("en", "zh")]["f1"] == pytest.approx(250 / 3) and cells[("en", "zh")]["exact_match"] == 50.0
    assert cells[("en", "en")]["count"] == 2 and cells[("en", "en")]["unanswered"] == 1
    assert mlqa["matrix"]["f1"][2][1] is None and mlqa["matrix"]["rows"] == "question_lang"
    assert set(mlqa["g_xlt"]) == {"exact_match", "f1", "cells"} and mlqa["xlt"]["cells"] == 3
    assert metrics["sets"]["xquad"]["cells"][0]["normalizer"] == "squad-v1.1"
    assert metrics["summary"]["xquad"]["xlt_f1"] == 100.0

    # Prediction files: one per cell, {dataset question id: text}, unanswered ids absent.
    prediction_dir = tmp_path / "predictions" / "mlqa-dev"
    assert sorted(p.name for p in prediction_dir.iterdir()) == sorted(
        f"{q}-{c}.json" for q in ("en", "de", "zh") for c in ("en", "de", "zh") if (q, c) != ("zh", "de"))
    assert json.loads((prediction_dir / "de-zh.json").read_text(encoding="utf-8")) == {"q1": "北京", "q2": "北京大学"}
    assert json.loads((prediction_dir / "en-de.json").read_text(encoding="utf-8")) == {"q1": "die Hauptstadt"}
    assert files.predictions["xquad"]["el-el"] == tmp_path / "predictions" / "xquad" / "el-el.json"
    assert json.loads(files.predictions["xquad"]["el-el"].read_text(encoding="utf-8")) == {"x1": "Αθήνα"}

    scores = json.loads(files.example_scores["mlqa-dev"].read_text(encoding="utf-8"))
    assert len(scores) == 16 and scores["q2/en-zh"]["f1"] == pytest.approx(2 / 3)
    assert scores["q2/en-zh"]["exact_match"] == 0.0

    for name in ("mlqa-dev", "xquad"):
        path = files.heatmaps[name]
        assert path == tmp_path / "heatmaps" / f"{name}.png"
        with Image.open(path) as image:
            image.verify()
        with Image.open(path) as image:
            assert image.format == "PNG"
            assert 200 <= image.width <= 2000 and 200 <= image.height <= 2000
    assert not list(tmp_path.rglob(".*.tmp"))


def test_heatmap_can_be_disabled_and_single_result_accepted(tmp_path):
    files = write_report(mlqa_like_result(), tmp_path, heatmap=False)
    assert files.heatmaps == {} and not (tmp_path / "heatmaps").exists()
    assert set(json.loads(files.metrics.read_text())["sets"]) == {"mlqa-dev"}


def test_mapping_input_and_name_checks(tmp_path):
    result = mlqa_like_result()
    write_report({"mlqa-dev": result}, tmp_path, heatmap=False)
    with pytest.raises(ValueError, match="holds the result of set 'mlqa-dev'"):
        write_report({"other": result}, tmp_path, heatmap=False)
    with pytest.raises(ValueError, match="cannot be used in a file name"):
        write_report(mlqa_like_result(name="../escape"), tmp_path, heatmap=False)


def test_heatmap_image_for_tensorboard():
    result = mlqa_like_result()
    image = heatmap_image(result)
    assert image.dtype == np.uint8 and image.ndim == 3 and image.shape[2] == 3
    assert 200 <= image.shape[0] <= 2000 and 200 <= image.shape[1] <= 2000
    assert image.flags["C_CONTIGUOUS"]
    # Not a blank canvas: the drawn matrix and text give many distinct colours.
    assert len(np.unique(image.reshape(-1, 3), axis=0)) > 50
    # A different matrix draws a different picture.
    other = evaluate_predictions([ex("x1", "en", "en", "Paris")], {"x1/en-en": "Paris"}, name="mlqa-dev")
    other_image = heatmap_image(other)
    assert other_image.shape != image.shape or not np.array_equal(other_image, image)


def test_heatmap_colour_scale_is_fitted_to_the_cells_and_shown():
    """Cells of 4-7 F1 must not all get the bottom colour of a 0-100 scale: the scale spans the data."""
    from xdist.evaluation.report import fitted_limits, heatmap_figure

    result = mlqa_like_result()
    matrix = result.matrix("f1")
    low, high = np.nanmin(matrix), np.nanmax(matrix)
    figure = heatmap_figure(result)
    heat, bar = figure.axes
    assert heat.images[0].get_clim() == pytest.approx((low, high))
    assert f"{low:.1f} to {high:.1f}" in bar.get_ylabel()
    assert fitted_limits(np.array([[4.2, 6.9], [5.0, np.nan]])) == (4.2, 6.9)
    assert fitted_limits(np.array([[5.0, 5.0]])) == (4.5, 5.5)  # a constant matrix still gets a scale
    assert fitted_limits(np.array([[0.0, 0.2]])) == (0.0, 0.6)
    assert fitted_limits(np.array([[np.nan]])) == (0.0, 100.0)
