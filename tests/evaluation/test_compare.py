"""Comparison of runs (xdist.compare): tables from real report files, Wilcoxon tests, heatmaps, CLI."""

from __future__ import annotations

import json
import warnings

import numpy as np
import pytest
import scipy.stats
from PIL import Image

from xdist.cli import main
from xdist.compare import (
    compare_reports,
    difference_heatmap_figure,
    load_report,
    run_compare,
    wilcoxon_paired,
    write_comparison,
)
from xdist.evaluation import QAResult, evaluate_predictions, write_report
from xdist.tasks.qa.examples import Answer, QAExample

# A hyphenated language code checks that uids ("<id>/<q>-<c>") are assigned to cells without splitting on '-'.
LANGUAGES = ("en", "el", "pt-br")


def make_examples(n_questions: int) -> list[QAExample]:
    examples = []
    for k in range(n_questions):
        gold = f"alpha{k} beta{k}"
        for q in LANGUAGES:
            for c in LANGUAGES:
                examples.append(QAExample(id=f"q{k}", question="?", question_lang=q, context=f"{gold} and more",
                                          context_lang=c, answers=(Answer(gold, 0),)))
    return examples


def predict(examples: list[QAExample], rng: np.random.Generator, p_exact: float) -> dict[str, str]:
    """Exact (F1 1) with probability ``p_exact``, else partial (F1 2/3), wrong, empty or unanswered (0)."""
    predictions = {}
    for example in examples:
        gold = example.answers[0].text
        draw = rng.random()
        if draw < p_exact:
            predictions[example.uid] = gold
        else:
            kind = rng.integers(4)
            if kind == 0:
                predictions[example.uid] = gold.split()[0]
            elif kind == 1:
                predictions[example.uid] = "nothing like it"
            elif kind == 2:
                predictions[example.uid] = ""
            # kind 3: unanswered
    return predictions


def evaluate(examples, predictions) -> QAResult:
    return evaluate_predictions(examples, predictions, name="xq", languages=list(LANGUAGES))


@pytest.fixture
def rng():
    seed = int(np.random.SeedSequence().entropy % 2**32)
    print(f"seed {seed}")
    return np.random.default_rng(seed)


def paired_arrays(a: dict[str, float], b: dict[str, float]) -> tuple[np.ndarray, np.ndarray]:
    uids = sorted(a)
    return np.array([a[u] for u in uids]), np.array([b[u] for u in uids])


def test_table_numbers_equal_each_runs_metrics(tmp_path, rng):
    examples = make_examples(12)
    results = {"ce": evaluate(examples, predict(examples, rng, 0.4)),
               "skd": evaluate(examples, predict(examples, rng, 0.6)),
               "map": evaluate(examples, predict(examples, rng, 0.5))}
    for name, result in results.items():
        write_report(result, tmp_path / name, heatmap=False)
    reports = [load_report(tmp_path / name) for name in results]

    # Loading gives back the results that were written: example scores, cells (groups), summary, matrix.
    for report, (name, result) in zip(reports, results.items(), strict=True):
        assert report.name == name and report.path == tmp_path / name
        loaded = report.sets["xq"]
        assert loaded.matrix.rows == LANGUAGES and loaded == result.result()

    comparison = compare_reports(reports, baseline="skd")
    data = comparison.to_json()
    assert data["baseline"] == "skd" and list(data["runs"]) == ["ce", "skd", "map"]
    xq = data["sets"]["xq"]
    for name, result in results.items():
        row = xq["summary"][name]
        assert row["g_xlt_f1"] == result.g_xlt.f1 and row["g_xlt_em"] == result.g_xlt.exact_match
        assert row["xlt_f1"] == result.xlt.f1 and row["xlt_em"] == result.xlt.exact_match
        assert row["g_xlt_f1_difference"] == pytest.approx(result.g_xlt.f1 - results["skd"].g_xlt.f1)
        assert row["num_examples"] == 12 * 9 and row["num_cells"] == 9
    for cell_row in xq["groups"]:
        cell = (cell_row["question_lang"], cell_row["context_lang"])
        for name, result in results.items():
            assert cell_row["f1"][name] == result.cells[cell].f1
            assert cell_row["exact_match"][name] == result.cells[cell].exact_match
        assert set(cell_row["f1_difference"]) == {"ce", "map"}
    assert len(xq["groups"]) == 9
    for name in ("ce", "map"):
        expected = results[name].matrix() - results["skd"].matrix()
        np.testing.assert_allclose(np.array(xq["difference_matrix"]["f1"][name]), expected, rtol=0, atol=1e-12)
    assert set(xq["tests"]) == {"ce", "map"}

    markdown = comparison.to_markdown()
    assert "skd (baseline)" in markdown and f"{results['map'].g_xlt.f1:.2f}" in markdown
    assert "| pt-br-el |" in markdown  # per-cell rows, hyphenated language code kept whole


def test_wilcoxon_paired_equals_scipy_on_random_scores(rng):
    for n in (7, 10, 40, 300):  # scipy's permutation (n <= 13), asymptotic-with-ties and large-n paths
        uids = [f"u{i}" for i in range(n)]
        levels = np.array([0.0, 0.5, 2 / 3, 0.8, 1.0])  # QA F1 is coarse: many ties and zero differences
        a = dict(zip(uids, rng.choice(levels, n), strict=True))
        b = dict(zip(uids, rng.choice(levels, n), strict=True))
        shuffled_b = dict(reversed(list(b.items())))  # pairing is by uid, not by order
        test = wilcoxon_paired(a, shuffled_b, alpha=0.05)
        x, y = paired_arrays(a, b)
        if not np.any(x != y):
            continue
        expected = scipy.stats.wilcoxon(x, y)  # the authors' call: scipy's defaults
        assert test.statistic == pytest.approx(float(expected.statistic), rel=1e-12)
        assert test.p_value == pytest.approx(float(expected.pvalue), rel=1e-12)
        assert test.n_pairs == n and test.n_nonzero == int(np.count_nonzero(x - y))
        assert test.mean_difference == pytest.approx(float(np.mean(x - y)), abs=1e-15)
        assert test.significant == (expected.pvalue <= 0.05)


def test_clearly_better_run_is_significant_and_matches_scipy_per_scope(tmp_path, rng):
    examples = make_examples(15)
    weak, strong = evaluate(examples, predict(examples, rng, 0.2)), evaluate(examples, predict(examples, rng, 0.9))
    write_report(weak, tmp_path / "ce", heatmap=False)
    write_report(strong, tmp_path / "skd", heatmap=False)
    comparison = compare_reports([load_report(tmp_path / "ce"), load_report(tmp_path / "skd")], per_cell=True)
    tests = comparison.sets["xq"].tests["skd"]
    g_xlt, xlt = tests.scopes["g_xlt"], tests.scopes["xlt"]

    x, y = paired_arrays(strong.example_f1(), weak.example_f1())
    expected = scipy.stats.wilcoxon(x, y)
    assert g_xlt.p_value == pytest.approx(float(expected.pvalue), rel=1e-12)
    assert g_xlt.statistic == pytest.approx(float(expected.statistic), rel=1e-12)
    assert g_xlt.significant and g_xlt.p_value < 1e-6 and g_xlt.mean_difference > 0.4
    assert g_xlt.n_pairs == 15 * 9

    def scope(result: QAResult, cells) -> dict[str, float]:
        return {uid: s.f1 for uid, s in result.examples.items() if (s.question_lang, s.context_lang) in cells}

    diagonal = {(lang, lang) for lang in LANGUAGES}
    x, y = paired_arrays(scope(strong, diagonal), scope(weak, diagonal))
    assert xlt.n_pairs == 45 and xlt.p_value == pytest.approx(float(scipy.stats.wilcoxon(x, y).pvalue))
    assert set(tests.groups) == {f"{q}-{c}" for q, c in strong.cells}
    x, y = paired_arrays(scope(strong, {("el", "pt-br")}), scope(weak, {("el", "pt-br")}))
    if np.any(x != y):
        assert tests.groups["el-pt-br"].p_value == pytest.approx(float(scipy.stats.wilcoxon(x, y).pvalue))

    # The other direction: same p-value, negative difference.
    reverse = compare_reports([load_report(tmp_path / "ce"), load_report(tmp_path / "skd")], baseline="skd")
    assert reverse.sets["xq"].tests["ce"].scopes["g_xlt"].p_value == pytest.approx(g_xlt.p_value)
    assert reverse.sets["xq"].tests["ce"].scopes["g_xlt"].mean_difference == pytest.approx(-g_xlt.mean_difference)


def test_identical_runs_are_not_significant_without_warnings(tmp_path, rng):
    examples = make_examples(10)  # 90 pairs: scipy alone would give a NaN p-value and a RuntimeWarning
    result = evaluate(examples, predict(examples, rng, 0.5))
    write_report(result, tmp_path / "a", heatmap=False)
    write_report(result, tmp_path / "b", heatmap=False)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        comparison = compare_reports([load_report(tmp_path / "a"), load_report(tmp_path / "b")], per_cell=True)
    tests = comparison.sets["xq"].tests["b"]
    for test in (*tests.scopes.values(), *tests.groups.values()):
        assert test.p_value is None and test.statistic is None and not test.significant
        assert test.n_nonzero == 0 and test.mean_difference == 0.0
    assert set(tests.scopes) == {"g_xlt", "xlt"} and tests.scopes["g_xlt"].n_pairs == 90
    assert "all pairs tied" in comparison.to_markdown()
    written = json.loads(json.dumps(comparison.to_json()))
    assert written["sets"]["xq"]["tests"]["b"]["scopes"]["g_xlt"]["p_value"] is None


def test_runs_on_different_examples_are_refused(tmp_path, rng):
    examples = make_examples(6)
    write_report(evaluate(examples, predict(examples, rng, 0.5)), tmp_path / "full", heatmap=False)
    subset = [e for e in examples if e.id not in ("q1", "q4")]  # 2 questions x 9 cells = 18 uids fewer
    write_report(evaluate(subset, predict(subset, rng, 0.5)), tmp_path / "part", heatmap=False)
    reports = [load_report(tmp_path / "full"), load_report(tmp_path / "part")]
    with pytest.raises(ValueError, match=r"not evaluated on the same examples of set 'xq': 18 uids differ: "
                                         r"18 uids only in full"):
        compare_reports(reports)
    with pytest.raises(ValueError, match="1 uids differ"):
        wilcoxon_paired({"u1": 1.0, "u2": 0.0}, {"u1": 1.0})


def test_difference_heatmap_is_a_diverging_png(tmp_path):
    examples = make_examples(4)
    # The baseline is wrong ("alpha" vs "alphaK betaK": F1 0) except in cell en-el; the other run is right on
    # the diagonal and unanswered elsewhere: +100 on the diagonal, -100 in en-el, 0 in the other cells.
    mixed_predictions = {e.uid: e.answers[0].text for e in examples if e.question_lang == e.context_lang}
    base_predictions = {e.uid: ("alpha" if e.cell != ("en", "el") else e.answers[0].text) for e in examples}
    base = evaluate(examples, base_predictions)
    mixed = evaluate(examples, mixed_predictions)
    write_report(base, tmp_path / "base", heatmap=False)
    (tmp_path / "mixed" / "eval").mkdir(parents=True)
    write_report(mixed, tmp_path / "mixed" / "eval" / "final", heatmap=False)  # a training output dir
    comparison = compare_reports([load_report(tmp_path / "base"), load_report(tmp_path / "mixed")])
    assert comparison.sets["xq"].difference_matrix("mixed")[0, 1] == -100.0
    files = write_comparison(comparison, tmp_path / "out")

    path = files.difference_heatmaps["xq"]["mixed"]
    assert path == tmp_path / "out" / "heatmaps" / "xq" / "mixed-minus-base.png"
    with Image.open(path) as image:
        image.verify()
    with Image.open(path) as image:
        assert image.format == "PNG" and 200 <= image.width <= 2000
        pixels = np.asarray(image.convert("RGB")).astype(int)

    # Colour of each cell, sampled off its centre (away from the annotation): the same figure laid out
    # again maps matrix coordinates to pixels of the PNG.
    figure = difference_heatmap_figure(comparison.sets["xq"], "mixed")
    figure.canvas.draw()
    assert pixels.shape[:2] == (figure.canvas.get_width_height()[1], figure.canvas.get_width_height()[0])
    axes = figure.axes[0]

    def colour(row: int, column: int) -> np.ndarray:
        x, y = axes.transData.transform((column - 0.35, row - 0.35))
        return pixels[int(round(pixels.shape[0] - y)), int(round(x))]

    better, worse, same = colour(0, 0), colour(0, 1), colour(1, 0)  # en-en +100, en-el -100, el-en 0
    assert better[2] > better[0] + 50, f"+100 should be blue, got {better}"
    assert worse[0] > worse[2] + 50, f"-100 should be red, got {worse}"
    assert (same > 230).all(), f"0 should be the neutral (near white) middle, got {same}"
    for run in ("base", "mixed"):
        with Image.open(files.heatmaps["xq"][run]) as image:
            assert image.format == "PNG"


def test_load_errors_name_the_file(tmp_path, rng):
    with pytest.raises(FileNotFoundError, match="no metrics.json here"):
        load_report(tmp_path)
    examples = make_examples(3)
    write_report(evaluate(examples, predict(examples, rng, 0.5)), tmp_path / "r", heatmap=False)
    scores_path = tmp_path / "r" / "example_scores" / "xq.json"
    scores = json.loads(scores_path.read_text())
    uid = next(iter(scores))
    scores[uid]["f1"] = 0.5 if scores[uid]["f1"] != 0.5 else 0.25
    scores_path.write_text(json.dumps(scores))
    with pytest.raises(ValueError, match=r"example_scores/xq.json: cell .* do not belong to the same evaluation"):
        load_report(tmp_path / "r")
    del scores[uid]
    scores["bogus"] = {"exact_match": 0, "f1": 0}
    scores_path.write_text(json.dumps(scores))
    with pytest.raises(ValueError, match=r"uid 'bogus' names no group of set 'xq'"):
        load_report(tmp_path / "r")
    # A set name that would lead out of the report directory is refused before it becomes a path.
    metrics_path = tmp_path / "r" / "metrics.json"
    metrics = json.loads(metrics_path.read_text())
    metrics["sets"] = {"../xq": metrics["sets"]["xq"]}
    metrics_path.write_text(json.dumps(metrics))
    with pytest.raises(ValueError, match=r"metrics.json: evaluation set name '\.\./xq' cannot be used in a file name"):
        load_report(tmp_path / "r")


def test_cli_compare_end_to_end(tmp_path, rng, capsys):
    examples = make_examples(8)
    write_report(evaluate(examples, predict(examples, rng, 0.3)), tmp_path / "run1", heatmap=False)
    write_report(evaluate(examples, predict(examples, rng, 0.7)), tmp_path / "run2", heatmap=False)
    out = tmp_path / "cmp"
    assert main(["compare", str(tmp_path / "run1"), str(tmp_path / "run2"), "--names", "ce,skd",
                 "--out", str(out), "--alpha", "0.01", "--set", "xq"]) == 0
    printed = capsys.readouterr().out
    markdown = (out / "comparison.md").read_text(encoding="utf-8")
    assert printed == markdown and "ce (baseline)" in markdown
    written = json.loads((out / "comparison.json").read_text(encoding="utf-8"))
    direct = run_compare([tmp_path / "run1", tmp_path / "run2"], names=["ce", "skd"], alpha=0.01)
    assert written["sets"] == json.loads(json.dumps(direct.to_json()["sets"]))
    assert written["test"]["alpha"] == 0.01 and written["test"]["wilcoxon"]["zero_method"] == "wilcox"
    assert (out / "heatmaps" / "xq" / "skd-minus-ce.png").is_file()

    assert main(["compare", str(tmp_path / "run1"), str(tmp_path / "run2"), "--baseline", "nope"]) == 2
    assert "baseline 'nope' is not one of the runs" in capsys.readouterr().err


def test_sets_shared_by_all_runs_are_compared_and_the_rest_listed(tmp_path, rng):
    examples = make_examples(3)
    first = evaluate(examples, predict(examples, rng, 0.5))
    other = evaluate_predictions(examples, predict(examples, rng, 0.5), name="extra", languages=list(LANGUAGES))
    write_report({"xq": first, "extra": other}, tmp_path / "a", heatmap=False)
    write_report(evaluate(examples, predict(examples, rng, 0.5)), tmp_path / "b", heatmap=False)
    reports = [load_report(tmp_path / "a"), load_report(tmp_path / "b")]

    comparison = compare_reports(reports)
    assert list(comparison.sets) == ["xq"] and comparison.skipped_sets == {"extra": ["b"]}
    assert "`extra` (missing in b)" in comparison.to_markdown()
    with pytest.raises(ValueError, match=r"evaluation set 'extra' is missing in run\(s\) \['b'\]"):
        compare_reports(reports, sets=["extra"])
    with pytest.raises(ValueError, match="run names must be unique"):
        compare_reports([reports[0], load_report(tmp_path / "b", name="a")])


def test_a_task_agnostic_result_without_matrix_round_trips_and_compares_with_mcnemar(tmp_path, rng):
    """What a classification task hands over: accuracy per language, 0/1 correctness per example, no matrix."""
    from xdist.compare import mcnemar_paired
    from xdist.evaluation import EvalResult, PairedSpec, Scope, View

    languages = ("en", "de", "sw")
    uids = [f"x{i}/{lang}" for i in range(40) for lang in languages]

    def result(p_correct: float) -> EvalResult:
        correct = {uid: float(rng.random() < p_correct) for uid in uids}
        groups = {}
        for lang in languages:
            members = [c for uid, c in correct.items() if uid.endswith(lang)]
            groups[lang] = {"accuracy": 100.0 * sum(members) / len(members), "count": len(members)}
        macro = sum(g["accuracy"] for g in groups.values()) / len(groups)
        return EvalResult(
            name="xnli", task="classification", summary={"macro": macro, "worst_language": "sw"}, groups=groups,
            examples={uid: {"correct": c} for uid, c in correct.items()},
            example_groups={uid: uid.rsplit("/", 1)[1] for uid in uids},
            paired=PairedSpec("correct", "mcnemar", {"all": Scope("all languages")}),
            view=View({"macro": "macro accuracy"}, ("macro",), "accuracy", "accuracy", {"accuracy": "accuracy"},
                      "language"),
        )

    weak, strong = result(0.4), result(0.8)
    write_report(weak, tmp_path / "a")
    write_report(strong, tmp_path / "b")
    assert (tmp_path / "a" / "charts" / "xnli.png").is_file() and not (tmp_path / "a" / "heatmaps").exists()
    assert load_report(tmp_path / "a").sets["xnli"] == weak
    comparison = compare_reports([load_report(tmp_path / "a"), load_report(tmp_path / "b")], per_cell=True)
    test = comparison.sets["xnli"].tests["b"].scopes["all"]
    b = sum(strong.examples[u]["correct"] > weak.examples[u]["correct"] for u in uids)
    c = sum(strong.examples[u]["correct"] < weak.examples[u]["correct"] for u in uids)
    expected = scipy.stats.binomtest(min(b, c), b + c, 0.5).pvalue  # the exact two-sided McNemar p-value
    assert test.n_nonzero == b + c and test.p_value == pytest.approx(expected, rel=1e-9)
    assert set(comparison.sets["xnli"].tests["b"].groups) == set(languages)
    assert comparison.sets["xnli"].summary()["b"]["macro_difference"] == pytest.approx(
        strong.summary["macro"] - weak.summary["macro"])
    markdown = comparison.to_markdown()
    assert "McNemar" in markdown and "| sw |" in markdown
    files = write_comparison(comparison, tmp_path / "cmp")
    assert files.heatmaps == {} and json.loads(files.json.read_text())["test"]["mcnemar"]["name"] == "mcnemar exact"
    assert mcnemar_paired({"u": 1.0}, {"u": 1.0}).p_value is None
    with pytest.raises(ValueError, match="not 0 or 1"):
        mcnemar_paired({"u": 0.5}, {"u": 1.0})
